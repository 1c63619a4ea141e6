"""A fake tracefs and a fake perf kernel for the counter tests."""

from __future__ import annotations

import errno
import struct
from collections.abc import Mapping
from pathlib import Path

from pytest_kvmmm.engine.counters.perf import ATTR_FORMAT

#: Events of a PVM x86 host (a subset), with ids.
X86_EVENTS = {
    "kvm:kvm_page_fault": 101, "kvm:kvm_exit": 103, "kvm:kvm_emulate_insn": 104, "kvm:kvm_userspace_exit": 105,
    "kvmmmu:kvm_mmu_pagetable_walk": 133, "kvmmmu:kvm_mmu_paging_element": 134,
    "kvmmmu:kvm_mmu_prepare_zap_page": 140, "tlb:tlb_flush": 200,
}
ARM64_EVENTS = {"kvm:kvm_guest_fault": 301, "kvm:kvm_exit": 302, "kvm:kvm_access_fault": 303, "kvm:kvm_userspace_exit": 304}
GUEST_FAULT_FORMAT = (
    "name: kvm_guest_fault\nID: 301\nformat:\n\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\n"
    "\tfield:unsigned long vcpu_pc;\toffset:8;\tsize:8;\tsigned:0;\n"
    "\tfield:unsigned long hsr;\toffset:16;\tsize:8;\tsigned:0;\n"
    "\tfield:unsigned long hxfar;\toffset:24;\tsize:8;\tsigned:0;\n"
    "\tfield:unsigned long long ipa;\toffset:32;\tsize:8;\tsigned:0;\n"
)


def make_tracefs(root: Path, events: Mapping[str, int], *, mounted: str | None = "/sys/kernel/tracing") -> Path:
    """A host root whose tracefs (mounted at ``mounted``, or not at all) offers ``events``."""
    where = (mounted or "/sys/kernel/tracing").lstrip("/")
    for name, event_id in events.items():
        subsys, event = name.split(":")
        d = root / where / "events" / subsys / event
        d.mkdir(parents=True, exist_ok=True)
        (d / "id").write_text(f"{event_id}\n")
        if name == "kvm:kvm_guest_fault":
            (d / "format").write_text(GUEST_FAULT_FORMAT)
    mounts = root / "proc/self/mounts"
    mounts.parent.mkdir(parents=True, exist_ok=True)
    lines = ["sysfs /sys sysfs rw 0 0"]
    if mounted:
        lines.append(f"nodev {mounted} tracefs rw,relatime 0 0")
    mounts.write_text("\n".join(lines) + "\n")
    return root


class FakePerf:
    """A perf kernel: each counter counts ``step`` events per read (its id times the number of reads)."""

    def __init__(self, refuse: int | None = None, refuse_after: int = 0, bad_filter: bool = False) -> None:
        self.refuse, self.refuse_after, self.bad_filter = refuse, refuse_after, bad_filter
        self.opened: dict[int, tuple[int, ...]] = {}
        self.filters: dict[int, str] = {}
        self.reads: dict[int, int] = {}
        self.closed: list[int] = []
        #: fd -> its group's leader
        self.groups: dict[int, int] = {}
        #: The next reads that fail with ECHILD (a new thread's inherited group not set up yet).
        self.fail_reads = 0
        self._next = 100

    def open(self, attr: bytes, group_fd: int) -> int:
        if self.refuse is not None and len(self.opened) >= self.refuse_after:
            raise OSError(self.refuse, "refused")
        self._next += 1
        self.opened[self._next] = struct.unpack(ATTR_FORMAT, attr)
        self.groups[self._next] = self._next if group_fd == -1 else group_fd
        return self._next

    def set_filter(self, fd: int, text: str) -> None:
        if self.bad_filter:
            raise OSError(errno.EINVAL, "Invalid argument")
        self.filters[fd] = text

    def read(self, fd: int, size: int) -> bytes:
        """The group of leader ``fd`` (PERF_FORMAT_GROUP): nr, then each member's count."""
        assert self.groups[fd] == fd, "a group is read through its leader"
        if self.fail_reads:
            self.fail_reads -= 1
            raise OSError(errno.ECHILD, "No child processes")
        self.reads[fd] = self.reads.get(fd, 0) + 1
        members = [m for m, leader in self.groups.items() if leader == fd]
        values = [self.reads[fd] * self.opened[m][2] for m in members]  # config = the event id
        return struct.pack(f"<{len(values) + 1}Q", len(values), *values)[:size]

    def close(self, fd: int) -> None:
        self.closed.append(fd)

    @property
    def open_fds(self) -> set[int]:
        return set(self.opened) - set(self.closed)
