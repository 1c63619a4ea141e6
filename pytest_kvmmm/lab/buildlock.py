"""One ``kvmmm-lab build`` at a time per lab cache: an exclusive ``flock`` on ``<lab>/build.lock``.

Why: the cache's parts are shared between builds, and some are built in place, not made
aside and renamed: the kernel object tree (``kernels/obj-<name>``, rebuilt incrementally by
make), the unpacked ``linux-source`` tree, the selftests' build. Two builds at once (two
users of one cache, or CI beside a developer) would interleave two makes in one object tree
and cache a kernel neither of them configured. A second build waits, and says for whom; the
lock dies with its holder (flock), so a killed build never blocks the next one.

The lock file is ours or refused: opened without following a link, a regular file owned by
this user and writable by no one else (root on a shared host acts on no file another user
could have written).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from .image import LabError, say

LOCK_NAME = "build.lock"


def lock_problem(st: os.stat_result, uid: int) -> str | None:
    """Why a lock file with this status must not be used; None when it is ours and private."""
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file"
    if st.st_uid != uid:
        return f"belongs to uid {st.st_uid}, not to uid {uid}"
    if st.st_mode & 0o022:
        return f"is writable by others (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def _open(path: Path) -> int:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, 0o600)
    except OSError as exc:
        raise LabError(f"the lab's build lock {path} cannot be opened: {exc.strerror or exc}") from None
    problem = lock_problem(os.fstat(fd), os.geteuid())
    if problem:
        os.close(fd)
        raise LabError(f"the lab's build lock {path} {problem}: refusing it (remove it if it is not someone's)")
    return fd


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return "another process"
    return f"pid {text}" if text.isdigit() else "another process"


@contextlib.contextmanager
def build_lock(lab_root: Path, progress: TextIO | None) -> Iterator[None]:
    """Hold the lab cache's build lock (waiting for another build, and saying so)."""
    lab_root.mkdir(parents=True, exist_ok=True)
    path = lab_root / LOCK_NAME
    fd = _open(path)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(progress, f"waiting for the kvmmm-lab build of {_holder(fd)} ({path}): one build at a time "
                          "per cache, the kernel object tree is built in place")
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the flock
