"""One run's classification: from what the process did (exit, output, processes left behind,
the kernel log meanwhile) to a ``SelftestResult``. Pure: the engine runs, this module judges.

The order matters and is the engine's contract: the exit decides first (``outcome.classify``);
an exit 0 whose output says otherwise is corrected (``output_checks``); processes left behind
fail a passing run; the kernel log read around the run fails it last (``--kvm-kernel-log fail``)
or adds notes (``report``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from .counters import Counters
from .discovery import Found
from .kernel_blame import Blame, blame
from .kernel_health import Health, taint_flags
from .metrics import parse_metrics
from .outcome import Outcome, Status, classify
from .output_checks import check_output, notes_without_verdict
from .process import ProcessResult
from .result import SelftestResult


@dataclass(frozen=True)
class Ran:
    """What happened while one selftest ran: its process, its event counts, the kernel log
    around it and whether it was alone on the host (for blaming kernel lines)."""

    proc: ProcessResult
    limit: float
    counts: Counters | None = None
    health: Health = Health()
    alone: bool = True


def judge(
    short: str,
    found: Found,
    argv: tuple[str, ...],
    ran: Ran,
    notes: Sequence[str] = (),
    kernel_mode: str = "fail",
    expected_kernel: Sequence[str] = (),
) -> SelftestResult:
    """The result of one run of ``found`` with ``argv``, named ``short`` as the caller asked for it
    (``notes`` are the engine's so far)."""
    proc = ran.proc
    outcome = classify(proc, ran.limit)
    verdict = check_output(found.name, proc.stdout, proc.stderr)
    extra = () if verdict is not None else notes_without_verdict(found.name, proc.stdout, proc.stderr)
    if outcome.status is Status.PASSED and verdict is not None:
        # Some binaries exit 0 after a logical failure or a skip (memslot_perf_test's
        # "Memslot count too high", dirty_log_test's unsupported log mode).
        outcome = Outcome(Status(verdict.status), f"{short} exit 0 but: {verdict.reason}"
                          if verdict.status == "failed" else verdict.reason)  # fmt: skip
    outcome = left_behind(outcome, short, proc.left_behind)
    judged = blame(ran.health, proc.pids, found.path.name, ran.alone, [re.compile(p) for p in expected_kernel])
    outcome, kernel_notes = kernel_verdict(outcome, judged, kernel_mode, short)
    health = judged.mine
    return SelftestResult(
        name=short,
        argv=argv,
        status=outcome.status,
        reason=outcome.reason,
        details=outcome.details,
        binary=str(found.path),
        returncode=proc.returncode,
        duration_s=proc.duration_s,
        stdout=proc.stdout,
        stderr=proc.stderr,
        metrics=parse_metrics(found.name, proc.stdout),
        started_at=proc.started_at,
        notes=(
            *notes,
            *extra,
            *kernel_notes,
            *(("output truncated to its head and tail",) if proc.truncated else ()),
        ),
        kernel_log=(*(line for _, line in health.complaints), *health.noise),
        counters=ran.counts,
    )


def kernel_verdict(outcome: Outcome, judged: Blame, mode: str, short: str) -> tuple[Outcome, tuple[str, ...]]:
    """The outcome once the kernel log is read (``mode`` "fail" or "report"), and the notes to show:
    this run's own complaints fail it; what others did meanwhile and what the selftest provokes
    on purpose are notes."""
    health = judged.mine
    notes: tuple[str, ...] = ()
    if health.bad and mode == "fail":
        if outcome.status is Status.PASSED:
            outcome = Outcome(Status.FAILED, f"{short} passed, but {health.summary()}", health.report())
        else:
            outcome = Outcome(outcome.status, outcome.reason,
                              f"{outcome.details}\n\nkernel log during the run:\n{health.report()}")
    elif health.bad or health.noise:
        notes = (*(f"kernel: {line}" for line in (health.report() or "").splitlines()),
                 *(f"kernel (known noise): {line}" for line in health.noise))
    if judged.taint_meanwhile:
        notes = (*notes, f"kernel (seen on the host meanwhile): became tainted ({taint_flags(judged.taint_meanwhile)})")
    return outcome, (
        *notes,
        *(f"kernel (seen on the host meanwhile): {line}" for line in judged.meanwhile[:20]),
        *(f"kernel (expected from {short}): {line}" for line in judged.expected[:5]),
    )


def left_behind(outcome: Outcome, short: str, left: Sequence[str]) -> Outcome:
    """A selftest that leaves processes running fails (they were killed): a passing one with
    ``left N processes behind: PID CMDLINE``, a failing one keeps its reason and says it too."""
    if not left:
        return outcome
    shown = "; ".join(left[:5]) + (f"; and {len(left) - 5} more" if len(left) > 5 else "")
    line = f"left {len(left)} processes behind: {shown}"
    if outcome.status in (Status.PASSED, Status.SKIPPED):
        return Outcome(Status.FAILED, f"{short} {line}", outcome.details)
    return Outcome(outcome.status, f"{outcome.reason}; {line}", outcome.details)

