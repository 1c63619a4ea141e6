"""Backing sources (``-s``) of the KVM selftests and what each needs from the host.

The names are those of ``vm_mem_backing_src_alias()`` in ``lib/test_util.c`` (the same
18 in 6.1 and 6.12). The selftests do not check hugetlb pools before ``mmap()``: too few
free pages is an exit 254 ("mmap() failed ... errno: 12"), not a skip, so the plugin
checks the pool itself and skips with the exact shortfall.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .requirements import HugetlbPages, Requirement, ThpMadvise

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB


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


def parse_size(text: str) -> int:
    """``64M`` / ``1G`` / ``512K`` / ``4096`` -> bytes (the suffixes the selftests' ``parse_size`` takes)."""
    text = text.strip()
    units = {"K": KIB, "M": MIB, "G": GIB, "T": GIB * 1024}
    unit = units.get(text[-1:].upper())
    number = text[:-1] if unit else text
    if not number.isdigit():
        raise ValueError(f"not a size: {text!r} (use e.g. 64M, 1G)")
    return int(number) * (unit or 1)


def format_size(size: int) -> str:
    """Bytes -> the shortest exact selftest size argument (``1G``, ``64M``, ``4096``)."""
    for suffix, unit in (("G", GIB), ("M", MIB), ("K", KIB)):
        if size >= unit and size % unit == 0:
            return f"{size // unit}{suffix}"
    return str(size)
