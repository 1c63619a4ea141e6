"""Exit 0 that is not a pass: selftest output that really reports a failure or a skip.

Pure: binary name and output in, a verdict out. ``outcome.classify`` maps exit codes;
this module reads what some binaries print *before* exiting 0 anyway, so the caller
applies it only when the exit was 0 (it does not know the exit code):

* **memslot_perf_test** returns 0 from ``main()`` whatever ``test_loop()`` found. A slot
  cap the memory area cannot be split into (``Memslot count too high for this test,
  decrease the cap (max is N)``, or ``... may be too high ...`` when no count fits) ends
  the sub-test before it measured anything; ``No full loops done - too short test time
  or system too loaded?`` means the timed loop never completed once. Either way the
  numbers the run exists for are missing: **failed**, with the binary's own line, which
  already says what to change (``-s``, ``-l``).
* **dirty_log_test** ``print_skip()``s an unsupported log mode (``Log mode 'dirty-ring'
  not supported, skipping test``) and carries on to exit 0. When no log mode completed
  (no ``Total bits checked`` line), nothing was tested: **skipped**. When others did
  (``-M all`` on a host without a dirty ring), the modes that ran are real passes and
  the run is not a skip: no verdict; ``output_notes`` keeps the skipped mode visible.

``output_notes`` collects such partial skips and warnings of passing runs, for the
result's notes: a pass that tested less than asked, or whose numbers are suspect,
should say so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from . import textsafe

#: Distinct notes (or skipped log modes) kept from one output.
MAX_NOTES = 20


@dataclass(frozen=True)
class _Lines:
    """The lines holding one of ``needles`` (found with ``str.find``, so the output is read
    once, in C) and matched by ``pattern`` (``^`` is the line's start): what a per-line
    ``re.MULTILINE`` search found, in time linear in the output."""

    needles: tuple[str, ...]
    pattern: re.Pattern[str]

    def find(self, *texts: str) -> list[str]:
        found = (self.pattern.search(line) for text in texts for line in textsafe.lines_with(text, *self.needles))
        return [m.group(0) for m in found if m]


_MEMSLOT_FAILURE = _Lines(
    ("Memslot count", "No full loops done"),
    re.compile(
        r"^(?:Memslot count too high for this test\b|Memslot count may be too high for this test\b"
        r"|No full loops done\b).*"
    ),
)
_LOG_MODE_SKIP = _Lines(("Log mode '",), re.compile(r"^Log mode '[^'\n]*' not supported, skipping test[ \t\r]*$"))
_LOG_MODE_DONE = _Lines(("Total bits checked: ",), re.compile(r"^Total bits checked: "))

#: Lines of a passing run worth a note, per binary.
_NOTES: dict[str, _Lines] = {
    # -M all with a log mode the host lacks: the others ran (see check_output).
    "dirty_log_test": _LOG_MODE_SKIP,
    # Idle pages the test could not clear: its access-tracking numbers are off (nested, NUMA
    # balancing); 6.16 says so up front, and warns when lru_gen aging is unreliable.
    "access_tracking_perf_test": _Lines(
        ("WARNING: ", "Skipping idle page count sanity check"),
        re.compile(r"^(?:WARNING: .*|Skipping idle page count sanity check.*)"),
    ),
    # Sub-tests left out for lack of KVM_CAP_GUEST_MEMFD / SW_PROTECTED VMs.
    "set_memory_region_test": _Lines(("Skipping tests for ",), re.compile(r"^Skipping tests for .*")),
    "pre_fault_memory_test": _Lines(("Skipping tests for vm_type ",), re.compile(r"^Skipping tests for vm_type .*")),
    # No newline in the source: match it anywhere.
    "dirty_log_page_splitting_test": _Lines(
        ("Skipping testing with MANUAL_PROTECT",),
        re.compile(r"Skipping testing with MANUAL_PROTECT as it is not supported"),
    ),
}


@dataclass(frozen=True)
class OutputVerdict:
    """What an exit-0 run really was, and the binary's own line saying so."""

    status: Literal["failed", "skipped"]
    reason: str


def _name(binary: str) -> str:
    return binary.rsplit("/", 1)[-1]


def _unique(lines: list[str]) -> tuple[str, ...]:
    """Each line once, as it may be shown (``textsafe.line``), at most ``MAX_NOTES``."""
    first = list(dict.fromkeys(lines))[:MAX_NOTES]
    return tuple(dict.fromkeys(textsafe.line(line) for line in first))


def check_output(binary: str, stdout: str, stderr: str) -> OutputVerdict | None:
    """The failure or skip an exit-0 run of ``binary`` printed, or ``None`` for a real pass."""
    name = _name(binary)
    if name == "memslot_perf_test":
        failures = _MEMSLOT_FAILURE.find(stdout, stderr)
        if failures:
            return OutputVerdict("failed", textsafe.line(failures[0]))
    elif name == "dirty_log_test":
        skips = _unique(_LOG_MODE_SKIP.find(stdout, stderr))
        if skips and not _LOG_MODE_DONE.find(stdout, stderr):
            return OutputVerdict("skipped", "; ".join(skips))
    return None


def output_notes(binary: str, stdout: str, stderr: str) -> tuple[str, ...]:
    """Partial skips and warnings of a run ``check_output`` has no verdict for, once each."""
    return () if check_output(binary, stdout, stderr) is not None else notes_without_verdict(binary, stdout, stderr)


def notes_without_verdict(binary: str, stdout: str, stderr: str) -> tuple[str, ...]:
    """``output_notes`` for a caller that already knows ``check_output`` has no verdict."""
    lines = _NOTES.get(_name(binary))
    return () if lines is None else _unique(lines.find(stdout, stderr))
