"""Every process a selftest starts, found, remembered and ended, wherever it went.

Killing the selftest's process group is not enough: a child that called ``setsid`` or a
double-forked daemon leaves the group, outlives the binary and keeps guest memory,
hugetlb pages or a vCPU spinning on a shared host. A ``ProcessTree`` follows one
selftest run:

* a cgroup v2 of its own (``cgroup.kill`` ends everything in it at once), where this
  process may create one next to its own cgroup and ``cgroup.kill`` exists;
* else this process becomes a child subreaper (``PR_SET_CHILD_SUBREAPER``): orphans of the
  selftest are re-parented to us instead of to init, and we know them by a token in their
  environment.

While the selftest runs, ``poll`` remembers the id of every process and thread seen in the
tree: the kernel names the thread in a WARN (``CPU: 0 PID: 11749 Comm: ...``), and the
kernel-log check blames a test only for its own threads. No pytest here.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import signal
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..coordination.liveness import alive, proc_stat

#: Marks every process a selftest starts (inherited through fork and exec).
TOKEN_ENV = "KVMMM_SELFTEST_TOKEN"
PR_SET_CHILD_SUBREAPER = 36
#: How often the tree is looked at while the selftest runs (vCPU threads live for the run).
POLL_EVERY_S = 0.25
#: How long ``kill_all`` waits for killed processes to be gone.
KILL_WAIT_S = 3.0
#: Prefix of the cgroups we create (stale ones of dead pytest processes are swept).
CGROUP_PREFIX = "pytest-kvmmm-"
_MAX_PROC_READ = 1 << 16
_counter = itertools.count(1)


def cmdline(pid: int) -> str:
    """The command line of ``pid``, one line, bounded (``[comm]`` for one without argv)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()[:512]
    except OSError:
        return "?"
    text = raw.rstrip(b"\0").replace(b"\0", b" ").decode("utf-8", "replace")
    if not text:
        try:
            text = "[" + Path(f"/proc/{pid}/comm").read_text().strip() + "]"
        except OSError:
            text = "?"
    return "".join(c if c.isprintable() else "?" for c in text)[:200]


def _children(pid: int) -> list[int]:
    """The children of every thread of ``pid`` (``/proc/PID/task/TID/children``)."""
    out: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            out += [int(c) for c in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
        except (OSError, ValueError):
            continue
    return out


def _threads(pid: int) -> list[int]:
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except (OSError, ValueError):
        return []


def _has_token(pid: int, token: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return token in f.read(_MAX_PROC_READ).split(b"\0")
    except OSError:
        return False


class ProcessTree:
    """One selftest run's processes. Create it before starting the binary, pass ``env()`` and
    call ``join()`` in the child before exec; then ``poll``, ``leftovers`` and ``kill_all``."""

    def __init__(self, cgroup_parent: Path | None) -> None:
        self.token = f"{os.getpid()}-{next(_counter)}-{time.monotonic_ns()}"
        #: Every pid and thread id seen in the tree while it ran.
        self.seen: set[int] = set()
        self.leader: int | None = None
        #: Set once the leader's process group got SIGKILL: its members are dying, not left.
        self.group_killed = False
        self._polled = 0.0
        self.cgroup: Path | None = None
        self._procs_fd: int | None = None
        if cgroup_parent is not None:
            path = cgroup_parent / f"{CGROUP_PREFIX}{os.getpid()}-{self.token.split('-')[1]}"
            try:
                path.mkdir(mode=0o700)
                if (path / "cgroup.kill").exists():  # Linux >= 5.14; before it, the subreaper
                    self._procs_fd = os.open(path / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC)
                    self.cgroup = path
            except OSError:
                pass
            if self.cgroup is None:
                _rmdir(path)
        if self.cgroup is None:
            _become_subreaper()

    @property
    def kind(self) -> str:
        return "cgroup" if self.cgroup is not None else "subreaper"

    def env(self, env: Mapping[str, str] | None) -> dict[str, str]:
        return {**(os.environ if env is None else env), TOKEN_ENV: self.token}

    def join(self) -> None:
        """In the child, before exec: move into the run's cgroup. Raises if it cannot (the
        parent then starts the binary again without a cgroup)."""
        if self._procs_fd is not None:
            os.write(self._procs_fd, b"0")

    def started(self, pid: int) -> None:
        self.leader = pid
        self.poll()

    def _members(self) -> set[int]:
        """The live processes of the tree (not the leader's threads)."""
        if self.cgroup is not None:
            return set(_read_ids(self.cgroup / "cgroup.procs"))
        found: set[int] = set()
        todo = [self.leader] if self.leader is not None else []
        token = f"{TOKEN_ENV}={self.token}".encode()
        todo += [c for c in _children(os.getpid()) if c != self.leader and _has_token(c, token)]
        while todo and len(found) < 100_000:
            pid = todo.pop()
            if pid in found:
                continue
            found.add(pid)
            todo += _children(pid)
        return found

    def poll(self, every: float = 0.0) -> None:
        """Remember every process and thread now in the tree (for the kernel-log check); with
        ``every``, at most that often (the runner's read loop calls it each 50 ms)."""
        now = time.monotonic()
        if every and now - self._polled < every:
            return
        self._polled = now
        if self.cgroup is not None:
            self.seen.update(_read_ids(self.cgroup / "cgroup.threads"))
            self.seen.update(_read_ids(self.cgroup / "cgroup.procs"))
            return
        for pid in self._members():
            self.seen.add(pid)
            self.seen.update(_threads(pid))

    def leftovers(self, settle_s: float = 0.2) -> list[tuple[int, str]]:
        """Processes of the tree still running besides the leader and outside its process group
        (a group killed a moment ago may still be dying): ``(pid, cmdline)``. A process that
        ends by itself within ``settle_s`` (a child the binary killed but did not wait for) is
        not counted."""
        deadline = time.monotonic() + settle_s
        while True:
            self.poll()
            left = [p for p in self._members() if p != self.leader and self._running(p)]
            if not left or time.monotonic() >= deadline:
                return sorted((p, cmdline(p)) for p in left)
            time.sleep(0.02)

    def _running(self, pid: int) -> bool:
        st = proc_stat(pid)
        return st is not None and st.state not in ("Z", "X") and not (self.group_killed and st.pgrp == self.leader)

    def kill_all(self) -> None:
        """SIGKILL everything left in the tree and wait (bounded) until it is gone; reap the
        orphans we adopted as subreaper. The leader is the caller's to reap."""
        deadline = time.monotonic() + KILL_WAIT_S
        targets: dict[int, int] = {}  # pid -> start time: never signal a reused PID
        while True:
            if self.cgroup is not None:
                _write(self.cgroup / "cgroup.kill", "1")
            for pid in self._members() - {self.leader}:
                st = proc_stat(pid)
                if st is not None:
                    targets.setdefault(pid, st.starttime)
            running = False
            for pid, start in targets.items():
                st = proc_stat(pid)
                if st is None or st.starttime != start:
                    continue
                if st.state not in ("Z", "X"):
                    running = True
                    _kill(pid)
                elif st.ppid == os.getpid():
                    _reap(pid)
            if not running or time.monotonic() >= deadline:
                return
            time.sleep(0.01)

    def close(self) -> None:
        """Remove the run's cgroup (once the leader is reaped, it is empty)."""
        if self._procs_fd is not None:
            os.close(self._procs_fd)
            self._procs_fd = None
        if self.cgroup is not None:
            _rmdir(self.cgroup)


def _read_ids(path: Path) -> list[int]:
    try:
        return [int(x) for x in path.read_text().split()]
    except (OSError, ValueError):
        return []


def _write(path: Path, text: str) -> None:
    try:
        path.write_text(text)
    except OSError:
        pass


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _rmdir(path: Path) -> None:
    for _ in range(50):  # a cgroup whose last task is still exiting is busy for a moment
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.01)


def _load_prctl() -> Any:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


#: Looked up once, in the parent: the child between fork and exec must not dlopen (another
#: thread of the parent may have held the loader's lock when it forked). process.py uses it too.
PRCTL = _load_prctl()
_subreaper_lock = threading.Lock()
_subreaper = False


def _become_subreaper() -> None:
    global _subreaper
    with _subreaper_lock:
        if not _subreaper and PRCTL is not None:
            _subreaper = PRCTL(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


def own_cgroup(proc: Path = Path("/proc")) -> Path | None:
    """The cgroup v2 directory this process is in, when ``cgroup.kill`` is there and we may create
    a cgroup beside it (None otherwise: no unified hierarchy, too old a kernel, no permission)."""
    try:
        lines = (proc / "self/cgroup").read_text().splitlines()
        mounts = (proc / "self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    rel = next((ln[3:] for ln in lines if ln.startswith("0::")), None)
    mount = next((ln.split()[4] for ln in mounts if " - cgroup2 " in ln), None)
    if rel is None or mount is None or rel.endswith(" (deleted)"):
        return None
    here = Path(mount) / rel.lstrip("/")
    if not os.access(here, os.W_OK | os.X_OK):
        return None
    return here


def sweep_stale(parent: Path) -> list[str]:
    """Kill and remove our cgroups left by pytest processes that died (a SIGKILLed worker)."""
    done: list[str] = []
    try:
        entries: Iterable[Path] = list(parent.glob(f"{CGROUP_PREFIX}*"))
    except OSError:
        return done
    for path in entries:
        try:
            pid = int(path.name[len(CGROUP_PREFIX):].split("-")[0])
        except ValueError:
            continue
        if pid == os.getpid() or alive(pid) or path.is_symlink() or not path.is_dir():
            continue
        left = _read_ids(path / "cgroup.procs")
        _write(path / "cgroup.kill", "1")
        deadline = time.monotonic() + KILL_WAIT_S
        while _read_ids(path / "cgroup.procs") and time.monotonic() < deadline:
            time.sleep(0.01)
        _rmdir(path)
        if left:
            done.append(f"killed {len(left)} processes left by dead pytest process {pid}")
    return done
