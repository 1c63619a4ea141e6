"""Tracepoint counters through ``perf_event_open(2)``, by ctypes: open, filter, read, close.

A counter is opened on the calling thread (``pid=0, cpu=-1``) with ``inherit=1`` just
before the selftest is forked: the selftest, its vCPU threads and its children inherit it.
Reading the parent's fd sums the live children's counts (``perf_event_read_value`` walks the
event's ``child_list``), so a read while the selftest runs gives its counts so far, and a
child that exited has its counts folded in (``perf_event_exit_task``). This is what
``perf stat`` does for a command, without perf. The fds are close-on-exec: the selftest
never holds them.

The counters of a run form one group (``PERF_FORMAT_GROUP``): one ``read`` of the leader
gives every count at the same instant, so the counts of a stage agree with each other (an
arm64 host's fault classes add up to its guest faults) even while the vCPUs run on.

The system calls sit behind ``Syscalls`` so unit tests can pass a fake kernel.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

PERF_TYPE_TRACEPOINT = 2
PERF_FLAG_FD_CLOEXEC = 1 << 3
#: ``_IOW('$', 6, char *)``
PERF_EVENT_IOC_SET_FILTER = 0x40082406
#: ``struct perf_event_attr`` up to ``config1`` (PERF_ATTR_SIZE_VER0): every kernel takes it.
ATTR_FORMAT = "<IIQQQQQIIQ"
ATTR_SIZE = struct.calcsize(ATTR_FORMAT)
INHERIT = 1 << 1
PERF_FORMAT_GROUP = 1 << 3
#: ``__NR_perf_event_open`` per machine (the generic table's 241 for arm64, riscv, loongarch).
SYSCALL_NR = {"x86_64": 298, "aarch64": 241, "riscv64": 241, "loongarch64": 241, "s390x": 331, "ppc64le": 319}


class CountingError(Exception):
    """Counting is not possible here; the message says why and how to enable it (one line)."""


def tracepoint_attr(event_id: int) -> bytes:
    """A counting (not sampling) tracepoint event, inherited by threads and children, read as a group."""
    return struct.pack(ATTR_FORMAT, PERF_TYPE_TRACEPOINT, ATTR_SIZE, event_id, 0, 0, PERF_FORMAT_GROUP, INHERIT, 0, 0, 0)


class Syscalls(Protocol):
    def open(self, attr: bytes, group_fd: int) -> int:
        """``perf_event_open(attr, 0, -1, group_fd, PERF_FLAG_FD_CLOEXEC)``; raises OSError."""

    def set_filter(self, fd: int, text: str) -> None:
        """``ioctl(fd, PERF_EVENT_IOC_SET_FILTER, text)``; raises OSError."""

    def read(self, fd: int, size: int) -> bytes: ...

    def close(self, fd: int) -> None: ...


class LinuxSyscalls:
    """The real kernel, through libc's ``syscall`` and ``ioctl``."""

    def __init__(self, machine: str | None = None) -> None:
        machine = machine or platform.machine()
        if machine not in SYSCALL_NR:
            raise CountingError(f"counting is not supported on {machine} (no perf_event_open number known)")
        self.nr = SYSCALL_NR[machine]
        self._libc: Any = ctypes.CDLL(None, use_errno=True)

    def open(self, attr: bytes, group_fd: int) -> int:
        buf = ctypes.create_string_buffer(attr, len(attr))
        fd = int(self._libc.syscall(
            ctypes.c_long(self.nr), buf, ctypes.c_int(0), ctypes.c_int(-1), ctypes.c_int(group_fd),
            ctypes.c_ulong(PERF_FLAG_FD_CLOEXEC),
        ))
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        return fd

    def set_filter(self, fd: int, text: str) -> None:
        if self._libc.ioctl(ctypes.c_int(fd), ctypes.c_ulong(PERF_EVENT_IOC_SET_FILTER), ctypes.c_char_p(text.encode())) < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))

    def read(self, fd: int, size: int) -> bytes:
        return os.read(fd, size)

    def close(self, fd: int) -> None:
        os.close(fd)


def paranoid_level(path: str = "/proc/sys/kernel/perf_event_paranoid") -> str:
    try:
        with open(path) as f:
            return f.read(16).strip()
    except OSError:
        return "?"


def refusal(name: str, exc: OSError) -> str:
    """Why opening ``name`` failed, and what to do, in one line."""
    if exc.errno in (errno.EACCES, errno.EPERM):
        return (
            f"perf_event_open refused {name} ({exc.strerror}): kernel.perf_event_paranoid is "
            f"{paranoid_level()}; run as root, or sysctl kernel.perf_event_paranoid=1 (or lower)"
        )
    if exc.errno == errno.ENOENT:
        return f"{name} is gone (its module was reloaded?): start a new session"
    if exc.errno == errno.ENOSYS:
        return "this kernel has no perf events (CONFIG_PERF_EVENTS=n)"
    if exc.errno == errno.EMFILE:
        return f"too many open files to count {name}: count fewer events or raise ulimit -n"
    return f"perf_event_open of {name} failed: {exc.strerror or exc}"


@dataclass(frozen=True)
class CounterSpec:
    """One counter: a tracepoint id, and a perf filter for a class of its events."""

    event_id: int
    filter: str | None = None


class OpenCounters:
    """Counters open on this thread; ``read`` gives the counts so far (children included)."""

    def __init__(self, specs: Mapping[str, CounterSpec], sys: Syscalls) -> None:
        self._sys = sys
        self.fds: dict[str, int] = {}
        try:
            for name, spec in specs.items():
                leader = next(iter(self.fds.values()), -1)
                try:
                    fd = sys.open(tracepoint_attr(spec.event_id), leader)
                except OSError as exc:
                    raise CountingError(refusal(name, exc)) from None
                self.fds[name] = fd
                if spec.filter is not None:
                    try:
                        sys.set_filter(fd, spec.filter)
                    except OSError as exc:
                        raise CountingError(f"the kernel refused the filter of {name} ({spec.filter!r}): {exc.strerror}") from None
        except BaseException:
            self.close()
            raise

    def read(self) -> dict[str, int]:
        """Every count, from one read of the group's leader: ``nr``, then the values in the order
        the counters were opened."""
        if not self.fds:
            return {}
        size = 8 * (len(self.fds) + 1)
        try:
            data = self._sys.read(next(iter(self.fds.values())), size)
        except OSError as exc:
            raise CountingError(f"reading the perf counters failed: {exc.strerror or exc}") from None
        if len(data) != size or struct.unpack_from("<Q", data)[0] != len(self.fds):
            raise CountingError(f"the perf group read gave {len(data)} bytes for {len(self.fds)} counters")
        return dict(zip(self.fds, struct.unpack_from(f"<{len(self.fds)}Q", data, 8)))

    def close(self) -> None:
        for fd in self.fds.values():
            try:
                self._sys.close(fd)
            except OSError:
                pass
        self.fds = {}
