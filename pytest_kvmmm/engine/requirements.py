"""Host requirements of a case, checked against ``HostFacts`` before the binary runs.

Each requirement answers ``unmet(host)`` with None (satisfied) or one sentence that names
what is missing and how to get it; that sentence is the skip reason. A requirement that also
depends on what the binary was built to do has ``for_binary(path)`` (``specialise``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..host.model import HostFacts
from .build_features import has_mglru_aging


class Requirement(Protocol):
    def unmet(self, host: HostFacts) -> str | None:
        """None when the host satisfies it, else the skip reason."""


def human_size_kb(kb: int) -> str:
    for unit, factor in (("GiB", 1024 * 1024), ("MiB", 1024)):
        if kb >= factor and kb % factor == 0:
            return f"{kb // factor} {unit}"
    return f"{kb} KiB"


@dataclass(frozen=True)
class HugetlbPages:
    """``pages`` free hugetlb pages of ``size_kb`` (None: the host's default size, unknown)."""

    size_kb: int | None
    pages: int
    why: str = ""

    def unmet(self, host: HostFacts) -> str | None:
        purpose = f" for {self.why}" if self.why else ""
        if self.size_kb is None:
            reason = host.unknown.get("meminfo", "no Hugepagesize in /proc/meminfo")
            return f"cannot tell the default hugetlb page size{purpose}: {reason}"
        size = human_size_kb(self.size_kb)
        wanted = f"{self.pages} free {size} hugepage{'s' if self.pages != 1 else ''}{purpose}"
        pool = host.hugetlb_pool(self.size_kb)
        if pool is None:
            why = host.unknown.get(f"hugetlb.hugepages-{self.size_kb}kB") or host.unknown.get("hugetlb")
            if why:
                return f"needs {wanted}, but the {size} hugetlb pool cannot be read: {why}"
            return (
                f"needs {wanted}, but this host has no {size} hugetlb pool "
                "(the CPU or kernel does not offer that page size)"
            )
        if pool.usable >= self.pages:
            return None
        target = pool.nr + self.pages - pool.usable
        how = f"echo {target} > {pool.nr_path}"
        if pool.writable:
            how += " (or let pytest do it and undo it: --kvm-allow-host-changes)"
        if self.size_kb >= 1024 * 1024:
            how += f" (1 GiB pages may need booting with hugepagesz=1G hugepages={target})"
        return f"needs {wanted}, pool has {pool.usable} (nr={pool.nr} free={pool.free} resv={pool.resv}): {how}"


@dataclass(frozen=True)
class ThpMadvise:
    """Transparent hugepages usable through ``madvise(MADV_HUGEPAGE)`` (enabled = always or madvise)."""

    def unmet(self, host: HostFacts) -> str | None:
        enabled = host.thp.enabled
        if enabled is None:
            reason = host.unknown.get("thp.enabled", "unknown")
            return f"needs transparent hugepages, but THP is not available: {reason}"
        if host.thp.usable_for_madvise:
            return None
        return (
            f"needs transparent hugepages, THP is '{enabled}': "
            "echo madvise > /sys/kernel/mm/transparent_hugepage/enabled (or --kvm-allow-host-changes)"
        )


@dataclass(frozen=True)
class KvmUsable:
    """``/dev/kvm`` opens read-write: without it no selftest can run."""

    def unmet(self, host: HostFacts) -> str | None:
        if host.kvm.available:
            return None
        return f"needs a usable /dev/kvm: {host.kvm.unavailable_reason or 'unknown'}"


@dataclass(frozen=True)
class Arch:
    """The host's ``uname -m`` is one of ``machines`` (arch-specific selftests)."""

    machines: tuple[str, ...]

    def unmet(self, host: HostFacts) -> str | None:
        if host.machine in self.machines or (host.machine == "arm64" and "aarch64" in self.machines):
            return None
        return f"needs a {' or '.join(self.machines)} host, this one is {host.machine or 'unknown'}"


@dataclass(frozen=True)
class IdleTracking:
    """Idle page tracking (page_idle, up to 6.15 selftests) or MGLRU (6.16+), as access_tracking_perf_test needs.

    Which one a run can use depends on the build too: a 6.15 or older binary has no MGLRU path,
    so on a host with MGLRU but no page_idle it would skip. ``for_binary`` looks for it.
    """

    page_idle: bool = True
    mglru: bool = True
    #: Whether the binary has the MGLRU path (its strings say ``lru_gen``); None: not looked at.
    build_has_mglru: bool | None = None

    def for_binary(self, path: Path) -> IdleTracking:
        return dataclasses.replace(self, build_has_mglru=has_mglru_aging(path))

    def unmet(self, host: HostFacts) -> str | None:
        mglru = self.mglru and self.build_has_mglru is not False
        if (self.page_idle and host.page_idle) or (mglru and host.mglru.usable_for_aging):
            return None
        wanted = []
        if self.page_idle:
            wanted.append(
                "idle page tracking (/sys/kernel/mm/page_idle/bitmap: a kernel with CONFIG_IDLE_PAGE_TRACKING, run as root)"
            )
        if mglru:
            mask = host.mglru.enabled_mask
            now = "absent" if mask is None else f"{mask:#x}"
            wanted.append(f"MGLRU with bits 0x3 in /sys/kernel/mm/lru_gen/enabled (now {now}; echo y > it)")
        reason = "needs " + " or ".join(wanted)
        if self.mglru and self.build_has_mglru is False and host.mglru.usable_for_aging:
            reason += "; this host has MGLRU, but this build predates the test's MGLRU support (6.16+ selftests)"
        return reason


@dataclass(frozen=True)
class KvmCap:
    """``KVM_CHECK_EXTENSION(cap)`` answers at least ``minimum`` (VM scope first)."""

    name: str
    minimum: int = 1

    def unmet(self, host: HostFacts) -> str | None:
        cap = self.name if self.name.startswith("KVM_CAP_") else f"KVM_CAP_{self.name}"
        if not host.kvm.available:
            return f"needs {cap}, but /dev/kvm is unusable: {host.kvm.unavailable_reason}"
        value = host.kvm.cap(cap)
        if value >= self.minimum:
            return None
        return f"needs {cap}{'' if self.minimum == 1 else f' >= {self.minimum}'}, KVM answers {value} (a newer kernel or another KVM mode)"


@dataclass(frozen=True)
class KvmParam:
    """A KVM module parameter has a value: ``tdp_mmu`` means ``kvm.tdp_mmu``; a module may be named."""

    name: str
    value: bool

    def unmet(self, host: HostFacts) -> str | None:
        full = self.name if "." in self.name else f"kvm.{self.name}"
        param = host.kvm.params.get(full)
        want = "Y" if self.value else "N"
        if param is None:
            return f"needs KVM parameter {full}={want}, which this host does not have"
        if param.as_bool() is self.value:
            return None
        module, _, short = full.partition(".")
        path = f"/sys/module/{module}/parameters/{short}"
        how = (
            f"echo {want} > {path}" if param.writable
            else f"it is read-only here: reload {module} with {short}={want} or boot with {full}={want}"
        )
        return f"needs KVM parameter {full}={want}, it is {param.value}: {how}"


@dataclass(frozen=True)
class GuestGbpages:
    """KVM offers 1 GiB guest pages (x86 CPUID 0x80000001.EDX[26] in KVM_GET_SUPPORTED_CPUID)."""

    def unmet(self, host: HostFacts) -> str | None:
        x86 = host.kvm.x86
        if x86 is not None and x86.gbpages:
            return None
        if x86 is None:
            return "needs KVM's supported CPUID (x86) to tell whether guests get 1 GiB pages"
        host_has = " although the host CPU has pdpe1gb" if host.cpu.has("pdpe1gb") else ""
        return f"needs 1 GiB guest pages, which KVM does not offer (GBPAGES missing from KVM_GET_SUPPORTED_CPUID){host_has}"


@dataclass(frozen=True)
class Tdp:
    """Two-dimensional paging (EPT/NPT) enabled."""

    def unmet(self, host: HostFacts) -> str | None:
        if host.kvm.tdp:
            return None
        state = {None: "unknown", False: "off"}[host.kvm.tdp]
        extra = " (PVM shadows guest page tables)" if host.kvm.flavour == "kvm_pvm" else ""
        return f"needs TDP (kvm_intel.ept=Y or kvm_amd.npt=1), TDP is {state} on {host.kvm.flavour or 'this host'}{extra}"


@dataclass(frozen=True)
class TtremLevel:
    """arm64 FEAT_BBM level ("TTRem") of at least ``level``, from the vCPU's ID_AA64MMFR2_EL1."""

    level: int

    def unmet(self, host: HostFacts) -> str | None:
        ttrem = host.kvm.ttrem
        if ttrem is not None and ttrem >= self.level:
            return None
        if ttrem is None:
            return f"needs TTRem (FEAT_BBM) level {self.level}, unknown on this host (not arm64, or no vCPU could be read)"
        return f"needs TTRem (FEAT_BBM) level {self.level}, this host's CPU has level {ttrem}"


@dataclass(frozen=True)
class MinVcpus:
    count: int

    def unmet(self, host: HostFacts) -> str | None:
        if host.cpus_online is not None and host.cpus_online >= self.count:
            return None
        return f"needs {self.count} online CPUs, this host has {host.cpus_online or 'an unknown number of'}"


@dataclass(frozen=True)
class MinMemory:
    size: int

    def unmet(self, host: HostFacts) -> str | None:
        if host.mem_available is not None and host.mem_available >= self.size:
            return None
        have = "unknown" if host.mem_available is None else f"{host.mem_available // 2**20} MiB"
        return f"needs {self.size // 2**20} MiB of available memory, this host has {have}"


@dataclass(frozen=True)
class AnyOf:
    """Satisfied when one of ``options`` is; the reason lists why each one is not."""

    options: tuple[Requirement, ...]

    def unmet(self, host: HostFacts) -> str | None:
        reasons = []
        for req in self.options:
            reason = req.unmet(host)
            if reason is None:
                return None
            reasons.append(reason)
        return "; or ".join(reasons)


@dataclass(frozen=True)
class OnArch:
    """``requirement`` applies on ``machines`` only (a need of one architecture's code path)."""

    machines: tuple[str, ...]
    requirement: Requirement

    def unmet(self, host: HostFacts) -> str | None:
        return self.requirement.unmet(host) if host.machine in self.machines else None


def specialise(requirements: tuple[Requirement, ...] | list[Requirement], binary: Path) -> list[Requirement]:
    """The requirements as they apply to this binary (``for_binary`` where a requirement has it)."""
    out: list[Requirement] = []
    for req in requirements:
        for_binary = getattr(req, "for_binary", None)
        out.append(for_binary(binary) if callable(for_binary) else req)
    return out


def wrong_arch(requirements: tuple[Requirement, ...] | list[Requirement], host: HostFacts) -> str | None:
    """The reason of an unmet ``Arch``: a better skip than "binary not found", since builds for
    one architecture never have the other's arch-specific tests."""
    return next((r for r in (req.unmet(host) for req in requirements if isinstance(req, Arch)) if r), None)


def first_unmet(requirements: tuple[Requirement, ...] | list[Requirement], host: HostFacts) -> str | None:
    for req in requirements:
        reason = req.unmet(host)
        if reason:
            return reason
    return None
