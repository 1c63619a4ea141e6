"""Outputs captured from the real 6.12 binaries on a KVM host (tests/golden/, see capture.py),
replayed through a fake binary: the runner, the outcome mapping and the metric parser must
give what the real run means."""

from __future__ import annotations

from pathlib import Path

import pytest

from fakes import golden, make_golden_fake
from pytest_kvmmm.engine.metrics import guest_mode_name, parse_metrics
from pytest_kvmmm.engine.outcome import Status, classify
from pytest_kvmmm.engine.process import run

EXPECTED = {
    "kvm_page_table_test.anonymous": (Status.PASSED, ""),
    "kvm_page_table_test.anonymous_thp": (Status.PASSED, ""),
    "kvm_page_table_test.shmem": (Status.PASSED, ""),
    "kvm_page_table_test.help": (Status.PASSED, ""),
    # The selftests do not check explicit-size pools: an empty one is an mmap() ENOMEM assert.
    "kvm_page_table_test.hugetlb_2mb_empty_pool": (
        Status.FAILED,
        "kvm_page_table_test exit 254: lib/kvm_util.c:1000: region->mmap_start != MAP_FAILED: "
        "mmap() failed, rc: -1 errno: 12 (Cannot allocate memory)",
    ),
    # ... while the default-size ones exit 4 with a bare reason on stderr, no "# SKIP" line.
    "kvm_page_table_test.shared_hugetlb_empty_pool": (
        Status.SKIPPED, "HUGETLB is not enabled in /proc/sys/vm/nr_hugepages"
    ),
    "access_tracking_perf_test.no_page_idle": (Status.SKIPPED, "CONFIG_IDLE_PAGE_TRACKING is not enabled"),
    "nx_huge_pages_test.no_token": (
        Status.SKIPPED, "This test must be run with the magic token via '-t 887563923'."
    ),
    "dirty_log_page_splitting_test.no_tdp_mmu": (
        Status.SKIPPED, 'Requirement not met: get_kvm_param_bool("tdp_mmu")'
    ),
    # Two vCPU threads assert at once: interleaved blocks, one message at the end.
    "max_guest_memory_test.no_gbpages": (
        Status.FAILED,
        "max_guest_memory_test exit 254: lib/x86_64/processor.c:567: Unconditional guest failure: "
        "Unhandled exception '0xe' at guest RIP '0x402d48'",
    ),
    # Captured on the lab's emulated x86 TDP host (capture.py --lab): what never ran here.
    "max_guest_memory_test.pass.lab-x86-tdp": (Status.PASSED, ""),
    "pre_fault_memory_test.pass.lab-x86-tdp": (Status.PASSED, ""),
    "set_memory_region_test.two_loops.lab-x86-tdp": (Status.PASSED, ""),
    # ... and on its x86 host with idle page tracking built in (lab-x86-idle).
    "access_tracking_perf_test.page_idle.lab-x86-idle": (Status.PASSED, ""),
    "access_tracking_perf_test.page_idle_overlap.lab-x86-idle": (Status.PASSED, ""),
    "set_memory_region_test.bad_arg": (
        Status.FAILED,
        "set_memory_region_test exit 254: lib/test_util.c:371: num_str != end_ptr: "
        "strtol(\"-h\") didn't find a valid integer.",
    ),
}


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_replayed_golden_output_classifies_as_the_real_run(tmp_path: Path, case: str) -> None:
    name = case.split(".")[0]
    fake = make_golden_fake(tmp_path, name, case)
    outcome = classify(run([str(fake)], timeout=30))
    status, reason = EXPECTED[case]
    assert (outcome.status, outcome.reason) == (status, reason)
    if status is Status.FAILED:
        assert outcome.details.startswith("==== Test Assertion Failure ====")


@pytest.mark.parametrize("backing", ["anonymous", "anonymous_thp", "shmem"])
def test_page_table_metrics_from_real_output(backing: str) -> None:
    metrics = parse_metrics("kvm_page_table_test", golden(f"kvm_page_table_test.{backing}.stdout"))
    assert set(metrics) == {"KVM_CREATE_MAPPINGS", "KVM_UPDATE_MAPPINGS", "KVM_ADJUST_MAPPINGS"}
    assert all(0 < v < 10 for v in metrics.values())


def test_page_table_metrics_exact_values() -> None:
    assert parse_metrics("kvm_page_table_test", golden("kvm_page_table_test.anonymous.stdout")) == {
        "KVM_CREATE_MAPPINGS": 0.253970162,
        "KVM_UPDATE_MAPPINGS": 0.076771066,
        "KVM_ADJUST_MAPPINGS": 0.062214401,
    }


def test_multi_mode_output_prefixes_the_stable_mode_name() -> None:
    section = golden("kvm_page_table_test.anonymous.stdout").split("Testing guest mode:", 1)[1]
    arm = (
        "Random seed: 0x6b8b4567\n"
        + "Testing guest mode: PA-bits:40,  VA-bits:48,  4K pages" + section.split("\n", 1)[1]
        + "Testing guest mode: PA-bits:48,  VA-bits:48, 64K pages" + section.split("\n", 1)[1]
    )
    metrics = parse_metrics("kvm_page_table_test", arm)
    assert set(metrics) == {
        f"{mode}/{stage}"
        for mode in ("p40v48_4k", "p48v48_64k")
        for stage in ("KVM_CREATE_MAPPINGS", "KVM_UPDATE_MAPPINGS", "KVM_ADJUST_MAPPINGS")
    }


@pytest.mark.parametrize(
    "text, name",
    [
        ("PA-bits:52,  VA-bits:48,  4K pages", "p52v48_4k"),
        ("PA-bits:ANY, VA-bits:48,  4K pages", "pxxv48_4k"),
        ("PA-bits:36,  VA-bits:47, 16K pages", "p36v47_16k"),
        ("PA-bits:ANY, VA-bits:48 or 57, 4K pages", "pxxvyy_4k"),
        ("nonsense", None),
    ],
)
def test_guest_mode_names(text: str, name: str | None) -> None:
    assert guest_mode_name(text) == name


def test_garbage_and_truncated_output_give_no_metrics() -> None:
    assert parse_metrics("kvm_page_table_test", "\x00\xff KVM_CREATE_MAPPINGS: total execution time: s\n") == {}
    assert parse_metrics("unknown_binary", golden("kvm_page_table_test.anonymous.stdout")) == {}
