"""Backing sources (``-s``) of the KVM selftests and what each needs from the host.

The names are those of ``vm_mem_backing_src_alias()`` in ``lib/test_util.c`` (the same
18 in 6.1 and 6.12). The selftests do not check hugetlb pools before ``mmap()``: too few
free pages is an exit 254 ("mmap() failed ... errno: 12"), not a skip, so the plugin
checks the pool itself and skips with the exact shortfall.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..engine.requirements import HugetlbPages, Requirement, ThpMadvise
from ..host.units import KIB


@dataclass(frozen=True)
class BackingSource:
    name: str
    #: Explicit hugetlb page size in kB, or None.
    hugetlb_kb: int | None = None
    #: Uses the default hugetlb size (``Hugepagesize`` in /proc/meminfo).
    default_hugetlb: bool = False
    thp: bool = False
    shared: bool = False

    @property
    def hugetlb(self) -> bool:
        return self.hugetlb_kb is not None or self.default_hugetlb


_SIZES_KB = {
    "16kb": 16, "64kb": 64, "512kb": 512, "1mb": 1024, "2mb": 2048, "8mb": 8192, "16mb": 16384,
    "32mb": 32768, "256mb": 262144, "512mb": 524288, "1gb": 1048576, "2gb": 2097152, "16gb": 16777216,
}

BACKING_SOURCES: dict[str, BackingSource] = {
    "anonymous": BackingSource("anonymous"),
    "anonymous_thp": BackingSource("anonymous_thp", thp=True),
    "anonymous_hugetlb": BackingSource("anonymous_hugetlb", default_hugetlb=True),
    **{
        f"anonymous_hugetlb_{suffix}": BackingSource(f"anonymous_hugetlb_{suffix}", hugetlb_kb=kb)
        for suffix, kb in _SIZES_KB.items()
    },
    "shmem": BackingSource("shmem", shared=True),
    "shared_hugetlb": BackingSource("shared_hugetlb", default_hugetlb=True, shared=True),
}


def hugetlb_pages_needed(guest_bytes: int, page_kb: int) -> int:
    """Pages for ``guest_bytes`` of guest memory, aligned up to the page size as the selftests do."""
    return max(1, math.ceil(guest_bytes / (page_kb * KIB)))


def backing_requirements(
    backing: str, guest_bytes: int, default_hugetlb_kb: int | None
) -> tuple[Requirement, ...]:
    """What the host must offer before a selftest may map ``guest_bytes`` from ``backing``.

    ``default_hugetlb_kb`` is the host's default hugetlb size, for the backings that use it;
    None when unknown, which makes the requirement unsatisfiable with that reason.
    """
    src = BACKING_SOURCES.get(backing)
    if src is None:
        return ()
    if src.thp:
        return (ThpMadvise(),)
    if src.hugetlb:
        size_kb = src.hugetlb_kb or default_hugetlb_kb
        if size_kb is None:
            return (HugetlbPages(None, 1, backing),)
        return (HugetlbPages(size_kb, hugetlb_pages_needed(guest_bytes, size_kb), backing),)
    return ()
