"""What a selftest's exit means: the mapping from a finished process to a test outcome.

Pure: it takes a ``ProcessResult`` and returns an ``Outcome``. The rules follow the
kselftest conventions the KVM selftests use (``tools/testing/selftests/kselftest.h``,
``tools/testing/selftests/kvm/lib/assert.c``):

* exit 0 passes;
* exit 4 is ``KSFT_SKIP``; the reason is on stdout as ``1..0 # SKIP - <reason>`` (6.x,
  ``ksft_exit_skip``), or ``<reason>, skipping test`` (5.x ``print_skip``, and
  ``Access denied - Exiting, skipping test`` from the EACCES assert path);
* any other exit fails, 254 being ``TEST_ASSERT``/``TEST_FAIL`` with a
  ``==== Test Assertion Failure ====`` block on stderr;
* a signal is a crash, a timeout is its own outcome.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from .runner import ProcessResult

KSFT_PASS = 0
KSFT_SKIP = 4

ASSERT_BANNER = "==== Test Assertion Failure ===="

_SKIP_TAP = re.compile(
    r"^\s*(?:1\.\.0|ok \d+[^#]*)?\s*#\s*SKIP\b[\s:-]*(?P<reason>.*?)\s*$", re.MULTILINE
)
_SKIP_V5 = re.compile(r"^(?P<reason>.*?),?\s+skipping test\.?\s*$", re.MULTILINE)
_RANDOM_SEED = re.compile(r"^Random seed: .*$")


class Status(str, enum.Enum):
    """Outcome names as they appear in ``--kvm-results`` (stable strings)."""

    PASSED = "passed"
    SKIPPED = "skipped"
    FAILED = "failed"
    TIMEOUT = "timeout"
    CRASHED = "crashed"
    MISSING = "missing"
    ERROR = "error"

    @property
    def is_failure(self) -> bool:
        return self in (Status.FAILED, Status.TIMEOUT, Status.CRASHED, Status.ERROR)


@dataclass(frozen=True)
class Outcome:
    status: Status
    #: One line: why it skipped or failed. Empty for a pass.
    reason: str = ""
    #: The longer text for a failure report (assertion block, output tail).
    details: str = ""


def skip_reason(stdout: str, stderr: str) -> str | None:
    """The reason a selftest gave for skipping, in any of the formats seen from 5.x to 6.16."""
    for text in (stdout, stderr):
        found = [m.group("reason") for m in _SKIP_TAP.finditer(text)]
        if found:
            return found[-1] or "skipped (KSFT_SKIP) without a reason"
    for text in (stdout, stderr):
        found = [m.group("reason") for m in _SKIP_V5.finditer(text)]
        if found:
            return found[-1]
    return None


def assertion_block(stderr: str, stdout: str = "") -> str | None:
    """The ``==== Test Assertion Failure ====`` report (file:line, expression, stack, message)."""
    for text in (stderr, stdout):
        start = text.rfind(ASSERT_BANNER)
        if start >= 0:
            return text[start:].strip()
    return None


def assertion_summary(block: str) -> str:
    """One line from an assertion block: ``file.c:123: expression`` plus the message when short.

    The block looks like::

        ==== Test Assertion Failure ====
          lib/kvm_util.c:1000: region->mmap_start != MAP_FAILED
          pid=1234 tid=1234 errno=12 - Cannot allocate memory
             1  0x000000000040a2b3: vm_userspace_mem_region_add at kvm_util.c:999
          ...
          mmap() failed, rc: -1 errno: 12 (Cannot allocate memory)
    """
    lines = [ln.strip() for ln in block.splitlines()[1:] if ln.strip()]
    if not lines:
        return "assertion failed"
    where = lines[0]
    # stack frames ("1  0x...: fn at file.c:12", "3  (inlined by) fn at ..."), pid lines, and
    # the banner again: several vCPU threads can assert at once and interleave their blocks
    stack = re.compile(r"^\d+\s+(?:0x[0-9a-f]+:|\(inlined by\))|^\(stack trace empty\)|^pid=\d+|^====")
    message = [ln for ln in lines[1:] if not stack.match(ln)]
    return f"{where}: {message[-1]}" if message else where


def _tail(text: str, lines: int = 20) -> str:
    kept = [ln for ln in text.splitlines() if not _RANDOM_SEED.match(ln)]
    return "\n".join(kept[-lines:])


def _last_line(text: str) -> str:
    lines = _tail(text, 1).splitlines()
    return lines[-1].strip() if lines else ""


def classify(result: ProcessResult, timeout_s: float | None = None) -> Outcome:
    """Map a finished selftest process to an outcome, with a reason a person can act on."""
    name = result.argv[0].rsplit("/", 1)[-1] if result.argv else "selftest"
    if result.start_error is not None:
        return Outcome(Status.ERROR, result.start_error)
    output_tail = _tail(result.stdout + ("\n" + result.stderr if result.stderr else ""))
    if result.timed_out:
        limit = f"{timeout_s:g}s" if timeout_s is not None else "its timeout"
        return Outcome(
            Status.TIMEOUT,
            f"{name} timed out after {limit}; its process group was killed "
            "(raise --kvm-timeout or use a smaller --kvm-scale)",
            "partial output:\n" + output_tail if output_tail else "no output before the timeout",
        )
    sig = result.signal
    if sig is not None:
        block = assertion_block(result.stderr, result.stdout)
        return Outcome(
            Status.CRASHED,
            f"{name} crashed: killed by {sig.name} (signal {sig.value})",
            block or output_tail,
        )
    rc = result.returncode
    if rc == KSFT_PASS:
        return Outcome(Status.PASSED)
    if rc == KSFT_SKIP:
        # No "# SKIP" line happens: get_def_hugetlb_pagesz() prints its reason bare on stderr.
        reason = skip_reason(result.stdout, result.stderr) or _last_line(result.stderr) or _last_line(result.stdout)
        return Outcome(Status.SKIPPED, reason or f"{name} exited 4 (KSFT_SKIP) without a reason")
    block = assertion_block(result.stderr, result.stdout)
    if block:
        return Outcome(Status.FAILED, f"{name} exit {rc}: {assertion_summary(block)}", block)
    last = _last_line(output_tail) or "no output"
    return Outcome(Status.FAILED, f"{name} exit {rc}: {last}", output_tail)
