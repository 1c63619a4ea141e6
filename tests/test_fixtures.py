"""The ``kvm_selftests`` fixture's runner and the translation of a result into a pytest outcome,
without a pytest run: a stand-in item, a real engine and fake binaries."""

from __future__ import annotations

from pathlib import Path

import pytest

from fakes import make_fake, make_host_root
from pytest_kvmmm.engine.discovery import SearchRoot
from pytest_kvmmm.engine.engine import EngineSettings, SelftestEngine
from pytest_kvmmm.engine.outcome import Status
from pytest_kvmmm.engine.result import SelftestResult
from pytest_kvmmm.host import probe_host
from pytest_kvmmm.host.view import HostView
from pytest_kvmmm.pytest.fixtures import SelftestRunner, failure_text, raise_for
from pytest_kvmmm.pytest.keys import RESULTS_KEY


class Item:
    """What the runner reads of a test item."""

    nodeid = "test_x.py::test_x"

    def __init__(self, perf: bool = False) -> None:
        self.stash = pytest.Stash()
        self.perf = perf

    def get_closest_marker(self, name: str) -> object | None:
        return object() if name == "perf" and self.perf else None


def runner(tmp_path: Path, item: Item, repeat: int = 1) -> SelftestRunner:
    host = probe_host(make_host_root(tmp_path / "h"))
    settings = EngineSettings(roots=lambda: [SearchRoot(tmp_path / "b", "--kvm-selftests")], default_timeout=30,
                              perf_repeat=repeat)  # fmt: skip
    engine = SelftestEngine(settings, HostView(Path(host.source), lambda: host))
    return SelftestRunner(item, engine)  # type: ignore[arg-type]


def test_a_run_is_remembered(tmp_path: Path) -> None:
    make_fake(tmp_path / "b", "set_memory_region_test", stdout="ok\n")
    item = Item()
    result = runner(tmp_path, item).run("set_memory_region_test", 2)
    assert result.status is Status.PASSED and result.argv[1:] == ("2",)
    assert item.stash[RESULTS_KEY] == [result]


def test_a_perf_test_runs_as_often_as_the_engine_says(tmp_path: Path) -> None:
    make_fake(tmp_path / "b", "set_memory_region_test", stdout="ok\n")
    result = runner(tmp_path, Item(perf=True), repeat=3).run("set_memory_region_test")
    assert "3 runs: metrics are medians, samples in the results" in result.notes


def test_skips_and_failures_end_the_test_unless_told_not_to(tmp_path: Path) -> None:
    make_fake(tmp_path / "b", "skips", exit=4, stdout="1..0 # SKIP no ring here\n")
    make_fake(tmp_path / "b", "fails", exit=254, stderr="==== Test Assertion Failure ====\n  x.c:1: boom\n")
    item = Item()
    r = runner(tmp_path, item)
    with pytest.raises(pytest.skip.Exception):
        r.run("skips")
    with pytest.raises(pytest.fail.Exception) as err:
        r.run("fails")
    assert "fails exit 254" in str(err.value) and "command: " in str(err.value)
    assert r.run("fails", check=False).status is Status.FAILED
    assert [x.status for x in item.stash[RESULTS_KEY]] == [Status.SKIPPED, Status.FAILED, Status.FAILED]


def test_a_skip_without_running_is_recorded(tmp_path: Path) -> None:
    item = Item()
    with pytest.raises(pytest.skip.Exception, match="too little free memory"):
        runner(tmp_path, item).skip("kvm_page_table_test", "too little free memory", ("-b", "64M"))
    (result,) = item.stash[RESULTS_KEY]
    assert (result.status, result.argv, result.returncode) == (Status.SKIPPED, ("kvm_page_table_test", "-b", "64M"), None)


def test_the_failure_report_says_why_shows_the_binarys_words_and_the_command() -> None:
    result = SelftestResult("t", ("/b/t", "-v", "2"), Status.FAILED, "t exit 254: boom", details="==== Test Assertion Failure ====")
    assert failure_text(result) == "t exit 254: boom\n\n==== Test Assertion Failure ====\n\ncommand: /b/t -v 2"
    raise_for(SelftestResult("t", ("t",), Status.PASSED))  # a pass returns
    with pytest.raises(pytest.skip.Exception, match="not built"):
        raise_for(SelftestResult("t", ("t",), Status.MISSING, "not built"))
