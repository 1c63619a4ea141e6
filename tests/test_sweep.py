"""--kvm-sweep vcpus=...: one case per vCPU count for the vCPU-scaled entries, decided at run time."""

from __future__ import annotations

from pathlib import Path

import pytest

from fakes import golden, make_fake, make_host_root
from pytest_kvmmm.suite.cases import cases, vcpu_scaled
from pytest_kvmmm.suite.catalogue import CATALOGUE

ENTRIES = {e.name: e for e in CATALOGUE}


def test_a_sweep_multiplies_only_vcpu_scaled_entries_with_static_ids() -> None:
    kpt = ENTRIES["kvm_page_table_test"]
    ids = [c.id for c in cases(kpt, ("default",), ("anonymous",), (1, 2, 4))]
    assert ids == ["anonymous-vcpus1", "anonymous-vcpus2", "anonymous-vcpus4"]
    memslot = ENTRIES["memslot_perf_test"]
    assert not vcpu_scaled(memslot)
    assert [c.id for c in cases(memslot, ("default",), None, (1, 2))] == ["default"]
    assert [c.id for c in cases(kpt, ("default",), ("anonymous",))] == ["anonymous"]


def test_each_sweep_point_runs_with_its_vcpus_and_one_above_the_cpus_skips(pytester: pytest.Pytester, tmp_path: Path) -> None:
    bins = tmp_path / "bins"
    argv = tmp_path / "argv"
    make_fake(bins, "kvm_page_table_test", stdout=golden("kvm_page_table_test.anonymous.stdout"), argv_file=argv)
    root = make_host_root(tmp_path / "root")
    res = pytester.runpytest(
        "--pyargs", "pytest_kvmmm.suite", "-k", "test_kvm_page_table and anonymous and not thp and not hugetlb",
        f"--kvm-selftests={bins}", f"--kvm-host-snapshot={root}", "--kvm-scale=smoke", "--kvm-sweep=vcpus=1,4096",
        "-p", "no:cacheprovider", "-rs",
    )
    res.assert_outcomes(passed=1, skipped=1)
    res.stdout.fnmatch_lines(["*the sweep's 4096 vCPUs exceed the * online CPUs (a sweep point is never capped)*"])
    args = argv.read_text().split("\n")
    assert args[args.index("-v") + 1] == "1"
