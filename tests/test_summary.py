"""The terminal's ``kvm selftests`` section, from records: one line per test, the per-host facts
of a multi-host run, and one compact metrics table per binary."""

from __future__ import annotations

from typing import Any

from pytest_kvmmm.reports.record import Record
from pytest_kvmmm.reports.summary import (
    format_metric,
    host_lines,
    metric_tables,
    outcome_lines,
    summary_lines,
)

PT = "pytest_kvmmm/suite/test_mm.py::test_kvm_page_table"


def rec(nodeid: str, status: str = "passed", host: str = "vm", **kw: Any) -> Record:
    return Record.from_json({"nodeid": nodeid, "host": host, "status": status, "binary": "kvm_page_table_test", **kw})


def test_units() -> None:
    assert format_metric("KVM_CREATE_MAPPINGS", 0.123456) == "0.1235s"
    assert format_metric("overall_demand_paging_rate_pgs_per_s", 123456.7) == "123,457"


def test_several_hosts_name_theirs_and_get_a_facts_line_each() -> None:
    records = [
        rec(f"{PT}[anonymous]", host="vm", metrics={"KVM_CREATE_MAPPINGS": 0.5}, host_facts={"arch": "x86_64", "kernel": "6.12"}),
        rec(f"{PT}[anonymous]", host="lab-arm64", metrics={"KVM_CREATE_MAPPINGS": 0.25},
            host_facts={"arch": "aarch64", "ttrem": "2", "memory": "not shown"}),
    ]
    assert host_lines(records) == ["lab-arm64: arch aarch64, ttrem 2", "vm: arch x86_64, kernel 6.12", ""]
    assert any(line.endswith(f"lab-arm64: {PT}[anonymous]") for line in outcome_lines(records))
    assert metric_tables(records) == [
        "",
        "kvm_page_table_test    KVM_CREATE_MAPPINGS",
        "vm [anonymous]                     0.5000s",
        "lab-arm64 [anonymous]              0.2500s",
    ]
    assert host_lines(records[:1]) == [], "one host: the header describes it already"
    assert summary_lines(records)[:3] == host_lines(records)


def test_tables_show_headline_metrics_only_and_wrap() -> None:
    metrics = {f"M{i:02}_{'x' * 20}": 1.0 for i in range(6)} | {"iteration_1/dirty_memory": 2.0}
    table = metric_tables([rec(f"{PT}[a]", metrics=metrics)])
    assert not any("iteration_1" in line for line in table)
    assert all(len(line) <= 120 for line in table) and len([t for t in table if t.startswith("kvm_page_table_test")]) == 2
    assert metric_tables([rec(f"{PT}[a]")]) == [], "no metrics, no table"


def test_one_line_per_test_with_reasons_and_notes() -> None:
    lines = outcome_lines([
        rec(f"{PT}[anonymous]", duration_s=0.91, notes=["vCPUs capped from 4 to 2 (online CPUs)"]),
        rec(f"{PT}[shared_hugetlb]", "skipped", reason="needs 32 free 2 MiB hugepages", notes=["hidden"]),
    ])
    assert lines == [
        f"PASSED      0.91s  {PT}[anonymous]",
        "         note: vCPUs capped from 4 to 2 (online CPUs)",
        f"SKIPPED     0.00s  {PT}[shared_hugetlb]",
        "         needs 32 free 2 MiB hugepages",
    ]
    verbose = outcome_lines([rec(f"{PT}[x]", "skipped", reason="why", notes=["shown"])], verbose=True)
    assert verbose[1:] == ["         why", "         note: shown"]
