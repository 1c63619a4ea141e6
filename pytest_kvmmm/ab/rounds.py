"""Interleaved rounds: the same pytest selection under two KVM builds, A B / B A / A B ... on one host.

Each side of a round is one ``pytest`` run of the user's selection with ``--kvm-results`` into
the work directory, under that side's KVM modules (swapped in by ``modules.ModuleSwap``). The
order alternates between rounds, so a host that drifts slowly favours neither side. The rounds'
records go to ``paired.py`` for the verdicts.

A round whose pytest could not run the selection (usage error, internal error, nothing
collected) stops the whole run: its numbers would be missing on one side only.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from .modules import ModuleFiles, ModuleSwap
from .paired import RoundRecords

SIDES = ("before", "after")
#: pytest's exit codes that still mean "the selection ran": all passed, some failed.
RAN = (0, 1)
#: Bound on one results file (records are a few KB each).
MAX_RESULTS_BYTES = 64 << 20


class RoundError(Exception):
    """A round that could not run; the message is one line."""


@dataclass(frozen=True)
class Side:
    name: str  # "before" or "after"
    describe: str  # for the table: "stock (Debian 6.12.117+deb12-amd64)", "Linux 6.12.117 + x.patch (3f2a9c1e)"
    files: ModuleFiles | None = None  # None: the stock modules
    params: Mapping[str, Mapping[str, str]] = field(default_factory=dict)


def schedule(rounds: int) -> list[tuple[int, str]]:
    """``[(1, before), (1, after), (2, after), (2, before), ...]``: each round's order alternates."""
    order = []
    for r in range(1, rounds + 1):
        order += [(r, s) for s in (SIDES if r % 2 else SIDES[::-1])]
    return order


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of one round's ``--kvm-results`` (bounded; a damaged line is skipped)."""
    try:
        if path.stat().st_size > MAX_RESULTS_BYTES:
            raise RoundError(f"{path} is over {MAX_RESULTS_BYTES >> 20} MB: not a round's results")
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return []
    records = []
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            records.append(rec)
    return records


def pytest_command(pytest_args: Sequence[str], results: Path) -> list[str]:
    return [sys.executable, "-m", "pytest", *pytest_args, f"--kvm-results={results}", "-p", "no:cacheprovider"]


def _tail(log: Path, n: int = 3) -> str:
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    return " | ".join(lines[-n:]) or "no output"


def run_pytest(args: list[str], log: Path, cwd: Path | None) -> int:
    """One pytest run, its output in ``log``; SIGTERM to us is passed on, then raised as ours."""
    with log.open("w") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=cwd)
    previous = signal.getsignal(signal.SIGTERM)

    def forward(signum: int, frame: FrameType | None) -> None:
        proc.send_signal(signum)
        proc.wait()
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, forward)
    try:
        return proc.wait()
    except BaseException:  # Ctrl-C: the child got it too (same process group); wait for its cleanup
        proc.wait()
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_rounds(
    sides: Mapping[str, Side],
    rounds: int,
    pytest_args: Sequence[str],
    workdir: Path,
    swap: ModuleSwap | None,
    progress: TextIO | None = None,
    cwd: Path | None = None,
    runner: Callable[[list[str], Path, Path | None], int] = run_pytest,
) -> list[RoundRecords]:
    """Run every round; the caller restores the stock modules afterwards (``with swap:``)."""
    workdir.mkdir(parents=True, exist_ok=True)
    out: list[RoundRecords] = []
    for r, name in schedule(rounds):
        side = sides[name]
        if swap is not None:
            if side.files is None:
                swap.restore()
            else:
                swap.switch(side.files, side.params)
        results = workdir / f"round{r}-{name}.jsonl"
        results.unlink(missing_ok=True)
        log = results.with_suffix(".log")
        code = runner(pytest_command(pytest_args, results), log, cwd)
        if code not in RAN:
            raise RoundError(f"round {r} ({name}): pytest exited {code}: {_tail(log)} (log {log})")
        records = read_records(results)
        if not records:
            raise RoundError(f"round {r} ({name}): pytest ran no selftest test (log {log}): check the selection")
        passed = sum(1 for rec in records if rec.get("status") == "passed")
        if progress is not None:
            print(f"kvmmm-ab: round {r}/{rounds} {name}: {passed}/{len(records)} passed", file=progress, flush=True)
        out.append(RoundRecords(r, name, records))
    return out
