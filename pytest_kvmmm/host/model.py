"""Immutable host facts. A fact that could not be read is ``None`` and its reason is in ``unknown``.

Requirements and skip decisions read this model, never sysfs directly, so a snapshot
of a lab host gives the same decisions offline as the host itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class HugetlbPool:
    """One hugetlb page size, from ``/sys/kernel/mm/hugepages/hugepages-<kB>kB/``."""

    size_kb: int
    nr: int
    free: int
    resv: int
    surplus: int
    overcommit: int
    #: Whether this process may write ``nr_hugepages`` (root, and a writable sysfs).
    writable: bool

    @property
    def size_bytes(self) -> int:
        return self.size_kb * 1024

    @property
    def usable(self) -> int:
        """Pages a new mapping can get: free minus reserved, plus what overcommit still allows."""
        return max(self.free - self.resv, 0) + max(self.overcommit - self.surplus, 0)

    @property
    def nr_path(self) -> str:
        return f"/sys/kernel/mm/hugepages/hugepages-{self.size_kb}kB/nr_hugepages"


@dataclass(frozen=True)
class ThpFacts:
    """Transparent hugepages: the selected value of each ``[bracketed]`` setting."""

    enabled: str | None
    defrag: str | None
    shmem_enabled: str | None
    pmd_size: int | None

    @property
    def usable_for_madvise(self) -> bool:
        """``anonymous_thp`` backs memory with ``MADV_HUGEPAGE``: works with always or madvise."""
        return self.enabled in ("always", "madvise")


@dataclass(frozen=True)
class HostFacts:
    machine: str | None
    kernel_release: str | None
    cpus_online: int | None
    mem_total: int | None
    mem_available: int | None
    hugetlb_default_kb: int | None
    hugetlb: tuple[HugetlbPool, ...]
    thp: ThpFacts
    #: fact name -> why it is unknown ("cannot read /proc/meminfo: Permission denied").
    unknown: Mapping[str, str] = field(default_factory=dict)

    def hugetlb_pool(self, size_kb: int) -> HugetlbPool | None:
        return next((p for p in self.hugetlb if p.size_kb == size_kb), None)
