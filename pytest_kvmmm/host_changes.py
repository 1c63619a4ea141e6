"""Opt-in host preparation (``--kvm-allow-host-changes``), journalled so the host is left as found.

A case that needs free hugetlb pages the pool lacks, or THP where it is ``never``, may
change the host when the user allows it. Every change is written to a journal (one file
per process, fsync'ed) *before* it is made, and undone at the end of the session (also
after a failure or Ctrl-C). If the process was killed, the next session finds the journal
of a dead process and restores it first.

Pools shrink back only by what this plugin added: pages another user reserved meanwhile
stay. THP goes back only if it still has the value we set. All of it happens under one
file lock, so xdist workers never fight over the same sysfs file.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from filelock import FileLock

from .host.mm import THP
from .host.sysfs import rooted, selected_word
from .runner import pid_alive

THP_ENABLED = f"{THP}/enabled"


@dataclass(frozen=True)
class Change:
    kind: str  # "hugetlb", "thp" or "param"
    path: str  # the sysfs file, as on the host
    added: int = 0  # hugetlb: pages this plugin added
    old: str = ""  # thp: the value before
    new: str = ""  # thp: the value we set


class HostChanges:
    """This process's changes to the host under ``root`` (``/`` live), journalled in ``journal_dir``."""

    def __init__(self, root: Path, journal_dir: Path) -> None:
        self.root = root
        self.dir = journal_dir  # created on the first change: a session that changes nothing writes nothing
        self._lock = FileLock(str(self.dir / "host.lock"))
        self.journal = self.dir / f"{os.getpid()}.json"
        self.changes: list[Change] = []

    def _file(self, path: str) -> Path:
        return rooted(self.root, path)

    def _write_journal(self, changes: list[Change], journal: Path | None = None) -> None:
        journal = journal or self.journal
        tmp = journal.with_suffix(".tmp")
        with tmp.open("w") as f:
            json.dump([asdict(c) for c in changes], f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, journal)

    def grow_hugetlb(self, nr_path: str, free_path: str, resv_path: str, pages: int) -> tuple[int, str | None]:
        """Grow the pool until ``pages`` are free; returns (pages added, why it fell short or None)."""
        self.dir.mkdir(parents=True, exist_ok=True)
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
        self.dir.mkdir(parents=True, exist_ok=True)
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
        self.dir.mkdir(parents=True, exist_ok=True)
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

    def undo_last(self, path: str) -> list[str]:
        """Undo this process's changes of one file (a parameter set for one test)."""
        with self._lock:
            mine = [c for c in self.changes if c.path == path]
            self.changes = [c for c in self.changes if c.path != path]
            done = self._undo(mine)
            self._write_journal(self.changes)
            return done

    def _undo(self, changes: list[Change]) -> list[str]:
        done = []
        for c in reversed(changes):
            try:
                if c.kind == "hugetlb":
                    now = int(self._file(c.path).read_text())
                    back = max(now - c.added, 0)
                    self._file(c.path).write_text(f"{back}\n")
                    done.append(f"{c.path}: {now} -> {back} (removed the {c.added} pages pytest-kvmmm added)")
                elif c.kind == "param":
                    self._file(c.path).write_text(c.old + "\n")
                    done.append(f"{c.path}: {c.new} -> {c.old}")
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
        with self._lock:
            done = self._undo(self.changes)
            self.changes = []
            self.journal.unlink(missing_ok=True)
            return done

    def restore_stale(self) -> list[str]:
        """Undo the changes of processes that died without restoring (SIGKILL, a crashed worker)."""
        done: list[str] = []
        if not any(self.dir.glob("*.json")):
            return done
        with self._lock:
            for journal in sorted(self.dir.glob("*.json")):
                try:
                    pid = int(journal.stem)
                except ValueError:
                    continue
                if pid == os.getpid() or pid_alive(pid):
                    continue
                try:
                    changes = [Change(**c) for c in json.loads(journal.read_text())]
                except (OSError, ValueError, TypeError):
                    changes = []
                done += [f"{line} [left by killed process {pid}]" for line in self._undo(changes)]
                journal.unlink(missing_ok=True)
        return done
