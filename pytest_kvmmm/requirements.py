"""Host requirements of a case, checked against ``HostFacts`` before the binary runs.

Each requirement answers ``unmet(host)`` with None (satisfied) or one sentence that names
what is missing and how to get it; that sentence is the skip reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from .host.model import HostFacts


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
            "echo madvise > /sys/kernel/mm/transparent_hugepage/enabled"
        )


def first_unmet(requirements: tuple[Requirement, ...] | list[Requirement], host: HostFacts) -> str | None:
    for req in requirements:
        reason = req.unmet(host)
        if reason:
            return reason
    return None
