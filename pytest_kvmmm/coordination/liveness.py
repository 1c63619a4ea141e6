"""Whether a process still lives: locks, ledger grants and journals left by a killed process are
recognised by their pid, and are then free or to be undone."""

from __future__ import annotations

import os


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (for locks and journals left by killed processes)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True
