"""Counts through the engine, the runner's line hook, baselines, the compare table and Allure:
fake binaries replaying golden output, a fake perf kernel."""

from __future__ import annotations

from pathlib import Path

import pytest

from counter_fakes import X86_EVENTS, FakePerf, make_tracefs
from fakes import describe_run, make_fake, make_golden_fake, make_host_root
from pytest_kvmmm.baseline.compare import compare
from pytest_kvmmm.baseline.counts import CountVerdict, count_changes, count_verdict
from pytest_kvmmm.baseline.fingerprint import Fingerprint
from pytest_kvmmm.baseline.store import Baseline, BaselineError, HostRun, from_json, from_records
from pytest_kvmmm.baseline.store import TestRun as SavedTest
from pytest_kvmmm.baseline.table import markdown, terminal_lines
from pytest_kvmmm.coordination import journal_check
from pytest_kvmmm.coordination.host_changes import HostChanges
from pytest_kvmmm.engine import process as runner
from pytest_kvmmm.engine.counters import CounterSession, parse_selection
from pytest_kvmmm.engine.discovery import SearchRoot
from pytest_kvmmm.engine.engine import EngineSettings, SelftestEngine
from pytest_kvmmm.host import probe_host
from pytest_kvmmm.host.view import HostView
from pytest_kvmmm.reports.record import build
from pytest_kvmmm.suite.shape import Shape


def counting_engine(tmp_path: Path, perf: FakePerf) -> SelftestEngine:
    host = probe_host(make_host_root(tmp_path / "host"))
    settings = EngineSettings(roots=lambda: [SearchRoot(tmp_path / "bins", "--kvm-selftests")], default_timeout=30)
    engine = SelftestEngine(settings, HostView(Path(host.source), lambda: host))
    root = make_tracefs(tmp_path / "tracefs", X86_EVENTS)
    engine.counters = CounterSession.create(parse_selection("kvm:kvm_exit"), "x86_64", root, lambda: perf)
    return engine


def test_the_runner_hands_each_stdout_line_to_the_hook_as_it_arrives(tmp_path: Path) -> None:
    fake = make_fake(tmp_path, "t", stdout="one\ntwo\n" + "x" * 10000 + "\nthree", stderr="not me\n")
    seen: list[str] = []
    res = runner.run([str(fake)], timeout=30, on_line=seen.append)
    assert seen == ["one", "two", "x" * runner.MAX_TAPPED_LINE]  # "three" never ended its line
    assert res.stdout.endswith("three")


def test_a_hook_that_raises_is_dropped_and_the_run_goes_on(tmp_path: Path) -> None:
    fake = make_fake(tmp_path, "t", stdout="a\nb\n", exit=0)
    calls: list[str] = []

    def hook(line: str) -> None:
        calls.append(line)
        raise RuntimeError("bug")

    res = runner.run([str(fake)], timeout=30, on_line=hook)
    assert calls == ["a"] and res.returncode == 0 and res.stdout == "a\nb\n"


def test_a_counted_run_carries_stage_counts_in_its_record(tmp_path: Path) -> None:
    perf = FakePerf()
    make_golden_fake(tmp_path / "bins", "kvm_page_table_test", "kvm_page_table_test.anonymous")
    result = counting_engine(tmp_path, perf).run("kvm_page_table_test", ["-b", "64M"], repeat=2)
    assert result.passed and result.counters is not None and not perf.open_fds
    rec = build(result, Shape(), nodeid="t.py::x", host="vm", outcome="passed").to_json()["counters"]
    assert isinstance(rec, dict)
    assert list(rec["stages"]) == ["KVM_CREATE_MAPPINGS", "KVM_UPDATE_MAPPINGS", "KVM_ADJUST_MAPPINGS"]
    assert len(rec["runs"]) == 2  # one per repeat, in order
    assert rec["guest_memory_bytes"] == 64 << 20


def test_a_run_that_cannot_be_counted_still_passes_with_a_note(tmp_path: Path) -> None:
    perf = FakePerf()
    make_golden_fake(tmp_path / "bins", "kvm_page_table_test", "kvm_page_table_test.anonymous")
    engine = counting_engine(tmp_path, perf)
    perf.refuse = 24  # EMFILE from now on
    result = engine.run("kvm_page_table_test")
    assert result.passed and result.counters is None
    assert engine.counters is not None and "ulimit -n" in engine.counters.failures[0]


# --- baselines and compare -----------------------------------------------------------------------


def test_count_verdicts_need_a_change_that_holds_across_repeats() -> None:
    assert count_verdict([1000, 1001, 1000], [500, 502, 501])[1] is CountVerdict.FEWER
    assert count_verdict([1000, 1001, 1000], [1100, 1102, 1101])[1] is CountVerdict.MORE
    assert count_verdict([1000, 1001], [1100, 1102])[1] is CountVerdict.TOO_FEW  # 2 a side: apart by chance 1 time in 3
    assert count_verdict([1000, 1200, 1000], [1100, 1050, 1090])[1] is CountVerdict.NO_CHANGE  # ranges overlap
    assert count_verdict([1000, 1001, 1000], [1010, 1011, 1010])[1] is CountVerdict.NO_CHANGE  # 1 %: within the threshold
    # apart, but by less than the sides' own spread (tlb:tlb_flush between identical runs here)
    assert count_verdict([659, 850, 858, 870, 877], [881, 885, 886, 890, 898])[1] is CountVerdict.NO_CHANGE
    assert count_verdict([2, 2, 2], [4, 4, 4])[1] is CountVerdict.NO_CHANGE  # +100 % of two events
    assert count_verdict([1000], [10])[1] is CountVerdict.TOO_FEW
    # a stage's count moves with the boundary: 2.5 % between identical runs on a loaded host
    assert count_verdict([345878, 345888, 345880], [354444, 351317, 352000], 5.0)[1] is CountVerdict.NO_CHANGE


def test_count_rows_are_totals_and_stages_that_changed() -> None:
    before = {"kvm:kvm_exit": (1000,) * 3, "S/kvm:kvm_exit": (500,) * 3, "T/kvm:kvm_exit": (500,) * 3,
              "U/kvm:kvm_exit": (500,) * 3, "iteration_1/x/kvm:kvm_exit": (5,) * 3, "kvm:kvm_pio": (0,) * 3}
    after = {"kvm:kvm_exit": (800,) * 3, "S/kvm:kvm_exit": (300,) * 3, "T/kvm:kvm_exit": (500,) * 3,
             "U/kvm:kvm_exit": (515,) * 3, "iteration_1/x/kvm:kvm_exit": (50,) * 3, "kvm:kvm_pio": (0,) * 3}
    rows = count_changes(before, after)
    assert [(r.name, r.verdict) for r in rows] == [
        ("kvm:kvm_exit", CountVerdict.FEWER), ("S/kvm:kvm_exit", CountVerdict.FEWER),
    ]


def baseline(name: str, walks: tuple[float, ...], times: tuple[float, ...]) -> Baseline:
    test = SavedTest("kvm_page_table_test", "passed", {"KVM_CREATE_MAPPINGS": times}, (),
                   {"kvmmmu:kvm_mmu_pagetable_walk": walks, "KVM_CREATE_MAPPINGS/kvmmmu:kvm_mmu_pagetable_walk": walks})
    return Baseline(name, "2026-11-27T00:00:00Z", {"vm": HostRun(Fingerprint(), {"t.py::test_kvm_page_table[anonymous]": test})})


def test_the_compare_table_shows_counts_beside_times_with_their_verdict() -> None:
    c = compare(baseline("before", (345888, 345890, 345889), (1.1, 1.0, 1.2)),
                baseline("after", (2496, 2497, 2496), (0.6, 0.5, 0.7)))
    text = "\n".join(terminal_lines(c))
    assert "KVM_CREATE_MAPPINGS/kvmmmu:kvm_mmu_pagetable_walk" in text
    walk = next(line for line in text.splitlines() if line.strip().startswith("kvmmmu:kvm_mmu_pagetable_walk"))
    assert walk.split()[1] == "345,889" and walk.split()[-1] == "fewer" and "-99.28%" in walk
    assert "| **fewer** |" in markdown(c)
    assert "counts (subsys:event" in text  # its own legend


def test_the_same_counts_give_no_count_verdict() -> None:
    c = compare(baseline("a", (1000, 1001, 1000), (1.0, 1.1, 1.2)), baseline("b", (1001, 1000, 1000), (1.0, 1.1, 1.2)))
    assert [r.change.verdict for r in c.count_rows] == [CountVerdict.NO_CHANGE]


def test_counts_survive_saving_and_come_from_records() -> None:
    rec = {"host": "vm", "nodeid": "t.py::x", "binary": "b", "status": "passed", "samples": {"m": [1.0]},
           "counters": {"events": ["kvm:kvm_exit"], "runs": [{"total": {"kvm:kvm_exit": 7}, "stages": {"S": {"kvm:kvm_exit": 3}}}]}}
    run = from_records([rec], {}, name="x")
    assert run.hosts["vm"].tests["t.py::x"].counts == {"kvm:kvm_exit": (7.0,), "S/kvm:kvm_exit": (3.0,)}
    again = from_json(run.to_json(), "here")
    assert again.hosts["vm"].tests["t.py::x"].counts == run.hosts["vm"].tests["t.py::x"].counts


# --- Allure and host changes -----------------------------------------------------------------------


def test_allure_stage_steps_carry_their_counts_and_a_counts_table_is_attached(tmp_path: Path) -> None:
    make_golden_fake(tmp_path / "bins", "kvm_page_table_test", "kvm_page_table_test.anonymous")
    result = counting_engine(tmp_path, FakePerf()).run("kvm_page_table_test")
    annotation = describe_run([result], None, scale="smoke", host="vm")
    stages = annotation.steps[0].steps
    assert [p.name for p in stages[0].parameters] == ["kvm_exit"]
    counts = next(a for a in annotation.attachments if a.name == "counts")
    assert "KVM_UPDATE_MAPPINGS" in counts.body and "kvm_exit" in counts.body


def test_a_mount_left_by_a_killed_session_is_undone(tmp_path: Path) -> None:
    target = tmp_path / "root" / "sys/kernel/tracing"
    target.mkdir(parents=True)
    journal = tmp_path / "journal"
    journal.mkdir()
    dead = 2 ** 22 + 12345  # beyond pid_max on this host: never alive
    (journal / f"{dead}.json").write_text('[{"kind": "mount", "path": "/sys/kernel/tracing", "new": "tracefs"}]')
    done = HostChanges(tmp_path / "root", journal).restore_stale()
    # not a mount point here, so the unmount fails, and says so
    assert len(done) == 1 and "could not unmount tracefs" in done[0] and f"killed process {dead}" in done[0]
    assert not list(journal.glob("*.json"))


def test_only_a_tracefs_mount_at_its_place_is_replayed_from_a_journal() -> None:
    fields = ("kind", "path", "added", "old", "new")
    assert journal_check.problem({"kind": "mount", "path": "/sys/kernel/tracing", "new": "tracefs"}, fields) is None
    assert "not one pytest-kvmmm makes" in str(
        journal_check.problem({"kind": "mount", "path": "/sys/kernel/tracing", "new": "ext4"}, fields))
    assert "not a file pytest-kvmmm changes" in str(
        journal_check.problem({"kind": "mount", "path": "/home", "new": "tracefs"}, fields))


def test_a_bad_counter_selection_is_a_usage_error_naming_the_option(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_x="def test_x():\n    pass\n")
    res = pytester.runpytest("--kvm-counters", "bogus", "-p", "no:cacheprovider")
    assert "--kvm-counters: unknown counter set 'bogus'" in res.stderr.str()
    res = pytester.runpytest("--kvm-counters", "test_x.py", "-p", "no:cacheprovider")
    assert "test_x.py is a path: write --kvm-counters=default" in res.stderr.str()
    assert res.ret == pytest.ExitCode.USAGE_ERROR


def test_a_baseline_with_damaged_counts_is_refused_in_one_line() -> None:
    doc = baseline("x", (1000, 1001), (1.0, 1.1)).to_json()
    test = doc["hosts"]["vm"]["tests"]["t.py::test_kvm_page_table[anonymous]"]
    test["counts"]["kvm:kvm_exit"] = [1, -5]
    with pytest.raises(BaselineError, match=r"counts\.kvm:kvm_exit\[1\]: -5 is negative"):
        from_json(doc, "b.json")
    test["counts"] = ["not", "an", "object"]
    with pytest.raises(BaselineError, match="counts: not an object"):
        from_json(doc, "b.json")
