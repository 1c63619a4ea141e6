"""Run one selftest binary safely: own process group, hard timeout, bounded output.

Knows nothing of pytest or of what the output means (that is ``outcome.py``): it only
guarantees that the binary and everything it forked are gone when ``run`` returns, and
that whatever the binary printed until then is kept, even on a timeout.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import selectors
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import proctree
from .held_signals import HeldSignals

#: Output kept per stream. A binary that prints megabytes keeps its head and its tail:
#: the assertion block and the metrics are at the end, the banner at the start.
DEFAULT_OUTPUT_LIMIT = 1 << 20
#: After SIGTERM to the group, how long before SIGKILL.
KILL_GRACE_S = 1.0
#: How often the pump looks whether the leader exited while its pipes stay open.
_POLL_S = 0.05
#: Longest line handed to an ``on_line`` hook.
MAX_TAPPED_LINE = 4096


@dataclass(frozen=True)
class ProcessResult:
    """What happened to one process (group). ``returncode`` is negative for a signal, as in subprocess."""

    argv: tuple[str, ...]
    returncode: int | None
    stdout: str
    stderr: str
    duration_s: float
    timed_out: bool = False
    start_error: str | None = None
    truncated: bool = False
    started_at: float = 0.0
    #: Processes the binary left running when it exited (or outside its group on a timeout),
    #: as ``"PID CMDLINE"``; all of them were killed.
    left_behind: tuple[str, ...] = ()
    #: Every process and thread id seen in the selftest's tree (the kernel log names threads).
    pids: frozenset[int] = frozenset()

    @property
    def signal(self) -> signal.Signals | None:
        if self.returncode is None or self.returncode >= 0:
            return None
        try:
            return signal.Signals(-self.returncode)
        except ValueError:
            return None


class _Capture:
    """Bytes of one stream, keeping the first and the last ``limit/2`` bytes when it overflows."""

    def __init__(self, limit: int) -> None:
        self.half = max(limit // 2, 1)
        self.head = bytearray()
        self.tail = bytearray()
        self.dropped = 0

    def feed(self, data: bytes) -> None:
        room = self.half - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if data:
            self.tail += data
            excess = len(self.tail) - self.half
            if excess > 0:
                del self.tail[:excess]
                self.dropped += excess

    def text(self) -> str:
        middle = b""
        if self.dropped:
            middle = f"\n[... pytest-kvmmm dropped {self.dropped} bytes of output ...]\n".encode()
        return (bytes(self.head) + middle + bytes(self.tail)).decode("utf-8", errors="replace")


class _LineTap(_Capture):
    """A capture that also hands each complete line to ``on_line`` as it arrives (counters read
    at a stage's line). A line longer than ``MAX_TAPPED_LINE`` is cut; a callback that raises
    is dropped, never the run."""

    def __init__(self, limit: int, on_line: Callable[[str], None]) -> None:
        super().__init__(limit)
        self.on_line: Callable[[str], None] | None = on_line
        self.partial = bytearray()

    def feed(self, data: bytes) -> None:
        super().feed(data)
        if self.on_line is None:
            return
        self.partial += data
        *lines, rest = self.partial.split(b"\n")
        self.partial = bytearray(rest[-MAX_TAPPED_LINE:])
        for line in lines:
            try:
                self.on_line(line[:MAX_TAPPED_LINE].decode("utf-8", errors="replace"))
            except Exception:  # a bug in a hook must not kill the selftest
                self.on_line = None
                return


def _kill_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:  # a setuid child we may not signal: nothing more we can do
        pass


def _pump(
    proc: subprocess.Popen[bytes],
    captures: dict[int, _Capture],
    deadline: float | None,
    until_exit: bool = True,
    poll: Callable[[], None] | None = None,
) -> bool:
    """Read both pipes until EOF on both, or the deadline. Returns True when the deadline hit.

    With ``until_exit``, the leader's exit also ends the wait: a child that inherited the
    pipes must not keep a finished selftest "running". The caller then kills the group
    and drains what is left with ``until_exit=False`` and a short deadline.
    """
    sel = selectors.DefaultSelector()
    for fd in captures:
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ)
    try:
        while sel.get_map():
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return True
            if poll is not None:
                poll()
            if until_exit and _exited(proc.pid, now):
                return False
            wait = _POLL_S if deadline is None else min(_POLL_S, deadline - now)
            for key, _ in sel.select(wait):
                try:
                    data = os.read(key.fd, 65536)
                except BlockingIOError:
                    continue
                if data:
                    captures[key.fd].feed(data)
                else:
                    sel.unregister(key.fd)
        return False
    finally:
        sel.close()


def _die_with_parent(
    mask: set[int | signal.Signals] | None = None, tree: proctree.ProcessTree | None = None
) -> None:
    """In the child before exec: SIGKILL it when the process that started it dies, and give it
    back the signal mask the parent had (``run`` holds SIGINT back around the start).

    The selftest runs in its own session, so a SIGKILLed pytest (or xdist worker) would
    otherwise leave it running as an orphan, holding guest memory and hugetlb pages.
    """
    if proctree.PRCTL is not None:
        proctree.PRCTL(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    if tree is not None:
        tree.join()
    if mask is not None:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def _exited(pid: int, deadline: float | None) -> bool:
    """Wait until ``pid`` exited, without reaping it. False when the deadline came first."""
    while True:
        try:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT | os.WNOHANG) is not None:
                return True
        except ChildProcessError:
            return True
        if deadline is not None and time.monotonic() >= deadline:
            return False
        time.sleep(0.002)


_cgroup_lock = threading.Lock()
#: Where this process creates a cgroup per selftest (resolved on first use; None: subreaper).
_cgroup_parent: Path | None | bool = False
#: The trees of selftests running now, by thread: ``kill_running`` ends them from elsewhere.
_running: dict[int, proctree.ProcessTree] = {}


def _new_tree() -> proctree.ProcessTree:
    global _cgroup_parent
    with _cgroup_lock:
        if _cgroup_parent is False:
            _cgroup_parent = proctree.own_cgroup()
            if _cgroup_parent is not None:
                proctree.sweep_stale(_cgroup_parent)
        parent = _cgroup_parent
    return proctree.ProcessTree(parent if isinstance(parent, Path) else None)


def _no_cgroup() -> None:
    """The child could not join its cgroup: track by subreaper from now on."""
    global _cgroup_parent
    with _cgroup_lock:
        _cgroup_parent = None


def kill_running() -> None:
    """Kill every selftest this process runs now, with all it started (pytest-timeout's thread
    method ends the process with ``os._exit``: nothing would kill them after that)."""
    for tree in list(_running.values()):
        if tree.leader is not None:
            _kill_group(tree.leader, signal.SIGKILL)
        tree.kill_all()
        if tree.leader is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(tree.leader, signal.SIGKILL)


def _start(
    argv: tuple[str, ...], cwd: Path | None, env: Mapping[str, str] | None,
    mask: set[int | signal.Signals] | None,
) -> tuple[subprocess.Popen[bytes], proctree.ProcessTree]:
    """Start the binary in its own session and process tree (cgroup, else subreaper)."""
    tree = _new_tree()
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
            env=tree.env(env),
            start_new_session=True,
            preexec_fn=functools.partial(_die_with_parent, mask, tree),
        )
    except subprocess.SubprocessError:  # the cgroup refused the child (delegation, nesting)
        tree.close()
        if tree.cgroup is None:
            raise
        _no_cgroup()
        return _start(argv, cwd, env, mask)
    except BaseException:
        tree.close()
        raise
    try:
        tree.started(proc.pid)
    except BaseException:  # a Ctrl-C delivered to another thread lands in ours at any bytecode
        _end(proc, tree)
        raise
    return proc, tree


def run(
    argv: Sequence[str],
    *,
    timeout: float | None,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    output_limit: int = DEFAULT_OUTPUT_LIMIT,
    on_line: Callable[[str], None] | None = None,
) -> ProcessResult:
    """Run ``argv`` (no shell) in a new session and wait at most ``timeout`` seconds.

    On timeout the whole process group gets SIGTERM, then SIGKILL after a short grace,
    so threads and children of the selftest (vCPU threads, uffd handlers) die with it.
    Whatever the binary started and left running (a ``setsid`` child, a daemon) is found
    through its process tree, killed, and reported in ``left_behind``.
    A binary that cannot be started gives ``start_error`` instead of an exception.
    ``on_line`` gets each stdout line as it arrives (without its newline).
    """
    argv = tuple(str(a) for a in argv)
    started_at = time.time()
    t0 = time.monotonic()
    launched = _launch(argv, cwd, env)
    if isinstance(launched, str):
        return ProcessResult(argv, None, "", "", time.monotonic() - t0, start_error=launched, started_at=started_at)
    proc, tree = launched
    assert proc.stdout is not None and proc.stderr is not None
    out = _Capture(output_limit) if on_line is None else _LineTap(output_limit, on_line)
    err = _Capture(output_limit)
    captures = {proc.stdout.fileno(): out, proc.stderr.fileno(): err}
    try:
        timed_out, left = _wait(proc, tree, captures, None if timeout is None else t0 + timeout)
    except BaseException:
        # Ctrl-C or any error while waiting: never leave the selftest running behind us.
        _end(proc, tree)
        raise
    finally:
        _running.pop(threading.get_ident(), None)
        tree.close()
        proc.stdout.close()
        proc.stderr.close()

    return ProcessResult(
        argv=argv,
        returncode=proc.returncode,
        stdout=out.text(),
        stderr=err.text(),
        duration_s=time.monotonic() - t0,
        timed_out=timed_out,
        truncated=bool(out.dropped or err.dropped),
        started_at=started_at,
        left_behind=tuple(f"{pid} {cmd}" for pid, cmd in left),
        pids=frozenset(tree.seen),
    )


def _launch(
    argv: tuple[str, ...], cwd: Path | None, env: Mapping[str, str] | None
) -> tuple[subprocess.Popen[bytes], proctree.ProcessTree] | str:
    """Start the binary with SIGINT held back until its tree is registered in ``_running`` (so a
    Ctrl-C can always kill it); returns why it could not start instead of raising OSError."""
    held = HeldSignals().hold()
    try:
        try:
            proc, tree = _start(argv, cwd, env, held.mask)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            if exc.errno == errno.ENOEXEC:
                reason = "not an executable this machine can run (wrong architecture or a broken file)"
            return f"cannot start {argv[0]}: {reason}"
        try:
            _running[threading.get_ident()] = tree
            held.release()  # a Ctrl-C held back is raised here, where the child can be killed
        except BaseException:
            _end(proc, tree)
            raise
    finally:
        held.release()
    return proc, tree


def _wait(
    proc: subprocess.Popen[bytes], tree: proctree.ProcessTree, captures: dict[int, _Capture], deadline: float | None
) -> tuple[bool, list[tuple[int, str]]]:
    """Pump the output until the binary exits or the deadline (then SIGTERM, SIGKILL to its
    group), kill what it left running, reap it. Returns whether it timed out, and what it left."""
    timed_out = _pump(proc, captures, deadline, poll=functools.partial(tree.poll, proctree.POLL_EVERY_S))
    if not timed_out:
        # Pipes may have closed early (the binary closed its stdio): wait for the exit.
        timed_out = not _exited(proc.pid, deadline)
    if timed_out:
        _kill_group(proc.pid, signal.SIGTERM)
        _exited(proc.pid, time.monotonic() + KILL_GRACE_S)
        _kill_group(proc.pid, signal.SIGKILL)
        tree.group_killed = True
        _exited(proc.pid, time.monotonic() + KILL_GRACE_S)
    # The leader exited (and is not yet reaped, so its pgid cannot be reused). What is still
    # running now was left behind (on a timeout: what escaped the group); then nothing of
    # the tree may outlive it. Take what it still flushed, briefly: a grandchild that left
    # the group could hold the pipes.
    left = tree.leftovers()
    _kill_group(proc.pid, signal.SIGKILL)
    tree.kill_all()
    _pump(proc, captures, time.monotonic() + 0.5, until_exit=False)
    proc.wait()
    return timed_out, left


def _end(proc: subprocess.Popen[bytes], tree: proctree.ProcessTree) -> None:
    """Kill the selftest, its group and its tree, and reap it (interrupt or error)."""
    _kill_group(proc.pid, signal.SIGKILL)
    tree.kill_all()
    proc.wait()
    _running.pop(threading.get_ident(), None)
    tree.close()
