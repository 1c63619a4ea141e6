"""Kernel health around each selftest: the kernel log lines written during the run, and new taints.

A selftest can pass while the kernel complains (a WARN in the MMU, an RCU stall, a KVM
internal error); those complaints are the bugs a KVM developer is hunting. The watch keeps
``/dev/kmsg`` open: before each run it reads, without blocking, and drops whatever the
kernel logged so far, after the run it reads the records written since; and it reads
``/proc/sys/kernel/tainted`` before and after.

``classify_lines`` is pure: lines in, complaints out. ``KernelWatch`` does the I/O and turns
itself off, with one reason, when the log cannot be read (non-root with dmesg_restrict).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..host.kmsg import read_kmsg_records

#: What makes a kernel line a complaint, and the name it is reported under.
COMPLAINTS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("WARN", re.compile(r"WARNING: (?:CPU: \d+ PID: \d+ at|at) |------------\[ cut here \]------------")),
    ("BUG", re.compile(r"\bBUG: |kernel BUG at ")),
    ("Oops", re.compile(r"\bOops\b|general protection fault|Unable to handle kernel")),
    ("soft lockup", re.compile(r"soft lockup|hard LOCKUP")),
    ("RCU stall", re.compile(r"rcu: INFO: rcu_\w+ (?:self-)?detected stall|rcu_sched self-detected stall")),
    ("hung task", re.compile(r"blocked for more than \d+ seconds")),
    ("KVM internal error", re.compile(r"INTERNAL_ERROR|KVM internal error|kvm: .*emulation failure")),
)
#: Taint flag letters, bit by bit (Documentation/admin-guide/tainted-kernels.rst).
TAINT_LETTERS = "PFSRMBUDAWCIOELKXTN"


@dataclass(frozen=True)
class KernelLine:
    seq: int
    level: int
    text: str


@dataclass(frozen=True)
class Health:
    """What the kernel said during one run."""

    lines: tuple[KernelLine, ...] = ()
    complaints: tuple[tuple[str, str], ...] = ()  # (kind, line)
    new_taint: int = 0
    #: Complaints matching the user's known-noise patterns: reported, never failing.
    noise: tuple[str, ...] = ()

    @property
    def bad(self) -> bool:
        return bool(self.complaints or self.new_taint)

    def summary(self) -> str:
        parts = []
        if self.complaints:
            kinds = sorted({k for k, _ in self.complaints})
            parts.append(f"the kernel logged {', '.join(kinds)} during the run")
        if self.new_taint:
            parts.append(f"the kernel became tainted ({taint_flags(self.new_taint)}, {self.new_taint:#x})")
        return "; ".join(parts)

    def report(self) -> str:
        """The complaint lines, one per line, for the failure text (Allure's categories match on them)."""
        return "\n".join(line for _, line in self.complaints)


def taint_flags(mask: int) -> str:
    return "".join(letter for bit, letter in enumerate(TAINT_LETTERS) if mask & (1 << bit)) or "-"


def parse_kmsg_record(record: str) -> KernelLine | None:
    """``"6,1254,4308724192,-;kvm-pvm: INTERNAL_ERROR ...\\n KEY=value"`` -> the line (None if malformed)."""
    head, sep, body = record.partition(";")
    if not sep:
        return None
    fields = head.split(",")
    try:
        prio, seq = int(fields[0]), int(fields[1])
    except (ValueError, IndexError):
        return None
    text = body.split("\n", 1)[0]  # continuation lines (" SUBSYSTEM=...") are metadata
    return KernelLine(seq, prio & 7, text)


def split_records(chunk: str) -> list[str]:
    """The records in one read: ``/dev/kmsg`` gives one per read, a log file (``KVMMM_KMSG``)
    many; a record's continuation lines (`` KEY=value``) start with a space."""
    records: list[str] = []
    for line in chunk.split("\n"):
        if line.startswith(" ") and records:
            records[-1] += "\n" + line
        elif line:
            records.append(line)
    return records


def classify_lines(lines: Sequence[KernelLine], noise: Sequence[re.Pattern[str]] = ()) -> Health:
    complaints = []
    ignored = []
    for line in lines:
        for kind, pattern in COMPLAINTS:
            if pattern.search(line.text):
                if any(n.search(line.text) for n in noise):
                    ignored.append(line.text)
                else:
                    complaints.append((kind, line.text))
                break
    return Health(tuple(lines), tuple(complaints), 0, tuple(ignored))


@dataclass
class KernelWatch:
    """Reads the kernel log and taint around runs. ``reason`` is set when it cannot watch."""

    kmsg: Path = Path("/dev/kmsg")
    tainted: Path = Path("/proc/sys/kernel/tainted")
    noise: Sequence[re.Pattern[str]] = ()
    reason: str | None = None
    _fd: int | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        try:
            self._fd = os.open(self.kmsg, os.O_RDONLY | os.O_NONBLOCK)
            os.lseek(self._fd, 0, os.SEEK_END)  # from now on; older lines are another run's
        except OSError as exc:
            self.reason = f"cannot read {self.kmsg}: {exc.strerror or exc} (run as root, or sysctl kernel.dmesg_restrict=0)"
            self._fd = None

    @property
    def active(self) -> bool:
        return self._fd is not None

    def _taint(self) -> int:
        try:
            return int(self.tainted.read_text().strip() or 0)
        except (OSError, ValueError):
            return 0

    def _drain(self) -> list[KernelLine]:
        assert self._fd is not None
        records = (rec for chunk in read_kmsg_records(self._fd) for rec in split_records(chunk))
        parsed = (parse_kmsg_record(record) for record in records)
        return [line for line in parsed if line is not None]

    def start(self) -> int:
        """Before a run: skip what the kernel logged so far; return the taint mask."""
        if self._fd is not None:
            self._drain()
        return self._taint()

    def finish(self, taint_before: int) -> Health:
        """After a run: the lines written since ``start`` and the taints that appeared."""
        if self._fd is None:
            return Health()
        health = classify_lines(self._drain(), self.noise)
        new = self._taint() & ~taint_before
        return Health(health.lines, health.complaints, new, health.noise)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
