"""Scales: how big the shipped suite's cases are, and how they shrink to fit the host.

The scale is chosen by option (the same on every xdist worker and lab host, so the test
ids agree); the capping to the host's CPUs and memory happens at run time, and every cap
is reported in the result's notes.
"""

from __future__ import annotations

from dataclasses import dataclass

from .backing import GIB, MIB, format_size


@dataclass(frozen=True)
class Scale:
    name: str
    help: str
    #: kvm_page_table_test ``-b`` (total guest test memory) and ``-v``.
    page_table_bytes: int
    page_table_vcpus: int


SCALES: dict[str, Scale] = {
    s.name: s
    for s in (
        Scale("smoke", "tiny and fast, for CI", 64 * MIB, 2),
        Scale("default", "meaningful sizes capped to the host", 1 * GIB, 4),
    )
}

#: Never give a case more than this share of the host's available memory.
MEMORY_SHARE = 0.5
#: Smallest guest memory worth measuring; below it a capped case skips.
MIN_BYTES = 16 * MIB


@dataclass(frozen=True)
class Sizing:
    bytes: int
    vcpus: int
    notes: tuple[str, ...] = ()
    #: Set when the case cannot run meaningfully on this host.
    unfit: str | None = None

    @property
    def size_arg(self) -> str:
        return format_size(self.bytes)


def fit(want_bytes: int, want_vcpus: int, cpus_online: int | None, mem_available: int | None) -> Sizing:
    """Cap a case's memory and vCPUs to the host; say what was capped."""
    notes = []
    vcpus = want_vcpus
    if cpus_online is not None and cpus_online < want_vcpus:
        vcpus = max(cpus_online, 1)
        notes.append(f"vCPUs capped from {want_vcpus} to {vcpus} (online CPUs)")
    size = want_bytes
    if mem_available is not None:
        budget = int(mem_available * MEMORY_SHARE) // MIB * MIB
        if budget < want_bytes:
            size = budget
            notes.append(
                f"memory capped from {format_size(want_bytes)} to {format_size(size)} "
                f"(half of {mem_available // MIB} MiB available)"
            )
    unfit = None
    if size < MIN_BYTES:
        unfit = f"the host has too little free memory for a meaningful case ({size // MIB} MiB < {MIN_BYTES // MIB} MiB)"
    return Sizing(size, vcpus, tuple(notes), unfit)
