"""The session's counters from the settings: tracefs mounted if allowed, else a note saying why not.

tracefs that is not mounted is a host change to make only with ``--kvm-allow-host-changes``:
then it is mounted at ``/sys/kernel/tracing``, journalled like every change, and unmounted at
the end of the session.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from ...coordination.host_changes import HostChanges
from .perf import LinuxSyscalls, Syscalls
from .session import CounterSession
from .tracefs import TRACEFS_DIRS, find_tracefs
from .vmstats import wanted


def mount_tracefs(root: Path, changes: HostChanges) -> str | None:
    """Mount tracefs at its usual place, when that is the kernel's own empty directory."""
    target = root / TRACEFS_DIRS[0].lstrip("/")
    try:
        st = os.lstat(target)
        empty = not any(os.scandir(target))
    except OSError as exc:
        return f"cannot mount tracefs: {TRACEFS_DIRS[0]}: {exc.strerror}"
    if not os.path.isdir(target) or os.path.islink(target) or st.st_uid != 0 or not empty:
        return f"cannot mount tracefs: {TRACEFS_DIRS[0]} is not the kernel's empty directory"
    return changes.mount("tracefs", TRACEFS_DIRS[0])


def counter_session(
    selection: Sequence[str],
    arch: str,
    changes: HostChanges | None,
    root: Path = Path("/"),
    syscalls: Callable[[], Syscalls] = LinuxSyscalls,
) -> CounterSession:
    """Counters for this process; with ``changes`` (host changes allowed) tracefs is mounted if needed."""
    mounted = ""
    tracepoints = wanted(selection, arch)[1]  # ``vm`` alone reads debugfs, never tracefs
    if changes is not None and tracepoints and find_tracefs(root).path is None:
        why = mount_tracefs(root, changes)
        if why:
            return CounterSession({}, None, f"counters off: {why}")
        mounted = f"tracefs mounted at {TRACEFS_DIRS[0]} for the run"
    session = CounterSession.create(selection, arch, root, syscalls)
    session.note = "; ".join(n for n in (mounted, session.note) if n)
    return session
