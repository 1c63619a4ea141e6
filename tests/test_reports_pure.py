"""The pure report modules: verdicts, known issues, JUnit properties, KCIDB, SQUAD, LAVA names."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

import pytest

from pytest_kvmmm.reports import junit, kcidb, known_issues, lava, squad, verdict
from pytest_kvmmm.reports.record import Record
from pytest_kvmmm.reports.results import ResultsWriter

FACTS = {"arch": "x86_64", "kernel": "6.18.44-fc-v669", "kvm": "kvm_pvm", "tdp": "no", "tdp_mmu": "no", "page_size": "4K"}


def record(nodeid: str = "pytest_kvmmm/suite/test_mm.py::test_dirty_log_perf[anonymous]", **kw: Any) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "nodeid": nodeid, "host": "vm", "binary": "dirty_log_perf_test", "status": "passed", "reason": "",
        "argv": ["dirty_log_perf_test", "-b", "64M"], "returncode": 0, "duration_s": 1.5,
        "started_at": 1795744099.99, "metrics": {"get_dirty_log_s": 0.0123, "populate_pgs_per_s": 123456.0},
        "samples": {"get_dirty_log_s": [0.012, 0.0123, 0.013], "populate_pgs_per_s": [120000.0, 123456.0, 125000.0]},
        "host_facts": dict(FACTS),
    }
    rec.update(kw)
    return rec


# --- verdicts ---------------------------------------------------------------------------


def typed(**kw: Any) -> Record:
    return Record.from_json(record(**kw))


def test_a_test_pytest_failed_is_not_passed_and_its_numbers_are_not_measurements() -> None:
    rec = verdict.agree(typed(), "failed", "\nAssertionError: metric 'writes' missing\nmore").to_json()
    assert rec["status"] == "failed" and rec["reason"] == "AssertionError: metric 'writes' missing"
    assert rec["metrics"] == {} and rec["samples"] == {}
    assert rec[verdict.FAILED_RUN_METRICS] == {"get_dirty_log_s": 0.0123, "populate_pgs_per_s": 123456.0}


def test_a_binary_failure_keeps_its_own_reason_and_loses_its_numbers() -> None:
    rec = verdict.agree(typed(status="timeout", reason="timed out after 2s", counters={"total": {"pf": 3}}), "failed", "other").to_json()
    assert rec["status"] == "timeout" and rec["reason"] == "timed out after 2s" and rec["metrics"] == {}
    assert "counters" not in rec and rec[verdict.FAILED_RUN_COUNTERS] == {"total": {"pf": 3}}


def test_a_body_skip_is_a_skipped_record() -> None:
    rec = verdict.agree(typed(), "skipped", "Skipped: not on this host").to_json()
    assert rec["status"] == "skipped" and rec["reason"] == "Skipped: not on this host" and rec["metrics"] == {}


def test_attempts_keep_verdicts_not_numbers() -> None:
    first = verdict.attempt_of(typed(status="failed", reason="Page 175 missing"))
    rec = verdict.with_attempts(typed(), [first]).to_json()
    assert rec["flaky"] is True and [a["status"] for a in rec["attempts"]] == ["failed", "passed"]
    assert all("metrics" not in a for a in rec["attempts"]) and rec["metrics"]


def test_verdicts_are_new_records_the_first_one_unchanged() -> None:
    first = typed()
    later = verdict.regressed(verdict.agree(first, "passed", ""), "regressed against baseline 'b': KVM_X +30%\n  more")
    assert (later.status, later.outcome, later.reason) == ("failed", "failed", "regressed against baseline 'b': KVM_X +30%")
    assert later.metrics == first.metrics and "metrics_of_failed_run" not in later.to_json(), "a regression keeps its numbers"
    assert first == typed() and first.status == "passed", "replace, never an edit"
    xfail = verdict.expected_failure(verdict.agree(first, "failed", "boom"), {"id": "k", "link": "L"})
    assert (xfail.status, xfail.outcome, xfail.known_issue) == (verdict.XFAILED, "skipped", {"id": "k", "link": "L"})
    assert verdict.known_issue_passed(first, {"id": "k"}).known_issue == {"id": "k", "passed": True}


# --- known issues -----------------------------------------------------------------------

TOML = """
[[issue]]
id = "pvm-dirty-ring"
tests = ["*::test_dirty_log[dirty_ring]"]
failure = "dirty bit set .* missing"
link = "https://bugs.example.org/1"
note = "flaky on PVM"
[issue.host]
arch = "x86_64"
kvm = "kvm_pvm"
kernel = ">=6.12, <7"
cpu_model = "AMD EPYC*"
tdp = false
"""
PROBE = {"hostname": "vm", "cpu": {"model_name": "AMD EPYC 7B13", "flags": ["nx"]}, "kvm": {"flavour": "kvm_pvm", "tdp_mmu": False}}


def facts(**over: str) -> dict[str, str]:
    return known_issues.host_facts(PROBE, {**FACTS, **over})


def test_known_issue_matches_test_host_and_failure() -> None:
    issues = known_issues.parse(TOML, ".toml", "k.toml")
    nodeid = "pytest_kvmmm/suite/test_mm.py::test_dirty_log[dirty_ring]"
    text = "Page 175 should have its dirty bit set in this iteration but it is missing"
    hit = known_issues.match(issues, nodeid, facts(), text)
    assert hit is not None and hit.reason == "known issue pvm-dirty-ring: https://bugs.example.org/1 (flaky on PVM)"
    assert known_issues.match(issues, nodeid, facts(), "some other assertion") is None, "another failure stays a failure"
    assert known_issues.match(issues, nodeid, facts(kvm="kvm_intel"), text) is None
    assert known_issues.match(issues, nodeid, facts(kernel="7.1.0"), text) is None
    assert known_issues.match(issues, nodeid, facts(tdp="yes"), text) is None
    assert known_issues.match(issues, nodeid.replace("dirty_ring", "clear_log"), facts(), text) is None
    # brackets in ids are literal, not character classes; a pass is matched without the failure text
    assert known_issues.match(issues, nodeid, facts()) is hit


def test_any_probe_fact_by_dotted_key_and_json_yaml() -> None:
    doc = {"issue": [{"tests": "test_set_memory_region*", "link": "L", "host": {"kvm.tdp_mmu": False, "cpu.flags": "nx"}}]}
    issues = known_issues.parse(json.dumps(doc), ".json", "k.json")
    assert known_issues.match(issues, "a.py::test_set_memory_region[default]", facts()) is not None
    pytest.importorskip("yaml")
    yaml_issues = known_issues.parse("issues:\n  - tests: ['re:.*memory_region.*']\n    link: L\n", ".yaml", "k.yaml")
    assert known_issues.match(yaml_issues, "a.py::test_set_memory_region[default]", {}) is not None


@pytest.mark.parametrize(
    "text, suffix, message",
    [
        ("[[issue]]\ntests = ['x']\n", ".toml", "'link' is required"),
        ("[[issue]]\ntests = ['x']\nlink = 'L'\nfailure = '('\n", ".toml", "bad pattern"),
        ("[[issue]]\ntests = ['x']\nlink = 'L'\ncolour = 1\n", ".toml", "unknown key(s) colour"),
        ("[[issue]]\ntests = ['x']\nlink = 'L'\nhost = {kernel = '>=six'}\n", ".toml", "kernel range"),
        ("[[issue]\n", ".toml", "not valid TOML"),
        ("{\"issue\": 3}", ".json", "expected a list of entries"),
        ("[]", ".ini", "use a .toml, .yaml, .yml or .json file"),
    ],
)
def test_a_bad_known_issues_file_is_one_line(text: str, suffix: str, message: str) -> None:
    with pytest.raises(known_issues.KnownIssuesError, match=None) as info:
        known_issues.parse(text, suffix, "known issues k")
    assert message in str(info.value) and "\n" not in str(info.value) and str(info.value).startswith("known issues k")


def test_a_missing_known_issues_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(known_issues.KnownIssuesError, match="No such file"):
        known_issues.load(tmp_path / "none.toml")


# --- JUnit, KCIDB, SQUAD, LAVA ------------------------------------------------------------


def test_junit_properties_carry_host_facts_metrics_counters_attempts_and_known_issue() -> None:
    rec = verdict.with_attempts(typed(counters={"total": {"pf_fixed": 12, "bogus": "x"}, "stages": {"populate": {"pf_fixed": 10}},
                                                 "derived": {"populate/ns_per_fault": 2500.5}}, known_issue={"id": "k", "link": "L"}),
                                [{"status": "failed", "reason": "boom"}]).to_json()
    props = dict(junit.properties(rec))
    assert props["kvm.host"] == "vm" and props["kvm.fact.kvm"] == "kvm_pvm" and props["kvm.fact.tdp_mmu"] == "no"
    assert props["kvm.metric.get_dirty_log_s"] == "0.0123" and props["kvm.unit.get_dirty_log_s"] == "s"
    assert props["kvm.metric.populate_pgs_per_s"] == "123456" and props["kvm.unit.populate_pgs_per_s"] == "pgs_per_s"
    assert props["kvm.counter.pf_fixed"] == "12" and "kvm.counter.bogus" not in props
    assert props["kvm.counter.populate/pf_fixed"] == "10" and props["kvm.counter.populate/ns_per_fault"] == "2500.5"
    assert props["kvm.attempts"] == "2" and props["kvm.attempt.1"] == "failed: boom" and props["kvm.attempt.2"] == "passed"
    assert props["kvm.known_issue"] == "k L"
    assert junit.classname("pytest_kvmmm.suite.test_mm", "lab-arm64.lan") == "lab-arm64_lan.pytest_kvmmm.suite.test_mm"


def test_kcidb_document_validates_with_a_test_per_verdict_and_a_done_per_metric() -> None:
    kcidb_io = pytest.importorskip("kcidb_io")
    recs = [
        record(),
        record("pytest_kvmmm/suite/test_mm.py::test_dirty_log[dirty_ring]", status="xfailed", reason="Page 175\0 missing",
               metrics={}, samples={}, known_issue={"id": "pvm-dirty-ring", "link": "https://bugs.example.org/1", "note": "n"}),
        record("pytest_kvmmm/suite/test_mm.py::test_nx[default]", host="lab-arm64", status="missing", metrics={}, samples={},
               host_facts={"arch": "aarch64", "kernel": "6.12.0"}),
    ]
    doc = kcidb.document(recs, origin="kvmmm", run="r1")
    kcidb_io.schema.LATEST.validate(doc)
    tests = {t["id"]: t for t in doc["tests"]}
    main = tests["kvmmm:r1:vm:pytest_kvmmm/suite/test_mm.py::test_dirty_log_perf[anonymous]"]
    assert main["status"] == "PASS" and main["path"] == "kvmmm.test_mm.test_dirty_log_perf.anonymous"
    assert main["environment"]["misc"]["kvm"] == "kvm_pvm"
    metric = tests[main["id"] + "/get_dirty_log_s"]
    assert metric["status"] == "DONE" and metric["number"] == {"value": 0.0123, "unit": "s"}
    assert metric["misc"]["samples"] == [0.012, 0.0123, 0.013]
    assert [t["status"] for t in doc["tests"]].count("DONE") == 2
    assert {t["status"] for t in doc["tests"]} == {"PASS", "DONE", "FAIL", "MISS"}
    assert len(doc["builds"]) == 2 and {b["architecture"] for b in doc["builds"]} == {"x86_64", "aarch64"}
    assert doc["issues"][0]["report_url"] == "https://bugs.example.org/1" and doc["incidents"][0]["present"] is True


def test_squad_submission_per_host_with_every_repeat() -> None:
    subs = squad.submissions([record(), record("m.py::test_x", host="arm", status="xfailed", metrics={}, samples={})], job_id="j")
    assert set(subs) == {"vm", "arm"}
    vm = subs["vm"]
    assert vm["tests"] == {"kvmmm/test_mm/test_dirty_log_perf[anonymous]": "pass"}
    assert vm["metrics"]["kvmmm/test_mm/test_dirty_log_perf[anonymous].get_dirty_log_s"] == [0.012, 0.0123, 0.013]
    assert vm["metadata"]["job_id"] == "j-vm" and vm["metadata"]["host.kvm"] == "kvm_pvm"
    assert subs["arm"]["tests"] == {"kvmmm/m/test_x": "xfail"} and subs["arm"]["metrics"] == {}
    for sub in subs.values():  # what SQUAD's submit API takes: a flat map of names to results/arrays
        assert all(v in ("pass", "fail", "skip", "xfail") for v in sub["tests"].values())
        assert all(isinstance(v, list) and all(isinstance(x, float) for x in v) for v in sub["metrics"].values())
        json.dumps(sub)


def test_lava_calls_name_result_measurement_units() -> None:
    calls = lava.calls(record(), several_hosts=True)
    assert calls[0] == ["vm.test_mm.test_dirty_log_perf_anonymous", "--result", "pass"]
    assert calls[1] == ["vm.test_mm.test_dirty_log_perf_anonymous.get_dirty_log_s", "--result", "pass",
                        "--measurement", "0.0123", "--units", "s"]
    assert lava.calls(record(status="crashed", metrics={}))[0][-1] == "fail"


# --- --kvm-results on a full disk -------------------------------------------------------------


def test_a_full_disk_costs_only_the_records_that_did_not_fit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    writer = ResultsWriter(tmp_path / "r.jsonl")
    writer.open()
    writer.write(record())
    real_write = os.write
    calls = {"n": 0}

    def full(fd: int, data: Any) -> int:  # the second record: a part fits, then ENOSPC
        calls["n"] += 1
        if calls["n"] == 1:
            return real_write(fd, bytes(data[:100]))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", full)
    writer.write(record(nodeid="second"))
    monkeypatch.setattr(os, "write", real_write)
    writer.write(record(nodeid="third"))  # space again: the run goes on
    writer.close()
    lines = (tmp_path / "r.jsonl").read_text().splitlines()
    assert [json.loads(line)["nodeid"] for line in lines] == [record()["nodeid"], "third"], "no cut line"
    assert writer.problem == (f"--kvm-results {tmp_path / 'r.jsonl'}: 1 of 3 records not written "
                              "(No space left on device); the file holds the 2 complete ones")
