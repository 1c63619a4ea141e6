"""The record of one selftest test: built once from a result and what the test ran as, written
as the ``--kvm-results`` format key for key, read back unchanged, and what files written before
the typed record (``tests/data/*format1*``, made by the plugin as it was) still give."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from pytest_kvmmm.baseline import cli as compare_cli
from pytest_kvmmm.baseline import store
from pytest_kvmmm.baseline.compare import compare
from pytest_kvmmm.baseline.fingerprint import Fingerprint
from pytest_kvmmm.engine.outcome import Status
from pytest_kvmmm.engine.result import SelftestResult
from pytest_kvmmm.host.units import MIB
from pytest_kvmmm.reports import verdict
from pytest_kvmmm.reports.record import ALWAYS, Record, build
from pytest_kvmmm.reports.results import ResultsWriter, read_results
from pytest_kvmmm.reports.summary import summary_lines
from pytest_kvmmm.suite.cases import cases
from pytest_kvmmm.suite.catalogue import BY_NAME
from pytest_kvmmm.suite.scale import Sizing
from pytest_kvmmm.suite.shape import Shape, of_argv, of_case

DATA = Path(__file__).parent / "data"
OLD_RESULTS = DATA / "results-format1.jsonl"
OLD_BASELINE = DATA / "baseline-format1.json"
BIN = "/cache/selftests/6.12.117"
PT = "pytest_kvmmm/suite/test_mm.py::test_kvm_page_table"


def pt_result(**kw: Any) -> SelftestResult:
    defaults: dict[str, Any] = {
        "reason": "", "binary": f"{BIN}/kvm_page_table_test", "returncode": 0, "duration_s": 0.9123456789,
        "stdout": "not in the record\n", "metrics": {"KVM_CREATE_MAPPINGS": 0.25}, "started_at": 1000.0,
        "samples": {"KVM_CREATE_MAPPINGS": (0.24, 0.25, 0.26)}, "notes": ("vCPUs capped from 4 to 2 (online CPUs)",),
        "kernel_log": ("kvm: a line",),
    }
    defaults.update(kw)
    argv = (f"{BIN}/kvm_page_table_test", "-s", "anonymous_thp", "-b", "64M", "-v", "2")
    return SelftestResult("kvm_page_table_test", argv, Status.PASSED, **defaults)


def pt_case_shape() -> Shape:
    (case,) = [c for c in cases(BY_NAME["kvm_page_table_test"], ("default",), None) if c.id == "anonymous_thp"]
    return of_case(case, Sizing(64 * MIB, 2, 0))


def old_lines() -> list[dict[str, Any]]:
    return [json.loads(line) for line in OLD_RESULTS.read_text().splitlines()]


# --- built once ---------------------------------------------------------------------------------


def test_a_record_is_built_from_the_result_and_the_case() -> None:
    rec = build(pt_result(), pt_case_shape(), nodeid=f"{PT}[anonymous_thp]", host="vm", outcome="passed",
                host_facts={"kvm": "kvm_pvm"}, inputs={"args": ["-m", "pagetable"]})
    assert rec.shape == Shape(case_id="anonymous_thp", variant="", backing="anonymous_thp", mode="default", vcpus=2,
                              memory_per_vcpu=32 * MIB, memory_total=64 * MIB)
    assert rec.shape.size_text() == "2 vCPUs x 32M (64M total)" and rec.shape.story == "anonymous_thp"
    assert rec.to_json() == {
        "nodeid": f"{PT}[anonymous_thp]", "host": "vm", "outcome": "passed", "binary": "kvm_page_table_test",
        "path": f"{BIN}/kvm_page_table_test", "argv": list(pt_result().argv), "status": "passed", "returncode": 0,
        "duration_s": 0.912346, "reason": "", "metrics": {"KVM_CREATE_MAPPINGS": 0.25},
        "samples": {"KVM_CREATE_MAPPINGS": [0.24, 0.25, 0.26]}, "started_at": 1000.0, "ended_at": 1000.9123456789,
        "notes": ["vCPUs capped from 4 to 2 (online CPUs)"], "kernel_log": ["kvm: a line"], "host_facts": {"kvm": "kvm_pvm"},
        "inputs": {"args": ["-m", "pagetable"]},
    }, "the format 1 keys (and the run's inputs), and no key of the shape: files keep their format"
    assert Record.from_json(rec.to_json()) == replace(rec, shape=Shape()), "back from JSON: all but the shape"


def test_a_single_run_has_its_metrics_as_samples_and_a_skip_has_no_times() -> None:
    rec = build(pt_result(samples={}), Shape(), nodeid="t.py::t", host="vm", outcome="passed")
    assert rec.samples == {"KVM_CREATE_MAPPINGS": (0.25,)}
    skip = SelftestResult("kvm_page_table_test", ("kvm_page_table_test",), Status.SKIPPED, "needs hugepages")
    data = build(skip, Shape(), nodeid="t.py::t", host="vm", outcome="skipped").to_json()
    assert set(data) == set(ALWAYS) and data["started_at"] is None and data["ended_at"] is None and data["path"] is None


def test_a_test_of_ones_own_has_the_shape_its_arguments_say() -> None:
    assert of_argv("kvm_page_table_test", (f"{BIN}/kvm_page_table_test", "-b", "256M", "-v", "4")) == Shape(
        mode="default", vcpus=4, memory_per_vcpu=64 * MIB, memory_total=256 * MIB)
    assert of_argv("max_guest_memory_test", ("x", "-c", "2", "-m", "4", "-s", "1")) == Shape(vcpus=2)
    assert of_argv("my_own_test", ("x", "-b", "1G", "-s", "anonymous")) == Shape(backing="anonymous"), "unknown -b: no size"


# --- JSON: the --kvm-results format, old files included ----------------------------------------------


@pytest.mark.parametrize("index", range(5))
def test_old_results_lines_read_back_and_write_the_same(index: int) -> None:
    """Lines the plugin wrote before the typed record (a pass, a skip, a failure pytest gave with
    its numbers moved aside, a flaky rerun, a known issue) come back key for key."""
    line = old_lines()[index]
    rec = Record.from_json(line)
    assert {"format": 1, **rec.to_json()} == line
    assert Record.from_json(rec.to_json()) == rec


def test_the_writer_writes_old_lines_byte_for_byte(tmp_path: Path) -> None:
    writer = ResultsWriter(tmp_path / "r.jsonl")
    for line in old_lines():
        writer.write(Record.from_json(line).to_json())
    writer.close()
    assert (tmp_path / "r.jsonl").read_text() == OLD_RESULTS.read_text()


def test_a_newer_writers_keys_are_kept_and_a_damaged_record_is_an_error() -> None:
    line = {**old_lines()[0], "from_a_newer_writer": {"kept": [1, 2]}}
    assert Record.from_json(line).to_json()["from_a_newer_writer"] == {"kept": [1, 2]}
    for bad in ({"metrics": {"x": "fast"}}, {"argv": "kvm_page_table_test -b 1G"}, {"samples": {"x": 1.0}}):
        with pytest.raises((TypeError, ValueError)):
            Record.from_json({**old_lines()[0], **bad})


def test_verdicts_replace_and_the_json_follows() -> None:
    rec = Record.from_json(old_lines()[0])
    failed = verdict.agree(rec, "failed", "AssertionError: boom")
    assert rec.status == "passed" and rec.metrics, "the first record is unchanged"
    assert failed.to_json()["metrics_of_failed_run"] == dict(rec.metrics) and failed.metrics == {}
    assert failed == replace(rec, status="failed", reason="AssertionError: boom", metrics={}, samples={},
                             metrics_of_failed_run=dict(rec.metrics))


# --- what reads old files still works -------------------------------------------------------------------


def test_an_old_baseline_compares_with_a_run_of_typed_records(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A baseline saved before the typed record (by --kvm-save) against a run saved from typed
    records: the tests pair up (old ids were ``suite/test_mm.py::...``) and get verdicts."""
    before = store.load(OLD_BASELINE)
    old = before.hosts["vm"].tests
    records = [
        build(pt_result(metrics={m: max(v) * 1.5 for m, v in run.samples.items()},
                        samples={m: tuple(x * 1.5 for x in v) for m, v in run.samples.items()}),
              Shape(), nodeid="pytest_kvmmm/" + nodeid, host="vm", outcome="passed")
        for nodeid, run in old.items() if run.samples and nodeid.startswith("suite/test_mm.py::test_kvm_page_table")
    ]
    assert len(records) == 2
    after = store.from_records([r.to_json() for r in records], {"vm": before.hosts["vm"].fingerprint}, name="after", repeat=3)
    comparison = compare(before, after)
    assert not comparison.only_after, "every test paired with its old id"
    assert comparison.only_before == (("vm", "suite/test_mm.py::test_dirty_log_perf[slots2-anonymous]"),), "not run after"
    assert {r.nodeid for r in comparison.rows} == {"pytest_kvmmm/" + n for n in old if "kvm_page_table" in n and old[n].samples}
    assert all(round(r.change.change) == -50 for r in comparison.rows), "every sample 1.5 times as long"
    assert "regressed" in {r.change.verdict.value for r in comparison.rows}
    store.save(after, tmp_path / "after.json")
    assert compare_cli.main([str(OLD_BASELINE), str(tmp_path / "after.json")]) == 0
    out = capsys.readouterr().out
    assert "kvm_page_table_test [anonymous_thp]" in out and "KVM_CREATE_MAPPINGS" in out and "regressed" in out


def test_old_results_feed_the_summary_and_a_baseline() -> None:
    records = [Record.from_json(line) for line in old_lines()]
    lines = summary_lines(records)
    assert any(line.startswith("XFAILED") for line in lines) and any("attempts: failed, passed" in line for line in lines)
    run = store.from_records(read_results(OLD_RESULTS), {"vm": Fingerprint()}, name="old")
    assert {n for n, t in run.hosts["vm"].tests.items() if t.samples} == {
        "suite/test_mm.py::test_kvm_page_table[anonymous]", "suite/test_mm.py::test_kvm_page_table[anonymous_thp]"}
