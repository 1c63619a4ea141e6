"""Opt-in host preparation (``--kvm-allow-host-changes``), journalled so the host is left as found.

A case that needs free hugetlb pages the pool lacks, or THP where it is ``never``, may
change the host when the user allows it. Every change is written to a journal (one file
per process, fsync'ed) *before* it is made, and undone at the end of the session (also
after a failure or Ctrl-C). If the process was killed, the next session finds the journal
of a dead process and restores it first.

Pools shrink back only by what this plugin added: pages another user reserved meanwhile
stay. THP goes back only if it still has the value we set. All of it happens under one
file lock, so xdist workers never fight over the same sysfs file.

A journal read back is input, not instructions: it is read only from a directory and a file
that are ours and writable by nobody else (``safefs``), and only entries that name a file
this plugin changes, with values of the right kind, are replayed (``journal_check``); the
rest is left as it is and reported in ``ignored``.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from filelock import FileLock

from ..host.mm import THP
from ..host.sysfs import rooted, selected_word
from . import journal_check, modreload
from .liveness import pid_alive
from .safefs import UnsafePath, private_dir, private_problem, read_private, replace_file

THP_ENABLED = f"{THP}/enabled"
#: A journal holds a handful of entries; anything larger is not one of ours.
JOURNAL_LIMIT = 1 << 20


def _module_param(path: str) -> tuple[str, str]:
    """``/sys/module/kvm/parameters/tdp_mmu`` -> ("kvm", "tdp_mmu")."""
    parts = path.strip("/").split("/")
    if len(parts) != 5 or parts[:2] != ["sys", "module"] or parts[3] != "parameters":
        raise ValueError(f"not a module parameter: {path}")
    return parts[2], parts[4]


@dataclass(frozen=True)
class Change:
    kind: str  # "hugetlb", "thp", "param", "mount" or "module" (a parameter set by reloading its module)
    path: str  # the sysfs file, as on the host
    added: int = 0  # hugetlb: pages this plugin added
    old: str = ""  # thp: the value before
    new: str = ""  # thp: the value we set


def _libc() -> Any:
    return ctypes.CDLL(None, use_errno=True)


def mount_fs(fstype: str, target: Path) -> str | None:
    """``mount -t fstype nodev target`` (no shell, no binary); why it failed, or None."""
    if _libc().mount(b"nodev", os.fsencode(target), fstype.encode(), ctypes.c_ulong(0), None) != 0:
        return f"cannot mount {fstype} on {target}: {os.strerror(ctypes.get_errno())}"
    return None


def umount_fs(target: Path) -> str | None:
    if _libc().umount2(os.fsencode(target), 0) != 0:
        return os.strerror(ctypes.get_errno())
    return None


def _stat(pid: int) -> list[str]:
    """``/proc/PID/stat`` after the command name: state, ppid, ... ([] when it cannot be read)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def _running(pid: int, child_grace: float = 0.0) -> bool:
    """Whether ``pid`` still runs: a zombie (a killed xdist worker its controller has not reaped
    yet) has ended and will never restore its own changes. A child of ours (an xdist worker, at
    the end of the run) gets ``child_grace`` seconds to finish dying: the controller sees a
    crashed worker's pipes close before the kernel makes it a zombie."""
    deadline = time.monotonic() + child_grace
    while pid_alive(pid):
        fields = _stat(pid)
        if fields[:1] == ["Z"]:
            return False
        if not fields or time.monotonic() >= deadline or fields[1:2] != [str(os.getpid())]:
            return True
        time.sleep(0.05)
    return False


#: (path, pages now, value to restore) -> the value to write instead.
PoolTarget = Callable[[str, int, int], int]


def _as_asked(path: str, now: int, back: int) -> int:
    return back


class HostChanges:
    """This process's changes to the host under ``root`` (``/`` live), journalled in ``journal_dir``."""

    def __init__(self, root: Path, journal_dir: Path) -> None:
        self.root = root
        self.dir = journal_dir  # created on the first change: a session that changes nothing writes nothing
        self._lock = FileLock(str(self.dir / "host.lock"))
        self.journal = self.dir / f"{os.getpid()}.json"
        self.changes: list[Change] = []
        #: Why journals or entries read back were not replayed (one line each, deduplicated).
        self.ignored: list[str] = []
        #: Set by the engine: the host-wide ledger's ``restoring``, which keeps the pages other
        #: sessions hold grants on when a pool shrinks back (they are taken back later).
        self.pool_floor: Callable[[], AbstractContextManager[PoolTarget]] | None = None

    def _floor(self) -> AbstractContextManager[PoolTarget]:
        """Taken before ``self._lock`` (the ledger's lock comes first everywhere)."""
        if self.pool_floor is None:
            return contextlib.nullcontext(_as_asked)
        return self.pool_floor()

    def _file(self, path: str) -> Path:
        return rooted(self.root, path)

    def _write_journal(self, changes: list[Change], journal: Path | None = None) -> None:
        """Replace the journal: an exclusive temp file in our private directory, fsync'ed, renamed."""
        replace_file(journal or self.journal, json.dumps([asdict(c) for c in changes]), fsync=True, mode=0o600)

    def _ensure_dir(self) -> str | None:
        """Create the journal directory (0700), or say why it cannot be used (a link, someone else's)."""
        try:
            private_dir(self.dir)
        except OSError as exc:
            return str(exc) if isinstance(exc, UnsafePath) else f"cannot create {self.dir}: {exc.strerror or exc}"
        return None

    def grow_hugetlb(self, nr_path: str, free_path: str, resv_path: str, pages: int) -> tuple[int, str | None]:
        """Grow the pool until ``pages`` are free; returns (pages added, why it fell short or None)."""
        unsafe = self._ensure_dir()
        if unsafe:
            return 0, unsafe
        with self._lock:
            nr = int(self._file(nr_path).read_text())
            usable = int(self._file(free_path).read_text()) - int(self._file(resv_path).read_text())
            if usable >= pages:
                return 0, None
            target = nr + pages - max(usable, 0)
            change = Change("hugetlb", nr_path, added=target - nr)
            self._write_journal([*self.changes, change])  # journal first: a kill now still restores
            try:
                self._file(nr_path).write_text(f"{target}\n")
            except OSError as exc:
                self._write_journal(self.changes)
                return 0, f"cannot write {nr_path}: {exc.strerror or exc}"
            got = int(self._file(nr_path).read_text()) - nr
            if got > 0:
                self.changes.append(Change("hugetlb", nr_path, added=got))
            self._write_journal(self.changes)
            if got < target - nr:
                return got, f"the kernel could allocate only {got} of {target - nr} more pages for {nr_path}"
            return got, None

    def set_thp(self, value: str = "madvise") -> str | None:
        """Set THP ``enabled`` (journalled); returns why it failed, or None."""
        unsafe = self._ensure_dir()
        if unsafe:
            return unsafe
        with self._lock:
            text = self._file(THP_ENABLED).read_text()
            old = selected_word(text) or ""
            if old == value:
                return None
            change = Change("thp", THP_ENABLED, old=old, new=value)
            self._write_journal([*self.changes, change])
            try:
                self._file(THP_ENABLED).write_text(value + "\n")
            except OSError as exc:
                self._write_journal(self.changes)
                return f"cannot write {THP_ENABLED}: {exc.strerror or exc}"
            if self._file(THP_ENABLED).read_text().find(f"[{value}]") < 0 and self.root == Path("/"):
                self._write_journal(self.changes)
                return f"{THP_ENABLED} did not take {value}"
            self.changes.append(change)
            self._write_journal(self.changes)
            return None

    def set_param(self, path: str, value: str) -> str | None:
        """Write a module parameter (journalled, restored like every change); returns why it failed."""
        unsafe = self._ensure_dir()
        if unsafe:
            return unsafe
        with self._lock:
            old = self._file(path).read_text().strip()
            if old == value:
                return None
            change = Change("param", path, old=old, new=value)
            self._write_journal([*self.changes, change])
            try:
                self._file(path).write_text(value + "\n")
            except OSError as exc:
                self._write_journal(self.changes)
                return f"cannot write {path}: {exc.strerror or exc}"
            self.changes.append(change)
            self._write_journal(self.changes)
            return None

    def mount(self, fstype: str, target: str) -> str | None:
        """Mount a pseudo filesystem (tracefs for ``--kvm-counters``) at ``target`` (journalled,
        unmounted at the end); returns why it failed, or None."""
        unsafe = self._ensure_dir()
        if unsafe:
            return unsafe
        with self._lock:
            change = Change("mount", target, new=fstype)
            self._write_journal([*self.changes, change])
            why = mount_fs(fstype, self._file(target))
            if why:
                self._write_journal(self.changes)
                return why
            self.changes.append(change)
            self._write_journal(self.changes)
            return None

    def reload_param(self, path: str, value: str) -> str | None:
        """Set a read-only module parameter by reloading its module (``modreload.py``),
        journalled first and restored by another reload; returns why it failed, or None."""
        module, param = _module_param(path)
        unsafe = self._ensure_dir()
        if unsafe:
            return unsafe
        with self._lock:
            why = modreload.cannot_reload(self.root, module, shutil.which)
            if why:
                return why
            old = self._file(path).read_text().strip()
            if old == value:
                return None
            change = Change("module", path, old=old, new=value)
            self._write_journal([*self.changes, change])
            why = modreload.reload(self.root, module, param, value)
            if why is None and self._file(path).read_text().strip() != value:
                why = f"{path} reads {self._file(path).read_text().strip()!r} after the reload, not {value!r}"
            if why:
                modreload.reload(self.root, module, param, old)
                self._write_journal(self.changes)
                return why
            self.changes.append(change)
            self._write_journal(self.changes)
            return None

    def undo_last(self, path: str) -> list[str]:
        """Undo this process's changes of one file (a parameter set for one test)."""
        with self._floor() as target, self._lock:
            mine = [c for c in self.changes if c.path == path]
            self.changes = [c for c in self.changes if c.path != path]
            done = self._undo(mine, target)
            self._write_journal(self.changes)
            return done

    def _undo(self, changes: list[Change], target: PoolTarget = _as_asked) -> list[str]:
        done = []
        for c in reversed(changes):
            try:
                if c.kind == "hugetlb":
                    now = int(self._file(c.path).read_text())
                    back = target(c.path, now, max(now - c.added, 0))
                    self._file(c.path).write_text(f"{back}\n")
                    kept = back - max(now - c.added, 0)
                    done.append(f"{c.path}: {now} -> {back} (removed the {c.added} pages pytest-kvmmm added)" if kept <= 0
                                else f"{c.path}: {now} -> {back} (removed {c.added - kept} of the {c.added} pages "
                                     f"pytest-kvmmm added; {kept} are granted to another session, removed once free)")
                elif c.kind == "module":
                    module, param = _module_param(c.path)
                    why = modreload.reload(self.root, module, param, c.old)
                    done.append(f"{c.path}: {c.new} -> {c.old} (reloaded {module})" if why is None
                                else f"{c.path}: could not restore {c.old}: {why}")
                elif c.kind == "param":
                    self._file(c.path).write_text(c.old + "\n")
                    done.append(f"{c.path}: {c.new} -> {c.old}")
                elif c.kind == "mount":
                    why = umount_fs(self._file(c.path))
                    done.append(f"{c.path}: could not unmount {c.new}: {why}" if why else f"{c.path}: unmounted {c.new}")
                elif c.kind == "thp":
                    now_text = self._file(c.path).read_text()
                    if f"[{c.new}]" in now_text or self.root != Path("/"):
                        self._file(c.path).write_text(c.old + "\n")
                        done.append(f"{c.path}: {c.new} -> {c.old}")
                    else:
                        done.append(f"{c.path}: left as is (changed by someone else since)")
            except (OSError, ValueError) as exc:
                done.append(f"{c.path}: could not restore: {exc}")
        return done

    def restore(self) -> list[str]:
        """Undo this process's changes (end of session, failure, Ctrl-C)."""
        if not self.changes and not self.journal.exists():
            return []
        with self._floor() as target, self._lock:
            done = self._undo(self.changes, target)
            self.changes = []
            self.journal.unlink(missing_ok=True)
            return done

    def _stale(self, child_grace: float = 0.0) -> list[tuple[Path, int]]:
        """Journals of processes that died without restoring (SIGKILL, a crashed worker), when
        the journal directory can be trusted at all (else why not, in ``ignored``)."""
        try:
            st = os.lstat(self.dir)
        except OSError:
            return []
        problem = private_problem(st, want_dir=True)
        if problem:
            self._ignore(f"{self.dir} {problem}")
            return []
        found = []
        for journal in sorted(self.dir.glob("*.json")):
            try:
                pid = int(journal.stem)
            except ValueError:
                continue
            if pid != os.getpid() and not _running(pid, child_grace):
                found.append((journal, pid))
        return found

    def _ignore(self, reason: str) -> None:
        if reason not in self.ignored:
            self.ignored.append(reason)

    def _read_stale(self, journal: Path) -> list[Change] | None:
        """The replayable changes of a dead process's journal; None when the file is not to be
        touched at all (not ours, a link, writable by others). Entries that may not be replayed
        are reported; the journal then stays, renamed, for a person to look at."""
        try:
            entries = json.loads(read_private(journal, JOURNAL_LIMIT))
        except UnsafePath as exc:
            self._ignore(str(exc))
            return None
        except (OSError, ValueError, RecursionError) as exc:
            self._ignore(f"{journal}: not a journal ({str(exc)[:80]})")
            entries = []
        if not isinstance(entries, list):
            self._ignore(f"{journal}: not a list of changes")
            entries = []
        names = [f.name for f in fields(Change)]
        changes, rejected = [], []
        for entry in entries:
            why = journal_check.problem(entry, names)
            if why is None:
                changes.append(Change(**entry))
            else:
                rejected.append(why)
        if rejected:
            for why in rejected:
                self._ignore(f"{journal.name}: {why}")
            os.replace(journal, journal.with_name(journal.name + ".rejected"))  # replayed once, kept for review
        return changes

    def pending_stale(self) -> bool:
        """Whether a dead process left a journal here (cheap: a directory listing)."""
        return bool(self._stale())

    def restore_stale(self, child_grace: float = 0.0) -> list[str]:
        """Undo the replayable changes of processes that died without restoring (SIGKILL, a
        crashed worker); what may not be replayed is left as is and named in ``ignored``."""
        done: list[str] = []
        if not self._stale(child_grace):
            return done
        with self._floor() as target, self._lock:
            for journal, pid in self._stale():
                changes = self._read_stale(journal)
                if changes is None:
                    continue
                done += [f"{line} [left by killed process {pid}]" for line in self._undo(changes, target)]
                journal.unlink(missing_ok=True)
        return done

    def ignored_line(self) -> str | None:
        """The one report line on what was not replayed, or None."""
        return journal_check.report_line(self.ignored) if self.ignored else None
