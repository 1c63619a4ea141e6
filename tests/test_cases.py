"""Cases from the catalogue, and how one runs, against a stand-in runner: what is generated for
a selection, what a case says about itself, and the order of decisions at run time."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import pytest

from fakes import make_host_root
from pytest_kvmmm.engine.discovery import Found, NotFound, SearchRoot
from pytest_kvmmm.engine.requirements import Requirement
from pytest_kvmmm.host import probe_host
from pytest_kvmmm.suite.cases import Case, cases, run_case
from pytest_kvmmm.suite.catalogue import BY_NAME
from pytest_kvmmm.suite.scale import SCALES
from pytest_kvmmm.suite.shape import Shape


class Skipped(Exception):
    pass


class Runner:
    """Records what a case asks of the ``kvm_selftests`` fixture."""

    def __init__(self, found: Found | NotFound | None = None, metrics: dict[str, float] | None = None) -> None:
        self.found = found
        self.metrics = metrics or {}
        self.resolved: list[str] = []
        self.runs: list[dict[str, Any]] = []

    def run(self, name: str, *args: object, timeout: float | None = None, requires: Sequence[Requirement] = (),
            notes: Sequence[str] = (), found: Found | NotFound | None = None, expected_kernel: Sequence[str] = (),
            shape: Shape | None = None) -> Any:
        self.runs.append({"name": name, "args": args, "found": found, "notes": tuple(notes), "expected_kernel": tuple(expected_kernel),
                          "shape": shape})
        return type("Result", (), {"metrics": self.metrics})()

    def resolve(self, name: str) -> Found | NotFound:
        self.resolved.append(name)
        assert self.found is not None
        return self.found

    def skip(self, name: str, reason: str, args: Sequence[str] = ()) -> NoReturn:
        raise Skipped(reason)


def test_cases_per_variant_backing_and_mode() -> None:
    entry = BY_NAME["kvm_page_table_test"]
    assert [c.id for c in cases(entry, ("default",), None)] == list(entry.backings)
    two_modes = cases(entry, ("default", "p40v48_4k"), ("anonymous",))
    assert [c.id for c in two_modes] == ["anonymous", "anonymous-p40v48_4k"]
    demand = BY_NAME["demand_paging_test"]
    assert [c.id for c in cases(demand, ("default",), ("anonymous", "shmem"))] == [
        "missing-anonymous", "missing-shmem", "minor-shmem"], "MINOR takes shared backings only"
    assert [c.id for c in cases(BY_NAME["set_memory_region_test"], ("default", "p40v48_4k"), None)] == ["default"]


def test_a_case_names_its_markers_and_is_the_same_in_every_process() -> None:
    (c,) = [c for c in cases(BY_NAME["kvm_page_table_test"], ("default",), None) if c.backing == "anonymous_hugetlb_2mb"]
    assert c.markers == ("pagetable", "perf", "hugetlb")
    assert repr(c) == "Case(kvm_page_table_test[anonymous_hugetlb_2mb])", "no addresses: Allure hashes it"


def test_a_case_runs_sized_for_the_host(tmp_path: Path) -> None:
    host = probe_host(make_host_root(tmp_path / "h", cpus="0-1"))
    entry = BY_NAME["kvm_page_table_test"]
    runner = Runner(metrics=dict.fromkeys(entry.expected_metrics, 0.1))
    run_case(Case(entry, entry.variants[0], "anonymous", "default"), runner, host, SCALES["default"])
    (run,) = runner.runs
    assert run["args"] == ("-s", "anonymous", "-b", "1G", "-v", "2")
    assert run["notes"] == ("vCPUs capped from 4 to 2 (online CPUs)",)
    assert runner.resolved == [] and run["found"] is None, "the default mode needs no -h: the engine resolves"
    assert run["expected_kernel"] == tuple(entry.expected_kernel)
    # what it ran as goes with it, for its record: the case and the capped sizes, not its -b/-v
    assert run["shape"] == Shape(case_id="anonymous", variant="", backing="anonymous", mode="default",
                                 vcpus=2, memory_per_vcpu=512 << 20, memory_total=1 << 30, iterations=None)


def test_a_chosen_mode_resolves_the_binary_once_and_passes_it_on(tmp_path: Path) -> None:
    host = probe_host(make_host_root(tmp_path / "h"))
    entry = BY_NAME["kvm_page_table_test"]
    missing = NotFound("kvm_page_table_test", (SearchRoot(tmp_path, "--kvm-selftests"),))
    runner = Runner(found=missing)
    with pytest.raises(AssertionError, match="passed but printed no value for KVM_CREATE_MAPPINGS"):
        run_case(Case(entry, entry.variants[0], "anonymous", "pxxv48_4k"), runner, host, SCALES["smoke"])
    assert runner.resolved == ["kvm_page_table_test"] and runner.runs[0]["found"] is missing


def test_skips_before_running(tmp_path: Path) -> None:
    entry = BY_NAME["kvm_page_table_test"]
    arm = probe_host(make_host_root(tmp_path / "arm", machine="aarch64", kvm="arm64_ttrem2", kvm_modules={}))
    with pytest.raises(Skipped) as err:
        run_case(Case(entry, entry.variants[0], "anonymous", "pxxv48_4k"), Runner(), arm, SCALES["smoke"])
    (reason,) = err.value.args
    assert "pxxv48_4k" in reason
    tiny = probe_host(make_host_root(tmp_path / "tiny", mem_available_kb=16 * 1024))
    with pytest.raises(Skipped, match="too little free memory"):
        run_case(Case(entry, entry.variants[0], "anonymous", "default"), Runner(), tiny, SCALES["smoke"])
