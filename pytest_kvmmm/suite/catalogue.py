"""The MM suite, described once: every selftest, its variants, sizes, markers and requirements.

The suite module generates one test function per entry and one case per combination of
variant x backing source x guest mode (``cases.py``). Everything here is static, so every
host, xdist worker and lab gateway collects the same ids; the host only decides, at run
time, what skips and how sizes are capped.

Facts behind each entry (options, defaults, what each binary needs) are in
``shared/research/kvm-selftests-facts.md`` section 1; the notes below say why an entry
is shaped the way it is.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from ..engine.discovery import RENAMED
from ..engine.requirements import (
    AnyOf,
    Arch,
    GuestGbpages,
    HugetlbPages,
    IdleTracking,
    KvmCap,
    KvmParam,
    KvmUsable,
    MinMemory,
    MinVcpus,
    OnArch,
    Requirement,
    Tdp,
)
from ..host.model import HostFacts
from ..host.units import GIB, MIB
from .backing import backing_requirements, hugetlb_pages_needed
from .scale import Sizes, Sizing

#: The default backing sources of the page-table test (issue: anonymous, THP, 2M and 1G hugetlb, shmem, shared hugetlb).
PAGE_TABLE_BACKINGS = (
    "anonymous", "anonymous_thp", "anonymous_hugetlb_2mb", "anonymous_hugetlb_1gb", "shmem", "shared_hugetlb",
)


@dataclass(frozen=True)
class Run:
    """What an argument builder gets: the capped sizes and the case's choices."""

    sizing: Sizing
    backing: str | None
    mode_args: tuple[str, ...]
    host: HostFacts


ArgBuilder = Callable[[Run], "list[str]"]


@dataclass(frozen=True)
class Variant:
    """One way of running a selftest (a log mode, a flag). ``id`` "" is the plain run."""

    id: str = ""
    args: tuple[str, ...] = ()
    requires: tuple[Requirement, ...] = ()
    markers: tuple[str, ...] = ()
    #: Backing sources of this variant by default, replacing the entry's.
    backings: tuple[str, ...] | None = None
    #: Only shared backings can work (uffd MINOR faults need an alias mapping of the memory).
    shared_only: bool = False


@dataclass(frozen=True)
class Entry:
    name: str
    #: The test function's name (``test_<short>``) and the heading in reports.
    short: str
    build: ArgBuilder
    sizes: Mapping[str, Sizes]
    markers: tuple[str, ...]
    requires: tuple[Requirement, ...] = ()
    variants: tuple[Variant, ...] = (Variant(),)
    #: Backing sources to parametrize over (empty: the binary takes no -s).
    backings: tuple[str, ...] = ()
    #: Takes ``-m <mode id>`` (parametrized by stable guest-mode names).
    takes_modes: bool = False
    #: ``Sizes.memory`` is per vCPU (memstress tests) rather than the total.
    per_vcpu: bool = False
    #: Metrics a passing run must print; missing ones fail the test (garbage output, format drift).
    expected_metrics: tuple[str, ...] = ()
    timeout: float | None = None
    #: Extra requirements that depend on the capped sizes (hugetlb pages for a fixed backing ...).
    sized_requires: Callable[[Run], tuple[Requirement, ...]] | None = None
    doc: str = ""
    #: Per-metric --kvm-fail-regression thresholds in percent ({"KVM_ADJUST_MAPPINGS": 25.0}; "*": every
    #: metric); a kvm_regression marker overrides them.
    regression_pct: Mapping[str, float] = field(default_factory=dict)
    #: Other names of the binary (discovery finds it under any of them).
    aliases: tuple[str, ...] = field(default_factory=tuple)
    #: Kernel log lines (regular expressions) the selftest provokes on purpose: expected, not a failure.
    expected_kernel: tuple[str, ...] = ()
    #: The sizes its arguments carry ("vcpus", "memory", "iterations"): what a record and its
    #: reports say the case ran with (``shape.of_case``), never read back from the command line.
    shown_sizes: tuple[str, ...] = ()

    @property
    def test_name(self) -> str:
        return f"test_{self.short}"


def _scales(smoke: Sizes, default: Sizes, stress: Sizes, lab: Sizes | None = None) -> dict[str, Sizes]:
    """Sizes per scale; ``lab`` (emulated hosts) defaults to ``smoke``'s."""
    return {"smoke": smoke, "default": default, "stress": stress, "lab": lab or smoke}


def _mem_vcpus(r: Run) -> list[str]:
    return ["-b", r.sizing.size_arg, "-v", str(r.sizing.vcpus)]


def _backing(r: Run) -> list[str]:
    return ["-s", r.backing] if r.backing else []


def _default_hugetlb(pages_for: Callable[[Run], int], why: str) -> Callable[[Run], tuple[Requirement, ...]]:
    def needs(r: Run) -> tuple[Requirement, ...]:
        size_kb = r.host.hugetlb_default_kb
        return (HugetlbPages(size_kb, pages_for(r) if size_kb else 1, why),)

    return needs


KVM = (KvmUsable(),)
X86 = Arch(("x86_64",))

CATALOGUE: tuple[Entry, ...] = (
    Entry(
        name="kvm_page_table_test",
        shown_sizes=("vcpus", "memory"),
        short="kvm_page_table",
        doc="create block mappings, update them with dirty logging on, split/rebuild them after it (KVM_*_MAPPINGS times)",
        build=lambda r: [*_backing(r), *_mem_vcpus(r), *r.mode_args],
        sizes=_scales(Sizes(64 * MIB, 2), Sizes(1 * GIB, 4), Sizes(20 * GIB, 40), lab=Sizes(16 * MIB, 1)),
        markers=("pagetable", "perf"),
        requires=KVM,
        backings=PAGE_TABLE_BACKINGS,
        takes_modes=True,
        expected_metrics=("KVM_CREATE_MAPPINGS", "KVM_UPDATE_MAPPINGS", "KVM_ADJUST_MAPPINGS"),
    ),
    Entry(
        name="dirty_log_perf_test",
        shown_sizes=("vcpus", "memory", "iterations"),
        short="dirty_log_perf",
        doc="populate, then dirty and harvest memory with dirty logging, per iteration",
        build=lambda r: [*_backing(r), *_mem_vcpus(r), "-i", str(r.sizing.iterations), *r.mode_args],
        sizes=_scales(Sizes(64 * MIB, 2, 2), Sizes(1 * GIB, 4, 3), Sizes(4 * GIB, 40, 5), lab=Sizes(16 * MIB, 1, 2)),
        markers=("dirty_log", "pagetable", "perf"),
        requires=KVM,
        per_vcpu=True,
        expected_metrics=("populate_memory", "enable_dirty_logging", "get_dirty_log_total"),
        takes_modes=True,
        backings=("anonymous", "anonymous_thp", "anonymous_hugetlb_2mb"),
        variants=(
            Variant(),  # manual protect (KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2) when KVM has it: clear-log times
            Variant("no_manual_protect", ("-g",), backings=("anonymous",)),
            Variant("slots2", ("-x", "2"), backings=("anonymous",)),
        ),
    ),
    Entry(
        name="dirty_log_test",
        shown_sizes=("iterations",),
        short="dirty_log",
        doc="dirty-log correctness in each log mode; always about 1 GiB of guest memory",
        build=lambda r: ["-i", str(r.sizing.iterations), "-I", "10", *r.mode_args],
        sizes=_scales(Sizes(iterations=5), Sizes(iterations=32), Sizes(iterations=128), lab=Sizes(iterations=3)),
        markers=("dirty_log", "pagetable"),
        requires=(*KVM, MinMemory(2 * GIB)),
        takes_modes=True,
        variants=(
            Variant("dirty_log", ("-M", "dirty-log")),
            Variant("clear_log", ("-M", "clear-log"), (KvmCap("MANUAL_DIRTY_LOG_PROTECT2"),)),
            # The default 65536-entry ring failed on PVM/6.12; 1024 entries is what every host accepts.
            Variant(
                "dirty_ring",
                ("-M", "dirty-ring", "-c", "1024"),
                (AnyOf((KvmCap("DIRTY_LOG_RING"), KvmCap("DIRTY_LOG_RING_ACQ_REL"))),),
            ),
        ),
    ),
    Entry(
        name="dirty_log_page_splitting_test",
        shown_sizes=("memory",),
        short="dirty_log_page_splitting",
        doc="eager page splitting when dirty logging starts, checked through the VM's pages_4k/2m/1g stats (x86)",
        build=lambda r: ["-b", r.sizing.size_arg, "-s", "anonymous_hugetlb"],
        sizes=_scales(Sizes(64 * MIB), Sizes(1 * GIB), Sizes(4 * GIB)),
        markers=("dirty_log", "pagetable", "hugetlb"),
        requires=(*KVM, X86, KvmParam("tdp_mmu", True), KvmParam("eager_page_split", True)),
        per_vcpu=True,
        # Two vCPUs, each with -b of default-size hugetlb memory.
        sized_requires=_default_hugetlb(
            lambda r: 2 * hugetlb_pages_needed(r.sizing.memory, r.host.hugetlb_default_kb or 2048),
            "dirty_log_page_splitting_test",
        ),
    ),
    Entry(
        name="nx_huge_pages_test",
        short="nx_huge_pages",
        doc="NX huge page splitting and recovery (x86), as nx_huge_pages_test.sh runs it",
        build=lambda r: ["-t", "887563923", "-p", "100", *(["-r"] if os.geteuid() == 0 else [])],
        sizes=_scales(Sizes(), Sizes(), Sizes()),
        markers=("pagetable", "hugetlb"),
        requires=(
            *KVM, X86, Tdp(), KvmCap("VM_DISABLE_NX_HUGE_PAGES"), KvmParam("nx_huge_pages", True),
        ),
        sized_requires=_default_hugetlb(lambda r: 3, "nx_huge_pages_test"),
    ),
    Entry(
        name="access_tracking_perf_test",
        shown_sizes=("vcpus", "memory"),
        short="access_tracking_perf",
        doc="mark memory idle and touch it again: the cost of aging guest memory",
        build=lambda r: [*_backing(r), *_mem_vcpus(r), *r.mode_args],
        sizes=_scales(Sizes(64 * MIB, 2), Sizes(1 * GIB, 4), Sizes(4 * GIB, 40), lab=Sizes(16 * MIB, 1)),
        markers=("access_tracking", "pagetable", "perf"),
        # page_idle up to 6.15 selftests, MGLRU from 6.16 on: either lets it run.
        requires=(*KVM, IdleTracking()),
        per_vcpu=True,
        expected_metrics=("populating_memory",),
        takes_modes=True,
        backings=("anonymous",),
        variants=(Variant(), Variant("overlap", ("-o",))),
    ),
    Entry(
        name="max_guest_memory_test",
        shown_sizes=("vcpus",),
        aliases=RENAMED["max_guest_memory_test"],
        short="max_guest_memory",
        doc="map the most guest memory KVM allows and zap it: the TDP MMU zap stress (mmu_stress_test since 6.14)",
        # -s is the slot size and -m the most guest memory (GiB): ``slots`` slots of -s each (4 unless
        # a scale says; the lab's one 1 GiB slot and one vCPU: -c 2 -m 4 -s 1 took 3 min 41 s under TCG).
        build=lambda r: ["-c", str(r.sizing.vcpus), "-m", str(max(r.sizing.memory // GIB, 1) * (r.sizing.slots or 4)),
                         "-s", str(max(r.sizing.memory // GIB, 1))],
        sizes=_scales(Sizes(1 * GIB, 2), Sizes(2 * GIB, 4), Sizes(2 * GIB, 40), lab=Sizes(1 * GIB, 1, slots=1)),
        markers=("pagetable",),
        # On x86 it maps guest memory with 1 GiB guest pages without checking that KVM offers them:
        # without GBPAGES the guest takes an unhandled #PF and the test fails (exit 254).
        # 6.12 asserts that three quarters of its CPUs are at least one before it reads -c
        # ("Uh, no CPUs?", exit 254 on a one-CPU host): it needs 2 CPUs whatever the scale.
        requires=(*KVM, OnArch(("x86_64",), GuestGbpages()), MinVcpus(2)),
        expected_metrics=("run1", "reset", "run2"),
    ),
    Entry(
        name="demand_paging_test",
        shown_sizes=("vcpus", "memory"),
        short="demand_paging",
        doc="fault guest memory in through userfaultfd (MISSING, and MINOR on shared memory)",
        build=lambda r: [*_backing(r), *_mem_vcpus(r), *r.mode_args],
        sizes=_scales(Sizes(64 * MIB, 2), Sizes(512 * MIB, 4), Sizes(1 * GIB, 40), lab=Sizes(16 * MIB, 1)),
        markers=("demand_paging", "pagetable", "perf"),
        requires=KVM,
        per_vcpu=True,
        expected_metrics=("total_guest_execution", "overall_demand_paging_rate_pgs_per_s"),
        takes_modes=True,
        variants=(
            Variant("missing", ("-u", "MISSING"), backings=("anonymous",)),
            # MINOR faults need an alias mapping of the memory: shared backings only.
            Variant("minor", ("-u", "MINOR"), backings=("shmem", "shared_hugetlb"), shared_only=True),
        ),
    ),
    Entry(
        name="memslot_perf_test",
        short="memslot_perf",
        doc="map, unmap, move and RW memslot operations while a guest runs (best/average times)",
        # -s caps the memslots (the default, all 32764, took 40 s per run here and overflowed the
        # map test: "Memslot count too high"); -l is the seconds per test; tests 0..5 all run.
        # At the lab scale (64 slots) only test 3, move active area: map and unmap take 6-156 s a
        # pass under TCG, and only a whole-area test (3, 4, 5) prints "Best slot setup"; move
        # active area is 6 ms a pass natively.
        build=lambda r: ["-s", str(r.sizing.slots), "-l", str(r.sizing.iterations),
                         *(["-f", "3", "-e", "3"] if r.sizing.slots <= 64 else ["-f", "0", "-e", "5"])],
        sizes=_scales(Sizes(iterations=1, slots=512), Sizes(iterations=5, slots=4096), Sizes(iterations=5, slots=32764),
                      lab=Sizes(iterations=5, slots=64)),
        markers=("memslot", "perf"),
        requires=(*KVM, KvmCap("NR_MEMSLOTS", 2)),
        expected_metrics=("best_slot_setup",),
    ),
    Entry(
        name="memslot_modification_stress_test",
        shown_sizes=("vcpus", "memory", "iterations"),
        short="memslot_modification_stress",
        doc="add and delete a memslot while vCPUs fault memory in",
        build=lambda r: [*_mem_vcpus(r), "-i", str(r.sizing.iterations), *r.mode_args],
        sizes=_scales(Sizes(64 * MIB, 2, 10), Sizes(1 * GIB, 4, 100), Sizes(2 * GIB, 40, 1000), lab=Sizes(16 * MIB, 1, 2)),
        markers=("memslot", "pagetable"),
        requires=KVM,
        per_vcpu=True,
        takes_modes=True,
    ),
    Entry(
        name="pre_fault_memory_test",
        short="pre_fault_memory",
        doc="KVM_PRE_FAULT_MEMORY into the TDP page tables (x86)",
        build=lambda r: [],
        sizes=_scales(Sizes(), Sizes(), Sizes()),
        markers=("pagetable",),
        requires=(*KVM, X86, KvmCap("PRE_FAULT_MEMORY")),
    ),
    Entry(
        name="set_memory_region_test",
        short="set_memory_region",
        doc="add, move and delete memory regions under a running vCPU, up to the memslot limit",
        build=lambda r: [str(r.sizing.iterations)],
        sizes=_scales(Sizes(iterations=2), Sizes(iterations=10), Sizes(iterations=100)),
        markers=("memslot",),
        requires=KVM,
        # It always fills every memslot KVM offers (32764): 138 s under TCG on lab-x86-tdp.
        # test_zero_memory_regions runs a vCPU with no memslot and asserts KVM_EXIT_INTERNAL_ERROR
        # (an emulation failure at the reset vector); test_delete_memory_region deletes the memslot
        # under the running guest, which ends in an emulation failure or a shutdown. PVM logs the
        # first as "kvm-pvm: INTERNAL_ERROR in batch emul: rip=0xfff0 ..."; stock KVM logs nothing.
        expected_kernel=(r"kvm-pvm: INTERNAL_ERROR in batch emul", r"KVM internal error", r"emulation failure"),
    ),
)

BY_NAME: dict[str, Entry] = {e.name: e for e in CATALOGUE}


def backing_needs(entry: Entry, run: Run) -> tuple[Requirement, ...]:
    """What the case's backing source needs for the whole guest memory of the run."""
    if not run.backing:
        return ()
    total = run.sizing.memory * (run.sizing.vcpus if entry.per_vcpu else 1)
    return backing_requirements(run.backing, total, run.host.hugetlb_default_kb)
