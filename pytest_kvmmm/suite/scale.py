"""Scales: how big the suite's cases are, and how they shrink to fit the host.

The scale is chosen by option (the same on every xdist worker and lab host, so the test
ids agree); each catalogue entry says what it means in sizes (``Sizes``), and the capping
to the host's CPUs and memory happens at run time, with every cap reported in the
result's notes.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..host.units import MIB, format_size


@dataclass(frozen=True)
class Scale:
    name: str
    help: str


SCALES: dict[str, Scale] = {
    s.name: s
    for s in (
        Scale("smoke", "tiny and fast, for CI"),
        Scale("lab", "smoke sizes cut to one vCPU and 16M where a test allows it: for emulated lab hosts (QEMU TCG, ci/lab)"),
        Scale("default", "meaningful sizes capped to the host"),
        Scale("stress", "the sizes of KVM MMU cover letters (e.g. 40 vCPUs over 20G), when the host has them"),
    )
}


@dataclass(frozen=True)
class Sizes:
    """What a scale asks of one selftest. ``memory`` is per vCPU or in total, as its entry says."""

    memory: int = 0
    vcpus: int = 1
    iterations: int = 0
    #: Memslot count cap (memslot_perf_test ``-s``).
    slots: int = 0


#: Never give a case more than this share of the host's available memory.
MEMORY_SHARE = 0.5
#: Smallest guest memory worth measuring; below it a capped case skips.
MIN_BYTES = 16 * MIB


@dataclass(frozen=True)
class Sizing:
    """Sizes after capping to the host. ``memory`` keeps the meaning it had in ``Sizes``."""

    memory: int
    vcpus: int
    iterations: int
    slots: int = 0
    notes: tuple[str, ...] = ()
    #: Set when the case cannot run meaningfully on this host.
    unfit: str | None = None

    @property
    def size_arg(self) -> str:
        return format_size(self.memory)


def fit(
    want: Sizes,
    cpus_online: int | None,
    mem_available: int | None,
    per_vcpu: bool = False,
) -> Sizing:
    """Cap a case's vCPUs to the online CPUs and its memory to a share of what is available."""
    notes = []
    vcpus = want.vcpus
    if cpus_online is not None and cpus_online < want.vcpus:
        vcpus = max(cpus_online, 1)
        notes.append(f"vCPUs capped from {want.vcpus} to {vcpus} (online CPUs)")
    memory = want.memory
    total = memory * (vcpus if per_vcpu else 1)
    if memory and mem_available is not None:
        budget = int(mem_available * MEMORY_SHARE) // MIB * MIB
        if budget < total:
            memory = budget // (vcpus if per_vcpu else 1) // MIB * MIB
            what = "per vCPU " if per_vcpu else ""
            notes.append(
                f"memory {what}capped from {format_size(want.memory)} to {format_size(memory)} "
                f"({MEMORY_SHARE:.0%} of {mem_available // MIB} MiB available)"
            )
    unfit = None
    if want.memory and memory < MIN_BYTES:
        unfit = (
            f"the host has too little free memory for a meaningful case "
            f"({memory // MIB} MiB < {MIN_BYTES // MIB} MiB)"
        )
    return Sizing(memory, vcpus, want.iterations, want.slots, tuple(notes), unfit)
