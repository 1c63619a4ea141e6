"""Building ``HostFacts`` from a root directory: ``/`` on the live host, a snapshot otherwise."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from .cpu import CpuFacts, parse_cpuinfo
from .kvm import kvm_facts
from .kvmapi import KvmAnswers, probe_kvm
from .mm import base_page_size, hugetlb_pools, mglru, node_hugetlb_pools, page_idle, thp_facts
from .model import HostFacts
from .snapshot import load_kvm_answers, read_meta
from .sysfs import FactReader, parse_cpu_list, parse_id_list, parse_meminfo


def probe_host(root: Path = Path("/"), kvm: KvmAnswers | None = None) -> HostFacts:
    """Read the host facts under ``root``. Never raises for a missing or malformed file.

    ``kvm`` replaces the KVM API answers (tests); by default they come from /dev/kvm on the
    live host and from the snapshot's ``kvmmm-snapshot.json`` otherwise.
    """
    live = root.resolve() == Path("/")
    r = FactReader(root, live)
    meta = None if live else read_meta(root)
    meminfo = r.get("meminfo", lambda: parse_meminfo(r.text("/proc/meminfo"))) or {}
    hugepagesize = meminfo.get("Hugepagesize")
    machine = r.get("machine", lambda: r.text("/proc/sys/kernel/arch").strip())
    nodes = r.get("numa_nodes", lambda: parse_id_list(r.text("/sys/devices/system/node/online"))) or ()
    cpu = r.get("cpu", lambda: parse_cpuinfo(r.text("/proc/cpuinfo"))) or CpuFacts(None, None, (), None, None)
    if kvm is None:
        kvm = probe_kvm(machine=machine) if live else load_kvm_answers(root, meta)
    return HostFacts(
        hostname=r.get("hostname", lambda: r.text("/proc/sys/kernel/hostname").strip()),
        machine=machine,
        kernel_release=r.get("kernel_release", lambda: r.text("/proc/sys/kernel/osrelease").strip()),
        cpus_online=r.get("cpus_online", lambda: parse_cpu_list(r.text("/sys/devices/system/cpu/online"))),
        mem_total=meminfo.get("MemTotal"),
        mem_available=meminfo.get("MemAvailable"),
        page_size=r.get("page_size", lambda: base_page_size(r, (meta or {}).get("page_size"))),
        numa_nodes=nodes,
        cpu=cpu,
        kvm=kvm_facts(r, machine, kvm),
        hugetlb_default_kb=hugepagesize // 1024 if hugepagesize else None,
        hugetlb=hugetlb_pools(r),
        hugetlb_nodes=node_hugetlb_pools(r, nodes),
        thp=thp_facts(r),
        page_idle=page_idle(r),
        mglru=mglru(r),
        source=str(root),
        unknown=r.unknown,
    )


def with_fresh_pools(facts: HostFacts, root: Path = Path("/")) -> HostFacts:
    """``facts`` with the hugetlb pools read again: other users and runs change them during a
    session, while the rest of the probe (a scratch VM on the live host) need not be redone."""
    r = FactReader(root, root.resolve() == Path("/"))
    hugetlb, nodes = hugetlb_pools(r), node_hugetlb_pools(r, facts.numa_nodes)
    unknown = {k: v for k, v in facts.unknown.items() if not k.startswith("hugetlb")}
    return dataclasses.replace(facts, hugetlb=hugetlb, hugetlb_nodes=nodes, unknown={**unknown, **r.unknown})


def timed_probe(root: Path = Path("/")) -> tuple[HostFacts, float]:
    """The facts and the seconds the probe took (for the report and the benchmark)."""
    t0 = time.perf_counter()
    facts = probe_host(root)
    return facts, time.perf_counter() - t0
