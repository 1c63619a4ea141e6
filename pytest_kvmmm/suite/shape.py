"""What a selftest test ran as: its case, variant, backing source, guest mode and sizes.

A catalogue case knows all of it (``of_case``: the case and the sizes ``run_case`` capped to
the host), so a record and the reports that show it (Allure's title and parameters) never
read it back from the command line. A test of one's own (a ``kvm_selftest`` marker, the
``kvm_selftests`` fixture) has no case: its arguments are all there is, and ``of_argv`` reads
them once, with what the catalogue says about a binary it knows. Pure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..engine.guest_modes import DEFAULT_MODE
from ..host.units import format_size, parse_size
from .backing import BACKING_SOURCES
from .catalogue import BY_NAME, Entry
from .scale import Sizing

if TYPE_CHECKING:  # cases.py makes a case's shape: no import cycle at run time
    from .cases import Case

#: Catalogue entries by every name of their binary.
ENTRIES: dict[str, Entry] = {**{alias: e for e in BY_NAME.values() for alias in e.aliases}, **BY_NAME}
#: Where a binary of one's own test takes its vCPU count, when not ``-v``.
_VCPU_FLAG = {"max_guest_memory_test": "-c", "mmu_stress_test": "-c"}
#: Binaries whose ``-i`` is a number of iterations.
_ITERATIONS = ("dirty_log_test", "dirty_log_perf_test", "memslot_modification_stress_test")


@dataclass(frozen=True)
class Shape:
    """The case a test ran and its sizes; None where the run does not say (its arguments carry
    no such size, or it skipped before it was sized)."""

    case_id: str | None = None
    variant: str | None = None
    backing: str | None = None
    #: The stable guest-mode name (``pxxv48_4k``), for a binary that takes ``-m``.
    mode: str | None = None
    vcpus: int | None = None
    memory_per_vcpu: int | None = None
    memory_total: int | None = None
    iterations: int | None = None

    @property
    def story(self) -> str | None:
        """What tells the cases of one binary apart: its variant, else its backing source."""
        if self.case_id is None:
            return None
        return self.variant or self.backing or "default"

    def size_text(self) -> str:
        """``2 vCPUs x 32M (64M total)``, ``1 vCPU, 64M``, ``64M total``; '' without sizes."""
        if self.vcpus is None:
            return f"{format_size(self.memory_total)} total" if self.memory_total else ""
        cpus = f"{self.vcpus} vCPU{'s' if self.vcpus != 1 else ''}"
        if self.memory_per_vcpu is None or self.memory_total is None:
            return cpus
        if self.vcpus == 1:
            return f"{cpus}, {format_size(self.memory_total)}"
        return f"{cpus} x {format_size(self.memory_per_vcpu)} ({format_size(self.memory_total)} total)"


def _memory(entry: Entry, vcpus: int | None, memory: int | None) -> tuple[int | None, int | None]:
    """(per vCPU, total) of a memory size that means per vCPU or in total, as the entry says."""
    if memory is None:
        return None, None
    n = vcpus or 1
    return (memory, memory * n) if entry.per_vcpu else (memory // n, memory)


def of_case(case: Case, sizing: Sizing | None) -> Shape:
    """A catalogue case, with the sizes its arguments carry (``Entry.shown_sizes``) once sized."""
    entry = case.entry
    shown = entry.shown_sizes if sizing is not None else ()
    vcpus = sizing.vcpus if sizing is not None and "vcpus" in shown else None
    memory = sizing.memory if sizing is not None and "memory" in shown and sizing.memory else None
    per_vcpu, total = _memory(entry, vcpus, memory)
    return Shape(
        case_id=case.id,
        variant=case.variant.id,
        backing=case.backing if case.backing in BACKING_SOURCES else None,
        mode=case.mode if entry.takes_modes else None,
        vcpus=vcpus,
        memory_per_vcpu=per_vcpu,
        memory_total=total,
        iterations=sizing.iterations if sizing is not None and "iterations" in shown else None,
    )


def _flag(args: Sequence[str], flag: str) -> str | None:
    """The value after ``flag`` in a selftest's arguments."""
    for i, arg in enumerate(args[:-1]):
        if arg == flag:
            return args[i + 1]
    return None


def _size(text: str | None) -> int | None:
    try:
        return None if text is None else parse_size(text)
    except ValueError:
        return None


def of_argv(name: str, argv: Sequence[str]) -> Shape:
    """A test of one's own: what its arguments (``argv[0]`` is the binary) say, for a binary the
    catalogue knows (an unknown binary's ``-b`` or ``-m`` may mean anything)."""
    args = list(argv[1:])
    entry = ENTRIES.get(name)
    raw_vcpus = _flag(args, _VCPU_FLAG.get(name, "-v"))
    vcpus = int(raw_vcpus) if raw_vcpus is not None and raw_vcpus.isdigit() else None
    memory = _size(_flag(args, "-b")) if entry is not None else None
    per_vcpu, total = _memory(entry, vcpus, memory) if entry is not None else (None, None)
    mode = None
    if entry is not None and entry.takes_modes:
        mode_id = _flag(args, "-m")
        mode = DEFAULT_MODE if mode_id is None else f"id {mode_id}"
    backing = _flag(args, "-s")
    raw_iterations = _flag(args, "-i") if name in _ITERATIONS else None
    return Shape(
        backing=backing if backing in BACKING_SOURCES else None,  # -s is a slot size to some binaries
        mode=mode,
        vcpus=vcpus,
        memory_per_vcpu=per_vcpu,
        memory_total=total,
        iterations=int(raw_iterations) if raw_iterations is not None and raw_iterations.isdigit() else None,
    )
