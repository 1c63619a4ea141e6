"""Memory-management facts: base page size, hugetlb pools (global and per NUMA node), THP,
page_idle, MGLRU."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from .sysfs import FactReader, Unreadable, rw_open_error

HUGEPAGES = "/sys/kernel/mm/hugepages"
NODES = "/sys/devices/system/node"
THP = "/sys/kernel/mm/transparent_hugepage"
PAGE_IDLE = "/sys/kernel/mm/page_idle/bitmap"
LRU_GEN = "/sys/kernel/mm/lru_gen/enabled"
_POOL_DIR = re.compile(r"hugepages-(\d+)kB")


def _pools_dir(node: int | None) -> str:
    """The directory of the hugetlb pools: the global ones (``node`` None) or one NUMA node's."""
    return HUGEPAGES if node is None else f"{NODES}/node{node}/hugepages"


def _pool_dir(size_kb: int, node: int | None) -> str:
    return f"{_pools_dir(node)}/hugepages-{size_kb}kB"


@dataclass(frozen=True)
class HugetlbPool:
    """One hugetlb page size, globally (``node`` None) or on one NUMA node."""

    size_kb: int
    nr: int
    free: int
    resv: int
    surplus: int
    overcommit: int
    #: Whether this process may write ``nr_hugepages`` (root, and a writable sysfs).
    writable: bool
    node: int | None = None

    @property
    def usable(self) -> int:
        """Pages a new mapping can get: free minus reserved, plus what overcommit still allows."""
        return max(self.free - self.resv, 0) + max(self.overcommit - self.surplus, 0)

    @property
    def dir(self) -> str:
        """The pool's sysfs directory, as on the host (``/sys/kernel/mm/hugepages/hugepages-2048kB``)."""
        return _pool_dir(self.size_kb, self.node)

    @property
    def nr_path(self) -> str:
        return f"{self.dir}/nr_hugepages"


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
class MglruFacts:
    """``/sys/kernel/mm/lru_gen/enabled``: a hex bitmask (0x1 enabled, 0x2 mm walk, 0x4 young in non-leaf PMDs)."""

    enabled_mask: int | None

    @property
    def usable_for_aging(self) -> bool:
        """What ``access_tracking_perf_test`` (6.16+) needs: bits 0x1 and 0x2."""
        return self.enabled_mask is not None and self.enabled_mask & 0x3 == 0x3


def _pool(r: FactReader, name: str, node: int | None) -> HugetlbPool:
    m = _POOL_DIR.fullmatch(name)
    assert m is not None
    size_kb = int(m.group(1))
    d = _pool_dir(size_kb, node)
    per_node = node is not None  # per-node pools have no resv/overcommit files
    return HugetlbPool(
        size_kb=size_kb,
        nr=r.int(f"{d}/nr_hugepages"),
        free=r.int(f"{d}/free_hugepages"),
        resv=0 if per_node else r.int(f"{d}/resv_hugepages"),
        surplus=r.int(f"{d}/surplus_hugepages"),
        overcommit=0 if per_node else r.int(f"{d}/nr_overcommit_hugepages"),
        writable=r.writable(f"{d}/nr_hugepages"),
        node=node,
    )


def _pools_in(r: FactReader, node: int | None) -> list[HugetlbPool]:
    base = _pools_dir(node)
    try:
        names = [p.name for p in r.path(base).iterdir() if _POOL_DIR.fullmatch(p.name)]
    except OSError as exc:
        r.unknown["hugetlb" if node is None else f"hugetlb.node{node}"] = (
            f"cannot list {base}: {exc.strerror or exc}"
        )
        return []
    pools = []
    for name in names:
        fact = f"hugetlb.{name}" if node is None else f"hugetlb.node{node}.{name}"
        pool = r.get(fact, lambda name=name: _pool(r, name, node))  # type: ignore[misc]
        if pool is not None:
            pools.append(pool)
    return sorted(pools, key=lambda p: p.size_kb)


def hugetlb_pools(r: FactReader) -> tuple[HugetlbPool, ...]:
    return tuple(_pools_in(r, None))


def node_hugetlb_pools(r: FactReader, nodes: tuple[int, ...]) -> tuple[HugetlbPool, ...]:
    return tuple(p for node in nodes for p in _pools_in(r, node))


#: THP's PMD size -> the base page size: a PMD table holds page_size / 8 entries, each mapping
#: page_size, so the PMD size is page_size**2 / 8 (arm64 4K -> 2M, 16K -> 32M, 64K -> 512M).
PMD_SIZE_TO_PAGE_SIZE = {(p * p) // 8: p for p in (4096, 16384, 65536)}


def base_page_size(r: FactReader, recorded: object = None) -> int:
    """The kernel's base page size (4K, or 16K/64K on arm64): it decides which guest modes and
    block sizes a host's stage 2 has. Live: ``sysconf``. A snapshot: the value it recorded,
    else derived from THP's ``hpage_pmd_size`` (snapshots from before the fact existed)."""
    if r.live:
        return os.sysconf("SC_PAGE_SIZE")
    if isinstance(recorded, int) and recorded > 0:
        return recorded
    pmd = r.int(f"{THP}/hpage_pmd_size")
    if pmd not in PMD_SIZE_TO_PAGE_SIZE:
        raise Unreadable(f"{THP}/hpage_pmd_size is {pmd}, not the PMD size of a 4K, 16K or 64K page")
    return PMD_SIZE_TO_PAGE_SIZE[pmd]


def thp_facts(r: FactReader) -> ThpFacts:
    return ThpFacts(
        enabled=r.get("thp.enabled", lambda: r.selected(f"{THP}/enabled")),
        defrag=r.get("thp.defrag", lambda: r.selected(f"{THP}/defrag")),
        shmem_enabled=r.get("thp.shmem_enabled", lambda: r.selected(f"{THP}/shmem_enabled")),
        pmd_size=r.get("thp.pmd_size", lambda: r.int(f"{THP}/hpage_pmd_size")),
    )


def page_idle(r: FactReader) -> bool:
    """Idle page tracking: the bitmap must exist and open read-write (CONFIG_IDLE_PAGE_TRACKING, root)."""
    path = r.path(PAGE_IDLE)
    if not path.exists():
        r.unknown["page_idle"] = f"{PAGE_IDLE} does not exist (kernel built without CONFIG_IDLE_PAGE_TRACKING)"
        return False
    if r.live:
        why = rw_open_error(path)
        if why is not None:
            r.unknown["page_idle"] = f"cannot open {PAGE_IDLE} read-write: {why}"
            return False
        return True
    if not r.writable(PAGE_IDLE):
        r.unknown["page_idle"] = f"{PAGE_IDLE} was not writable on the captured host"
        return False
    return True


def mglru(r: FactReader) -> MglruFacts:
    def mask() -> int:
        text = r.text(LRU_GEN).strip()
        try:
            return int(text, 16)
        except ValueError:
            raise Unreadable(f"{LRU_GEN}: expected a hex mask, found {text[:20]!r}") from None

    return MglruFacts(r.get("mglru", mask))
