"""Writing and reading files safely as root on a shared host: no links followed, no devices, no
files another user could have written.

The plugin runs as root beside other users. A path it writes may have been prepared by one of
them: a symbolic link to ``/etc/shadow`` where the results file should be, a directory of
theirs where our journal should be, a FIFO that blocks the run. The rules here are those of
careful root-run tools (systemd-tmpfiles, sudo, rpm):

* private directories (journals, xdist run directories) are created with mode 0700, and one
  that exists is used only when it is a real directory owned by us and writable by nobody else;
* a file is replaced by writing a temporary file created exclusively (``mkstemp``) beside it
  and renaming it over the target, which must then be absent or a regular file;
* a file written in place (``--kvm-results``) is opened without following a link and without
  blocking, and used only when it is a regular file with one name;
* a file read as instructions (the host-change journal) is read only when it is a regular
  file owned by us and writable by nobody else, and only up to a size limit;
* a file the user names as input (a baseline, known issues) is read only up to a size limit,
  so its parser runs in bounded time and memory.

Every refusal is an ``UnsafePath`` whose message is one line naming the path and the fault.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from pathlib import Path
from typing import IO

#: Group- or other-writable bits.
_SHARED_WRITE = stat.S_IWGRP | stat.S_IWOTH


class TooLarge(OSError):
    """A file larger than its reader's limit: nothing of it is parsed."""

    def __init__(self, path: Path, limit: int) -> None:
        super().__init__(errno.EFBIG, f"{path} is larger than {limit} bytes")
        self.limit = limit


class UnsafePath(OSError):
    """A path the plugin refuses to use; the message is one line saying which and why."""

    def __init__(self, message: str, code: int = errno.EPERM) -> None:
        super().__init__(code, message)

    def __str__(self) -> str:
        return str(self.strerror)


def _who(uid: int) -> str:
    try:
        import pwd

        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except (ImportError, KeyError):
        return f"uid {uid}"


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def private_problem(st: os.stat_result, want_dir: bool) -> str | None:
    """Why a file or directory with status ``st`` (from ``lstat``) cannot be trusted, or None:
    it must be of the wanted type, owned by us, and writable by nobody else."""
    if stat.S_ISLNK(st.st_mode):
        return "is a symbolic link"
    if want_dir and not stat.S_ISDIR(st.st_mode):
        return f"is {_kind(st.st_mode)}, not a directory"
    if not want_dir and not stat.S_ISREG(st.st_mode):
        return f"is {_kind(st.st_mode)}, not a regular file"
    if st.st_uid != os.geteuid():
        return f"is owned by {_who(st.st_uid)}, not by {_who(os.geteuid())}"
    if st.st_mode & _SHARED_WRITE:
        return f"is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def private_dir(path: Path, mode: int = 0o700) -> Path:
    """``path`` as a directory only we can write: created with ``mode`` (its parents as usual),
    or, when it exists, checked. Raises ``UnsafePath`` for a link, another user's directory or
    one others may write."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        pass
    st = os.lstat(path)
    problem = private_problem(st, want_dir=True)
    if problem:
        raise UnsafePath(f"refusing to use {path}: it {problem}")
    return path


def read_bounded(path: Path, limit: int) -> bytes:
    """The content of the input file ``path``, at most ``limit`` bytes: ``TooLarge`` when it has
    more, ``OSError`` when it cannot be read."""
    with path.open("rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise TooLarge(path, limit)
    return data


def read_private(path: Path, limit: int) -> bytes:
    """The content of ``path``, read only if it is a regular file owned by us that nobody else
    may write (checked on the open file, not followed through a link), up to ``limit`` bytes.
    Raises ``UnsafePath`` (or ``OSError`` when it cannot be read at all)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafePath(f"refusing to read {path}: it is a symbolic link", errno.ELOOP) from None
        raise
    with os.fdopen(fd, "rb") as f:
        problem = private_problem(os.fstat(fd), want_dir=False)
        if problem:
            raise UnsafePath(f"refusing to read {path}: it {problem}")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise UnsafePath(f"refusing to read {path}: it is larger than {limit} bytes", errno.EFBIG)
    return data


def target_problem(path: Path) -> str | None:
    """Why the plugin cannot write the file ``path`` (an option's value), or None.

    Checked before the first test: a link, a directory, a device or FIFO, a path below a
    regular file, a file with several names (a hard link), or a place we may not write.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    except NotADirectoryError:
        st = None  # a parent is a file: found below
    except OSError as exc:
        return f"cannot look at {path}: {exc.strerror or exc}"
    if st is not None:
        if not stat.S_ISREG(st.st_mode):
            return f"{path} is {_kind(st.st_mode)}; give a regular file"
        if st.st_nlink > 1:
            return f"{path} has {st.st_nlink} names (a hard link); give a file of its own"
        if not os.access(path, os.W_OK):
            return f"{path} is not writable"
        return None
    ancestor = path.parent
    while True:
        try:
            ast = os.stat(ancestor)
        except (FileNotFoundError, NotADirectoryError):
            ancestor = ancestor.parent
            continue
        except OSError as exc:
            return f"cannot look at {ancestor}: {exc.strerror or exc}"
        break
    if not stat.S_ISDIR(ast.st_mode):
        return f"{path} is below {ancestor}, which is not a directory"
    if not os.access(ancestor, os.W_OK | os.X_OK):
        return f"cannot create {path}: {ancestor} is not writable"
    return None


def open_in_place(path: Path) -> IO[str]:
    """``path`` opened for writing from its start (truncated), for a file written as it grows.

    Not through a link (``O_NOFOLLOW``), without blocking on a FIFO (``O_NONBLOCK``), and only
    when the open file is a regular file with one name: checked on the descriptor, so a path
    swapped after ``target_problem`` is refused, not written through. Raises ``UnsafePath``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafePath(f"refusing to write {path}: it is a symbolic link", errno.ELOOP) from None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:
        os.close(fd)
        what = _kind(st.st_mode) if not stat.S_ISREG(st.st_mode) else "a file with several names"
        raise UnsafePath(f"refusing to write {path}: it is {what}")
    os.ftruncate(fd, 0)
    os.set_blocking(fd, True)
    return os.fdopen(fd, "w", encoding="utf-8")


def replace_file(path: Path, data: str | bytes, fsync: bool = False, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` atomically: a temporary file created exclusively beside it
    (``mkstemp``), then renamed over ``path``, which must be absent or a regular file.
    Raises ``UnsafePath`` or ``OSError``; no temporary file is left behind."""
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    problem = dir_problem(directory)
    if problem:
        raise UnsafePath(f"refusing to write in {directory}: it {problem}")
    problem = _replace_problem(path)
    if problem:
        raise UnsafePath(f"refusing to replace {path}: it {problem}")
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
            os.fchmod(f.fileno(), mode)
        problem = _replace_problem(path)  # again, just before: it may have been swapped meanwhile
        if problem:
            raise UnsafePath(f"refusing to replace {path}: it {problem}")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def dir_problem(directory: Path) -> str | None:
    """Why temporary files should not be created in ``directory``, or None: it must be ours or
    root's, and, when others may write it, sticky (as /tmp), so nobody can swap our files."""
    st = os.stat(directory)
    if st.st_uid not in (os.geteuid(), 0):
        return f"is owned by {_who(st.st_uid)}, not by {_who(os.geteuid())} or root"
    if st.st_mode & _SHARED_WRITE and not st.st_mode & stat.S_ISVTX:
        return f"is writable by group or others without the sticky bit (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def _replace_problem(path: Path) -> str | None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return f"is {_kind(st.st_mode)}"
    return None
