"""Building ``HostFacts`` from a root directory: ``/`` on the live host, a snapshot otherwise."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable, TypeVar

from .model import HostFacts, HugetlbPool, ThpFacts
from .sysfs import (
    Unreadable,
    parse_cpu_list,
    parse_meminfo,
    read_int,
    read_selected,
    read_text,
    rooted,
)

T = TypeVar("T")
HUGEPAGES = "/sys/kernel/mm/hugepages"
THP = "/sys/kernel/mm/transparent_hugepage"


class _Facts:
    """Collects the reason of every fact that could not be read."""

    def __init__(self) -> None:
        self.unknown: dict[str, str] = {}

    def get(self, fact: str, read: Callable[[], T]) -> T | None:
        try:
            return read()
        except Unreadable as exc:
            self.unknown[fact] = str(exc)
            return None


def _hugetlb_pools(root: Path, facts: _Facts, live: bool) -> tuple[HugetlbPool, ...]:
    base = rooted(root, HUGEPAGES)
    try:
        names = sorted(p.name for p in base.iterdir())
    except OSError as exc:
        facts.unknown["hugetlb"] = f"cannot list {HUGEPAGES}: {exc.strerror or exc}"
        return ()
    pools = []
    for name in names:
        m = re.fullmatch(r"hugepages-(\d+)kB", name)
        if not m:
            continue
        d = f"{HUGEPAGES}/{name}"
        try:
            nr = read_int(root, f"{d}/nr_hugepages")
            pool = HugetlbPool(
                size_kb=int(m.group(1)),
                nr=nr,
                free=read_int(root, f"{d}/free_hugepages"),
                resv=read_int(root, f"{d}/resv_hugepages"),
                surplus=read_int(root, f"{d}/surplus_hugepages"),
                overcommit=read_int(root, f"{d}/nr_overcommit_hugepages"),
                writable=live and os.access(rooted(root, f"{d}/nr_hugepages"), os.W_OK),
            )
        except Unreadable as exc:
            facts.unknown[f"hugetlb.{name}"] = str(exc)
            continue
        pools.append(pool)
    return tuple(sorted(pools, key=lambda p: p.size_kb))


def probe_host(root: Path = Path("/")) -> HostFacts:
    """Read the host facts under ``root``. Never raises for a missing or malformed file."""
    live = root.resolve() == Path("/")
    facts = _Facts()
    meminfo = facts.get("meminfo", lambda: parse_meminfo(read_text(root, "/proc/meminfo"))) or {}
    hugepagesize = meminfo.get("Hugepagesize")
    return HostFacts(
        machine=facts.get("machine", lambda: read_text(root, "/proc/sys/kernel/arch").strip()),
        kernel_release=facts.get(
            "kernel_release", lambda: read_text(root, "/proc/sys/kernel/osrelease").strip()
        ),
        cpus_online=facts.get(
            "cpus_online", lambda: parse_cpu_list(read_text(root, "/sys/devices/system/cpu/online"))
        ),
        mem_total=meminfo.get("MemTotal"),
        mem_available=meminfo.get("MemAvailable"),
        hugetlb_default_kb=hugepagesize // 1024 if hugepagesize else None,
        hugetlb=_hugetlb_pools(root, facts, live),
        thp=ThpFacts(
            enabled=facts.get("thp.enabled", lambda: read_selected(root, f"{THP}/enabled")),
            defrag=facts.get("thp.defrag", lambda: read_selected(root, f"{THP}/defrag")),
            shmem_enabled=facts.get(
                "thp.shmem_enabled", lambda: read_selected(root, f"{THP}/shmem_enabled")
            ),
            pmd_size=facts.get("thp.pmd_size", lambda: read_int(root, f"{THP}/hpage_pmd_size")),
        ),
        unknown=facts.unknown,
    )
