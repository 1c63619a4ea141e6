"""KVM's own per-VM statistics, sampled from debugfs while the selftest's VMs live
(``--kvm-counters vm`` or ``vm:<stat>``).

KVM counts ``remote_tlb_flush``, ``pf_fixed``, ``pages_2m`` ... for every VM at no cost, but
another process cannot open a VM's binary stats fd, and the global files under
``/sys/kernel/debug/kvm/`` sum only the VMs alive at that moment. Each VM has its own
directory there, ``<pid>-<fd>``, named after the thread that created it, which lives as long
as the VM: so a run's VMs are found by their creator's parent chain (the selftest is a child of
this process), and read at each stage's line and every ``SAMPLE_EVERY_S`` from a thread. The
VM's last values are those of the last sample before it went away (KVM removes the directory
first when a VM is destroyed, so what teardown does is never visible).

A read holds the VM (``kvm_debugfs_open`` takes a reference): a VM the selftest closes during a
read is destroyed when the read ends, microseconds later. If the selftest creates its next VM
in that window, with the same fd, KVM finds the name taken, logs ``KVM: debugfs: duplicate
directory`` and gives that VM no directory: its statistics are missing from the counts. Reads
are short (a few bytes, one file at a time) and the periodic sample is every half second, to
keep that window small; it is not zero (the lab's arm64 kernels logged it twice in 24 VMs
with sampling on).

Two kinds of statistic: counts (``remote_tlb_flush``), whose run value is the sum over the
run's VMs of the last value seen and whose stage value is the change since the previous stage;
and levels (``pages_4k``, ``max_mmu_rmap_size``), whose stage value is the level at the stage's
end and whose run value is the highest level seen.

Root on a shared host: debugfs is root's, and only a debugfs mount is read; the ``kvm``
directory, each VM directory and each file are opened without following links, must be
root's and are read a few bytes at a time; at most ``MAX_VMS`` VM directories a sample.
"""

from __future__ import annotations

import os
import re
import stat
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ...host.sysfs import rooted

PREFIX = "vm:"
DEBUGFS = "/sys/kernel/debug"
KVM_DIR = f"{DEBUGFS}/kvm"
MOUNTS = "/proc/self/mounts"
SAMPLE_EVERY_S = 0.5
MAX_VMS = 16
MAX_STAT_BYTES = 32
MAX_DIR_ENTRIES = 4096
#: Who must own debugfs' files (tests set their own uid).
OWNER = 0
#: How far up the parent chain a VM's creator may be from this process (selftest, its child).
MAX_DEPTH = 3
_VM_DIR = re.compile(r"([1-9][0-9]{0,9})-([0-9]{1,10})")
_STAT = re.compile(r"[a-z0-9_]{1,64}")
#: Statistics that are a level (KVM's ICOUNTER and PEAK kinds), not a running count.
_LEVEL = re.compile(r"pages_[0-9a-z]+|max_[a-z0-9_]+|mmu_unsync|nx_lpage_splits|[a-z_]*_current")

#: The ``vm`` set: what a cover letter quotes (the issue's ``remote_tlb_flush (requests)``).
SETS: Mapping[str, tuple[str, ...]] = {
    "x86_64": (
        "remote_tlb_flush", "remote_tlb_flush_requests", "pf_taken", "pf_fixed", "pf_fast", "pf_spurious",
        "pf_emulate", "pf_mmio_spte_created", "mmu_shadow_zapped", "mmu_cache_miss", "mmu_flooded",
        "mmu_recycled", "exits", "pages_4k", "pages_2m", "pages_1g", "nx_lpage_splits", "max_mmu_rmap_size",
    ),
    "aarch64": (
        "remote_tlb_flush", "remote_tlb_flush_requests", "exits", "mmio_exit_user", "mmio_exit_kernel",
        "hvc_exit_stat", "wfe_exit_stat", "wfi_exit_stat", "signal_exits",
    ),
}


def is_level(name: str) -> bool:
    return bool(_LEVEL.fullmatch(name.removeprefix(PREFIX)))


def wanted(selection: Sequence[str], arch: str) -> tuple[list[str], list[str]]:
    """(``vm:`` names the selection asks for, in order; the rest of the selection)."""
    names: list[str] = []
    rest: list[str] = []
    for item in selection:
        if item == "vm":
            names += [PREFIX + s for s in SETS.get(arch, ())]
        elif item.startswith(PREFIX):
            names.append(item)
        else:
            rest.append(item)
    return list(dict.fromkeys(names)), rest


def valid_stat(item: str) -> bool:
    return item.startswith(PREFIX) and bool(_STAT.fullmatch(item[len(PREFIX):]))


def _debugfs_mounted(root: Path) -> bool:
    try:
        with rooted(root, MOUNTS).open(errors="replace") as f:
            text = f.read(1 << 20)
    except OSError:
        return False
    return any(len(p) >= 3 and p[1] == DEBUGFS and p[2] == "debugfs" for p in (line.split() for line in text.splitlines()))


def find_kvm_dir(root: Path, euid: int | None = None) -> tuple[Path | None, str]:
    """The ``kvm`` directory of a mounted debugfs, or why there is none and how to get one."""
    if (os.geteuid() if euid is None else euid) != 0:
        return None, "per-VM stats off: debugfs is root's (run as root)"
    if not _debugfs_mounted(root):
        return None, f"per-VM stats off: debugfs is not mounted (mount -t debugfs none {DEBUGFS})"
    path = rooted(root, KVM_DIR)
    try:
        st = os.lstat(path)
    except OSError:
        return None, f"per-VM stats off: no {KVM_DIR} (is KVM loaded?)"
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != OWNER or st.st_mode & 0o022:
        return None, f"per-VM stats off: {KVM_DIR} is not a directory of root's that only root can write"
    return path, ""


@dataclass(frozen=True)
class Offered:
    """Which of the wanted statistics this kernel offers and lets us read."""

    names: tuple[str, ...]
    missing: tuple[str, ...] = ()
    #: Refused by the kernel's lockdown (writable debugfs files are; read-only ones are not).
    locked: tuple[str, ...] = ()

    def note(self) -> str:
        notes = []
        if self.missing:
            notes.append(f"per-VM stats not in this kernel: {', '.join(self.missing)}")
        if self.locked:
            notes.append(
                f"per-VM stats refused by the kernel's lockdown (debugfs files that can be written): "
                f"{', '.join(n.removeprefix(PREFIX) for n in self.locked)}"
            )
        return "; ".join(notes)


def offered(kvm_dir: Path, names: Sequence[str]) -> Offered:
    """Each VM's directory has the files of the global ones in ``kvm/``: what is missing there is
    not in this kernel. Under lockdown the kernel refuses every debugfs file that can be written
    (and logs each refusal), so one writable file is tried, once, and if it is refused all
    writable ones are left out rather than tried at every sample."""
    ok: list[str] = []
    missing: list[str] = []
    writable: list[str] = []
    for name in names:
        try:
            st = os.lstat(kvm_dir / name.removeprefix(PREFIX))
        except OSError:
            missing.append(name)
            continue
        if not stat.S_ISREG(st.st_mode):
            missing.append(name)
        elif st.st_mode & 0o222:
            writable.append(name)
        else:
            ok.append(name)
    locked: list[str] = []
    if writable:
        try:
            os.close(os.open(kvm_dir / writable[0].removeprefix(PREFIX), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC))
        except PermissionError:
            locked = writable
        except OSError:
            pass
    ok += [n for n in writable if n not in locked]
    return Offered(tuple(n for n in names if n in ok), tuple(missing), tuple(locked))


def read_stat(dir_fd: int, name: str, owner: int) -> int | None:
    """One statistic: a root-owned regular file holding a number (bounded read, no links)."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != owner:
            return None
        raw = os.read(fd, MAX_STAT_BYTES)
    except OSError:
        return None
    finally:
        os.close(fd)
    text = raw.decode("ascii", errors="replace").strip()
    return int(text) if text.isdigit() else None


def read_vm(kvm_dir: Path, entry: str, names: Iterable[str], owner: int) -> tuple[int, dict[str, int]] | None:
    """The statistics of VM directory ``entry`` and the directory's inode (None when it is gone
    or not root's). The name is not the VM: a selftest that frees a VM and creates the next
    (a guest mode each) gets the same ``<pid>-<fd>``; debugfs gives each directory its own inode."""
    try:
        dir_fd = os.open(kvm_dir / entry, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(dir_fd)
        if st.st_uid != owner or st.st_mode & 0o022:
            return None
        out = {}
        for name in names:
            value = read_stat(dir_fd, name.removeprefix(PREFIX), owner)
            if value is not None:
                out[name] = value
        return st.st_ino, out
    finally:
        os.close(dir_fd)


def parent_of(pid: int, proc: Path = Path("/proc")) -> int | None:
    """The parent of ``pid`` (a thread's is its process's), from ``/proc/PID/stat``."""
    try:
        with (proc / str(pid) / "stat").open("rb") as f:
            raw = f.read(1024)
    except OSError:
        return None
    fields = raw.rpartition(b")")[2].split()
    return int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else None


@dataclass
class VmSampler:
    """The VMs of one run: sampled at each stage's line and every ``SAMPLE_EVERY_S``."""

    kvm_dir: Path
    names: tuple[str, ...]
    me: int = field(default_factory=os.getpid)
    owner: int = field(default_factory=lambda: OWNER)
    parent: Callable[[int], int | None] = parent_of
    #: ``<pid>-<fd>#<inode>`` (one VM) -> its last values (VMs that went away keep theirs).
    last: dict[str, dict[str, int]] = field(default_factory=dict)
    peaks: dict[str, int] = field(default_factory=dict)
    _ours: dict[str, bool] = field(default_factory=dict)
    _live: set[str] = field(default_factory=set)
    _prev: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _is_ours(self, entry: str) -> bool:
        """Whether this process is among the first ``MAX_DEPTH`` ancestors of the VM's creator
        (decided once per directory: its name is unique while the VM lives)."""
        if entry in self._ours:
            return self._ours[entry]
        m = _VM_DIR.fullmatch(entry)
        pid: int | None = int(m.group(1)) if m else None
        found = False
        for _ in range(MAX_DEPTH):
            pid = self.parent(pid) if pid is not None else None
            if pid is None or pid <= 1:
                break
            if pid == self.me:
                found = True
                break
        if len(self._ours) >= MAX_DIR_ENTRIES:  # bounded: many other users' VMs come and go
            self._ours.clear()
        self._ours[entry] = found
        return found

    def sample(self) -> None:
        """Read every VM of ours that lives now."""
        try:
            with os.scandir(self.kvm_dir) as it:
                entries = [e.name for _, e in zip(range(MAX_DIR_ENTRIES), it) if _VM_DIR.fullmatch(e.name)]
        except OSError:
            return
        with self._lock:
            live: set[str] = set()
            for entry in [e for e in sorted(entries) if self._is_ours(e)][:MAX_VMS]:
                found = read_vm(self.kvm_dir, entry, self.names, self.owner)
                if found is None:
                    continue
                vm, values = f"{entry}#{found[0]}", found[1]
                # A VM being destroyed still has its directory, but its files refuse to open
                # (or some do): what was read before stands, and counts never go back.
                old = self.last.get(vm, {})
                self.last[vm] = {**old, **{k: v if is_level(k) else max(v, old.get(k, 0)) for k, v in values.items()}}
                if values:
                    live.add(vm)
            self._live = live
            for name in self.names:
                if is_level(name):
                    level = sum(self.last[e].get(name, 0) for e in live)
                    if any(name in self.last[e] for e in live):
                        self.peaks[name] = max(self.peaks.get(name, 0), level)

    def _counts(self) -> dict[str, int]:
        """Counts: the sum over the run's VMs of their last values; levels: the live VMs' now."""
        out: dict[str, int] = {}
        for name in self.names:
            if not any(name in v for v in self.last.values()):
                continue
            vms = self._live if is_level(name) else self.last.keys()
            out[name] = sum(self.last[e].get(name, 0) for e in vms)
        return out

    def stage(self) -> dict[str, int]:
        """A stage ends: its counts since the previous stage, and its levels now."""
        self.sample()
        with self._lock:
            now = self._counts()
            out = {k: v if is_level(k) else v - self._prev.get(k, 0) for k, v in now.items()}
            self._prev = {k: v for k, v in now.items() if not is_level(k)}
        return out

    def total(self) -> dict[str, int]:
        """The run: counts summed over its VMs, levels at their highest."""
        with self._lock:
            now = self._counts()
            return {k: self.peaks.get(k, 0) if is_level(k) else v for k, v in now.items()}

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="kvmmm-vmstats", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY_S):
            self.sample()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
