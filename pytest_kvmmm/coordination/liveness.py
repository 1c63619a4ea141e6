"""Whether a process still lives: locks, ledger grants and journals left by a killed process are
recognised by their pid, and are then free or to be undone."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

_MAX_STAT = 4096


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (for locks and journals left by killed processes): a zombie
    (a killed xdist worker its controller has not reaped yet) does not."""
    return alive(pid)


@dataclass(frozen=True)
class ProcStat:
    """What ``/proc/PID/stat`` says about a process: its state letter and its start time
    (clock ticks after boot), which tells a reused PID from the process we knew."""

    state: str
    ppid: int
    pgrp: int
    starttime: int


def proc_stat(pid: int, proc: Path = Path("/proc")) -> ProcStat | None:
    """``/proc/PID/stat`` parsed (None when there is no such process, or it is unreadable).

    The command name in parentheses may contain anything, spaces and ``)`` included: the
    fields that follow are found after its last ``)``.
    """
    try:
        text = (proc / str(pid) / "stat").read_bytes()[:_MAX_STAT].decode("ascii", "replace")
    except OSError:
        return None
    fields = text[text.rfind(")") + 1:].split()
    try:
        return ProcStat(fields[0], int(fields[1]), int(fields[2]), int(fields[19]))
    except (IndexError, ValueError):
        return None


def alive(pid: int, starttime: int | None = None, proc: Path = Path("/proc")) -> bool:
    """Whether ``pid`` is a running process: a zombie (``Z``) or a dead one (``X``) is not, and
    with ``starttime``, neither is another process that got the same PID later."""
    st = proc_stat(pid, proc)
    if st is None or st.state in ("Z", "X"):
        return False
    return starttime is None or st.starttime == starttime


