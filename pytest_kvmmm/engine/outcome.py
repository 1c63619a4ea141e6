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
import itertools
from dataclasses import dataclass
from typing import Callable

from . import assertions, textsafe
from .process import ProcessResult

KSFT_PASS = 0
KSFT_SKIP = 4

#: Output tail shown for a failure without an assertion block, a crash or a timeout.
TAIL_LINES = 20
#: Characters of a stream's end looked at for its tail and its last line.
TAIL_WINDOW = 65536
#: Skip lines looked at per stream, from the last one back.
MAX_SKIP_LINES = 1000
_RANDOM_SEED = "Random seed: "


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


def _tap_skip(line: str) -> str | None:
    """The reason of a ``1..0 # SKIP - reason`` / ``ok 3 name # SKIP reason`` line, else None."""
    hash_ = line.find("#")
    lead = line[:hash_].strip() if hash_ >= 0 else "-"
    if lead and lead != "1..0" and not (lead.startswith("ok ") and lead[3:].split(" ", 1)[0].isdigit()):
        return None
    rest = line[hash_ + 1 :].lstrip()
    if not rest.startswith("SKIP") or rest[4:5].isalnum() or rest[4:5] == "_":
        return None
    return rest[4:].lstrip(" \t\n:-").strip()


def _print_skip(line: str) -> str | None:
    """The reason of a 5.x ``<reason>, skipping test`` line, else None."""
    text = line.rstrip()
    text = text[:-1] if text.endswith(".") else text
    before = text[: -len("skipping test")]
    if not text.endswith("skipping test") or not before[-1:].isspace():
        return None
    reason = before.rstrip()
    return reason[:-1] if reason.endswith(",") else reason


def _last_skip(text: str, needle: str, parse: Callable[[str], str | None]) -> str | None:
    for line in itertools.islice(textsafe.lines_with(text, needle, reverse=True), MAX_SKIP_LINES):
        found = parse(line)
        if found is not None:
            return found
    return None


def skip_reason(stdout: str, stderr: str) -> str | None:
    """The reason a selftest gave for skipping, in any of the formats seen from 5.x to 6.16,
    as it may be shown (``textsafe.line``). Lines are found by fixed strings, last first."""
    for text in (stdout, stderr):
        found = _last_skip(text, "SKIP", _tap_skip)
        if found is not None:
            return textsafe.line(found) or "skipped (KSFT_SKIP) without a reason"
    for text in (stdout, stderr):
        found = _last_skip(text, "skipping test", _print_skip)
        if found is not None:
            return textsafe.line(found)
    return None


def _shown(text: str) -> list[str]:
    """The last lines of a stream that may be shown, without ``Random seed:`` lines; a binary
    stream is one line naming it."""
    if textsafe.is_binary(text):
        return [f"[{textsafe.binary_summary(text)}]"]
    lines = textsafe.last_lines(text, TAIL_WINDOW)
    return [ln for ln in lines if not ln.startswith(_RANDOM_SEED)]


def _output_tail(result: ProcessResult) -> str:
    lines = _shown(result.stdout) + (_shown(result.stderr) if result.stderr else [])
    return textsafe.block("\n".join(lines), TAIL_LINES)


def _last_line(text: str) -> str:
    """The last line with text of a stream (its last ``TAIL_WINDOW`` characters), for a reason."""
    if textsafe.is_binary(text):
        return textsafe.binary_summary(text)
    lines = _shown(text)
    return next((textsafe.line(ln) for ln in reversed(lines) if ln.strip()), "")


def classify(result: ProcessResult, timeout_s: float | None = None) -> Outcome:
    """Map a finished selftest process to an outcome, with a reason a person can act on."""
    name = result.argv[0].rsplit("/", 1)[-1] if result.argv else "selftest"
    if result.start_error is not None:
        return Outcome(Status.ERROR, result.start_error)
    output_tail = _output_tail(result)
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
        found = assertions.report(result.stderr, result.stdout)
        return Outcome(
            Status.CRASHED,
            f"{name} crashed: killed by {sig.name} (signal {sig.value})",
            found.details if found else output_tail,
        )
    rc = result.returncode
    if rc == KSFT_PASS:
        return Outcome(Status.PASSED)
    if rc == KSFT_SKIP:
        # No "# SKIP" line happens: get_def_hugetlb_pagesz() prints its reason bare on stderr.
        reason = skip_reason(result.stdout, result.stderr) or _last_line(result.stderr) or _last_line(result.stdout)
        return Outcome(Status.SKIPPED, reason or f"{name} exited 4 (KSFT_SKIP) without a reason")
    found = assertions.report(result.stderr, result.stdout)
    if found:
        return Outcome(Status.FAILED, f"{name} exit {rc}: {found.summary}", found.details)
    last = _last_line(result.stderr) or _last_line(result.stdout) or "no output"
    return Outcome(Status.FAILED, f"{name} exit {rc}: {last}", output_tail)
