"""outcome.classify: every way a selftest can end, in every output style seen from 5.x to 6.16."""

from __future__ import annotations

import signal

import pytest

from pytest_kvmmm.engine.assertions import report
from pytest_kvmmm.engine.outcome import Status, classify, skip_reason
from pytest_kvmmm.engine.process import ProcessResult

ASSERT_BLOCK = """\
==== Test Assertion Failure ====
  lib/kvm_util.c:1000: region->mmap_start != MAP_FAILED
  pid=4242 tid=4242 errno=12 - Cannot allocate memory
     1\t0x0000000000404f8b: vm_mem_add at kvm_util.c:1000
     2\t0x0000000000402a1d: main at kvm_page_table_test.c:470
     3\t0x00007f0e1a63a249: ?? ??:0
  mmap() failed, rc: -1 errno: 12 (Cannot allocate memory)
"""


def proc(rc: int | None = 0, stdout: str = "", stderr: str = "", **kw: object) -> ProcessResult:
    return ProcessResult(("/x/kvm_page_table_test", "-b", "64M"), rc, stdout, stderr, 0.5, **kw)  # type: ignore[arg-type]


def test_exit_0_passes() -> None:
    assert classify(proc(0, "KVM_CREATE_MAPPINGS: total execution time: 0.1s\n")).status is Status.PASSED


@pytest.mark.parametrize(
    "stdout, reason",
    [
        ("Random seed: 0x6b8b4567\n1..0 # SKIP - CONFIG_IDLE_PAGE_TRACKING is not enabled\n",
         "CONFIG_IDLE_PAGE_TRACKING is not enabled"),
        ("1..0 # SKIP - Requirement not met: get_kvm_param_bool(\"tdp_mmu\")\n",
         'Requirement not met: get_kvm_param_bool("tdp_mmu")'),
        ("1..0 # SKIP - Cannot open '/dev/kvm': No such file or directory.  Is KVM loaded and enabled?\n",
         "Cannot open '/dev/kvm': No such file or directory.  Is KVM loaded and enabled?"),
        ("__NR_userfaultfd must be present for userfaultfd test, skipping test\n",
         "__NR_userfaultfd must be present for userfaultfd test"),
        ("Access denied - Exiting, skipping test\n", "Access denied - Exiting"),
    ],
    ids=["6.x-ksft", "6.x-require", "6.16-dev-kvm", "5.x-print_skip", "eacces"],
)
def test_exit_4_skips_with_the_binarys_reason(stdout: str, reason: str) -> None:
    out = classify(proc(4, stdout))
    assert out.status is Status.SKIPPED
    assert out.reason == reason


def test_skip_reason_on_stderr_is_found() -> None:
    # get_def_hugetlb_pagesz() prints its skip to stderr.
    assert skip_reason("", "1..0 # SKIP - HUGETLB is not enabled in /proc/sys/vm/nr_hugepages\n") == (
        "HUGETLB is not enabled in /proc/sys/vm/nr_hugepages"
    )


def test_exit_4_without_a_skip_line_still_skips_and_says_so() -> None:
    out = classify(proc(4, "Random seed: 0x1\n"))
    assert out.status is Status.SKIPPED
    assert out.reason == "kvm_page_table_test exited 4 (KSFT_SKIP) without a reason"


def test_exit_254_fails_with_the_assertion_block() -> None:
    out = classify(proc(254, "Random seed: 0x6b8b4567\n", ASSERT_BLOCK))
    assert out.status is Status.FAILED
    assert out.reason == (
        "kvm_page_table_test exit 254: lib/kvm_util.c:1000: region->mmap_start != MAP_FAILED: "
        "mmap() failed, rc: -1 errno: 12 (Cannot allocate memory)"
    )
    assert out.details.startswith("==== Test Assertion Failure ====")
    assert "vm_mem_add at kvm_util.c:1000" in out.details


def test_assertion_summary_without_message() -> None:
    block = "==== Test Assertion Failure ====\n  x86_64/foo.c:12: false\n  pid=1 tid=1 errno=0 - Success\n"
    found = report(block)
    assert found is not None and found.summary == "x86_64/foo.c:12: false"


def test_other_exit_without_block_uses_the_last_line() -> None:
    out = classify(proc(1, "usage: kvm_page_table_test [-h]\ninvalid option -- 'z'\n"))
    assert out.status is Status.FAILED
    assert out.reason == "kvm_page_table_test exit 1: invalid option -- 'z'"


def test_signal_is_a_crash_named_by_signal() -> None:
    out = classify(proc(-signal.SIGSEGV, "Started all vCPUs successfully\n"))
    assert out.status is Status.CRASHED
    assert out.reason == "kvm_page_table_test crashed: killed by SIGSEGV (signal 11)"
    assert "Started all vCPUs" in out.details


def test_timeout_keeps_partial_output() -> None:
    out = classify(proc(-9, "Started all vCPUs successfully\n", timed_out=True), timeout_s=2)
    assert out.status is Status.TIMEOUT
    assert "timed out after 2s" in out.reason and "process group was killed" in out.reason
    assert "Started all vCPUs successfully" in out.details


def test_start_error_is_an_error_not_a_traceback() -> None:
    res = ProcessResult(("/x/t",), None, "", "", 0.0, start_error="cannot start /x/t: Permission denied")
    out = classify(res)
    assert out.status is Status.ERROR and "Permission denied" in out.reason


def test_garbage_output_with_failure_exit_is_named_not_shown() -> None:
    # Two undecodable bytes, a NUL and seven letters: not text, so no byte of it is shown.
    out = classify(proc(254, "\ufffd\ufffd\x00garbage"))
    assert out.status is Status.FAILED
    assert out.reason == "kvm_page_table_test exit 254: binary output, 10 bytes"
    assert out.details == "[binary output, 10 bytes]"
