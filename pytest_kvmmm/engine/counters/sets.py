"""Named counter sets per architecture, and the resolution of ``--kvm-counters`` against a host.

A set lists the tracepoints that answer one question (``mmu``: what did the MMU do, ``tlb``:
how often was a TLB flushed ...). Sets are supersets over kernels and hosts: a member this
host's tracefs does not offer is left out quietly (stock x86 KVM fires ``kvm:kvm_page_fault``,
PVM's shadow MMU fires ``kvmmmu:kvm_mmu_pagetable_walk`` instead). An explicit name the host
lacks is reported, once, in the header.

On arm64, ``kvm:kvm_guest_fault`` carries the fault's ESR; its fault status code (ESR bits
[5:0]) tells a translation fault (0b0001LL), an access-flag fault (0b0010LL) and a permission
fault (0b0011LL) apart. One counter per class, each with a perf filter on the ESR field.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .tracefs import EventIds, split_class, valid_name
from .vmstats import PREFIX as VM_PREFIX
from .vmstats import valid_stat

_X86: Mapping[str, tuple[str, ...]] = {
    # Each counted event costs about half a microsecond per hit (ci/bench_counters.py): the
    # default leaves out what fires per guest page-table walk, per guest PTE or per emulated
    # instruction on a shadow MMU (kvm_mmu_pagetable_walk, kvm_mmu_paging_element,
    # kvm_emulate_insn: 0.3 to 4.2 million per smoke case on PVM, x1.13 in time with the walks,
    # x1.00 without). ``faults`` counts the walks where they are the faults (PVM).
    "default": (
        "kvm:kvm_page_fault", "kvmmmu:fast_page_fault", "kvmmmu:kvm_mmu_get_page",
        "kvmmmu:kvm_mmu_split_huge_page", "kvmmmu:kvm_mmu_prepare_zap_page", "kvmmmu:kvm_mmu_zap_all_fast",
        "kvm:kvm_unmap_hva_range", "tlb:tlb_flush", "kvm:kvm_pv_tlb_flush", "kvm:kvm_exit", "kvm:kvm_userspace_exit",
    ),
    "faults": (
        "kvm:kvm_page_fault", "kvmmmu:fast_page_fault", "kvmmmu:kvm_mmu_pagetable_walk",
        "kvmmmu:handle_mmio_page_fault", "kvm:kvm_async_pf_not_present",
    ),
    "mmu": (
        "kvm:kvm_page_fault", "kvmmmu:*", "kvm:kvm_unmap_hva_range", "kvm:kvm_age_hva", "kvm:kvm_test_age_hva",
    ),
    "tlb": (
        "tlb:tlb_flush", "kvmmmu:kvm_mmu_prepare_zap_page", "kvmmmu:kvm_mmu_zap_all_fast",
        "kvm:kvm_pv_tlb_flush", "kvm:kvm_hv_flush_tlb", "kvm:kvm_hv_flush_tlb_ex",
    ),
    "exits": ("kvm:kvm_exit", "kvm:kvm_userspace_exit", "kvm:kvm_emulate_insn", "kvm:kvm_mmio", "kvm:kvm_pio"),
    "dirty": (
        "kvm:kvm_dirty_ring_push", "kvm:kvm_dirty_ring_reset", "kvm:kvm_dirty_ring_exit",
        "kvmmmu:kvm_mmu_split_huge_page", "kvmmmu:kvm_mmu_set_dirty_bit",
    ),
}

GUEST_FAULT = "kvm:kvm_guest_fault"
#: arm64 fault classes: a ftrace filter on the ESR's fault status code (bits [5:0]); ``{f}`` is
#: the field's name in the event's format (``hsr`` in 6.x, ``esr`` in some trees).
FAULT_CLASSES: Mapping[str, str] = {
    "translation": "({f} & 0x4) && !({f} & 0x38)",  # FSC 0b0001LL
    "access_flag": "({f} & 0x8) && !({f} & 0x34)",  # FSC 0b0010LL
    "permission": "({f} & 0x4) && ({f} & 0x8) && !({f} & 0x30)",  # FSC 0b0011LL
}
_CLASSED = tuple(f"{GUEST_FAULT}[{c}]" for c in FAULT_CLASSES)

_ARM64: Mapping[str, tuple[str, ...]] = {
    "default": (
        GUEST_FAULT, *_CLASSED, "kvm:kvm_access_fault", "kvm:kvm_unmap_hva_range", "kvm:kvm_exit",
        "kvm:kvm_userspace_exit", "kvm:kvm_mmio",
    ),
    "faults": (GUEST_FAULT, *_CLASSED, "kvm:kvm_access_fault"),
    "mmu": (
        GUEST_FAULT, *_CLASSED, "kvm:kvm_access_fault", "kvm:kvm_unmap_hva_range", "kvm:kvm_age_hva",
        "kvm:kvm_test_age_hva",
    ),
    "tlb": ("kvm:kvm_set_way_flush", "kvm:kvm_toggle_cache"),
    "exits": ("kvm:kvm_exit", "kvm:kvm_userspace_exit", "kvm:kvm_mmio_emulate", "kvm:kvm_mmio"),
    "dirty": ("kvm:kvm_dirty_ring_push", "kvm:kvm_dirty_ring_reset", "kvm:kvm_dirty_ring_exit"),
}

SETS: Mapping[str, Mapping[str, tuple[str, ...]]] = {"x86_64": _X86, "aarch64": _ARM64}
#: ``vm``: KVM's per-VM statistics from debugfs (``vmstats.py``), not tracepoints.
VM_SET = "vm"
#: ``default`` is what ``--kvm-counters`` alone counts.
SET_NAMES = ("default", *sorted({name for sets in SETS.values() for name in sets} - {"default"} | {VM_SET}))

#: The events whose count is "the faults" of a run, first found wins (derived figures).
FAULT_EVENTS = (GUEST_FAULT, "kvm:kvm_page_fault", "kvmmmu:kvm_mmu_pagetable_walk")


def parse_selection(value: str) -> tuple[str, ...]:
    """``mmu,tlb,kvm:kvm_exit`` -> its items; ``ValueError`` names a bad one."""
    items = tuple(v.strip() for v in value.split(",") if v.strip())
    if not items:
        raise ValueError("empty; give set names or subsys:event names")
    for item in items:
        if item.startswith(VM_PREFIX):
            if not valid_stat(item):
                raise ValueError(f"{item!r} is not a per-VM statistic like vm:remote_tlb_flush")
        elif ":" in item:
            if not valid_name(item):
                raise ValueError(f"{item!r} is not a tracepoint name like kvm:kvm_exit or kvmmmu:*")
            base, cls = split_class(item)
            if cls is not None and (base != GUEST_FAULT or cls not in FAULT_CLASSES):
                raise ValueError(
                    f"{item!r}: only {GUEST_FAULT} has classes ({', '.join(FAULT_CLASSES)})"
                )
        elif item not in SET_NAMES:
            raise ValueError(f"unknown counter set {item!r}; choose from {', '.join(SET_NAMES)} or name subsys:event")
    return items


@dataclass(frozen=True)
class Resolved:
    """The counters to open on this host, and what the selection asked for that it lacks."""

    #: ``name`` -> perf id (a classed name has its base event's id).
    counters: Mapping[str, int]
    missing: tuple[str, ...] = ()


def expand(selection: Sequence[str], arch: str) -> tuple[list[str], list[str]]:
    """Set names to patterns (this arch's members), keeping explicit names; returns
    (patterns from sets, explicit names)."""
    sets = SETS.get(arch, {})
    from_sets: list[str] = []
    explicit: list[str] = []
    for item in selection:
        if ":" in item:
            explicit.append(item)
            continue
        from_sets += sets.get(item, ())
    return from_sets, explicit


def resolve(selection: Sequence[str], arch: str, ids: EventIds) -> Resolved:
    """Names (globs expanded, in selection order, no duplicates) with their ids on this host."""
    from_sets, explicit = expand(selection, arch)
    counters: dict[str, int] = {}
    missing: list[str] = []
    for pattern in [*from_sets, *explicit]:
        base, cls = split_class(pattern)
        names = ids.matching(base)
        if not names and pattern in explicit:
            missing.append(pattern)
        for name in names:
            counters.setdefault(name if cls is None else f"{name}[{cls}]", ids.ids[name])
    return Resolved(counters, tuple(missing))
