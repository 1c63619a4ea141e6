"""The host fingerprint of a saved run: what must match for a before/after comparison to mean anything.

Pure: host facts (and the selftests build) in, a small JSON-ready record out. Two kinds of
fields:

* **the machine** (CPU model, arch, online CPUs, memory, KVM flavour, MMU mode, THP): a
  difference means the numbers come from different machines or setups, so verdicts are
  refused unless forced;
* **what a before/after compares** (kernel release, selftests build): these are expected
  to differ ("run on the old kernel, reboot into the new one"), and are shown, never refused.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..engine.discovery import SearchRoot
from ..host.model import HostFacts
from ..host.units import GIB
from ..provision.cache import read_manifest

#: MemTotal moves by a few MiB between kernel versions (reserved memory): a match allows this much.
MEMORY_TOLERANCE = 0.03


@dataclass(frozen=True)
class Fingerprint:
    machine: str | None = None
    cpu_model: str | None = None
    cpus: int | None = None
    #: MemTotal in GiB, to a tenth: enough to tell machines apart, not boots.
    memory_gib: float | None = None
    kvm_flavour: str | None = None
    #: MMU mode: two-dimensional paging (EPT/NPT) and the TDP MMU on x86.
    tdp: bool | None = None
    tdp_mmu: bool | None = None
    #: MMU mode on arm64: FEAT_BBM level and the KVM mode (vhe, nvhe, protected).
    ttrem: int | None = None
    arm64_mode: str | None = None
    thp: str | None = None
    thp_shmem: str | None = None
    kernel_release: str | None = None
    #: The kernel version the selftests were built from, or their directory when unknown.
    selftests: str | None = None
    #: "tcg" for a kvmmm lab host (``emulation.py``), None for a real one.
    emulated: str | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Fingerprint:
        """Unknown keys are ignored and missing ones are unknown (``None``): a newer minor field
        never makes an older baseline unreadable."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


#: (field, label) of the machine: a difference refuses verdicts.
MACHINE_FIELDS = (
    ("emulated", "emulated"),
    ("machine", "arch"),
    ("cpu_model", "CPU model"),
    ("cpus", "online CPUs"),
    ("memory_gib", "memory (GiB)"),
    ("kvm_flavour", "KVM flavour"),
    ("tdp", "TDP"),
    ("tdp_mmu", "TDP MMU"),
    ("ttrem", "arm64 TTRem"),
    ("arm64_mode", "arm64 KVM mode"),
    ("thp", "THP enabled"),
    ("thp_shmem", "THP shmem_enabled"),
)
#: (field, label) of what a before/after is about: shown, never refused.
UNDER_TEST_FIELDS = (("kernel_release", "kernel"), ("selftests", "selftests build"))
#: Machine fields whose difference refuses verdicts even with --force: an emulated host's
#: timings measure the emulator, never comparable with a physical host's.
NEVER_FORCED = ("emulated",)


@dataclass(frozen=True)
class Difference:
    label: str
    before: object
    after: object

    def __str__(self) -> str:
        return f"{self.label} {_show(self.before)} -> {_show(self.after)}"


def _show(value: object) -> str:
    if value is None:
        return "unknown"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def selftests_build(roots: Sequence[SearchRoot]) -> str | None:
    """The kernel version of the build a run uses (its kvmmm-build manifest), else its directory."""
    if not roots:
        return None
    manifest = read_manifest(roots[0].path)
    return manifest.kernel_version if manifest is not None else str(roots[0].path)


def fingerprint(host: HostFacts, selftests: str | None, emulated: str | None = None) -> Fingerprint:
    k = host.kvm
    return Fingerprint(
        emulated=emulated,
        machine=host.machine,
        cpu_model=host.cpu.model_name,
        cpus=host.cpus_online,
        memory_gib=None if host.mem_total is None else round(host.mem_total / GIB, 1),
        kvm_flavour=k.flavour,
        tdp=k.tdp,
        tdp_mmu=k.tdp_mmu,
        ttrem=k.ttrem,
        arm64_mode=k.arm64_mode,
        thp=host.thp.enabled,
        thp_shmem=host.thp.shmem_enabled,
        kernel_release=host.kernel_release,
        selftests=selftests,
    )


def _same(name: str, a: object, b: object) -> bool:
    if name == "memory_gib" and isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return abs(a - b) <= MEMORY_TOLERANCE * max(a, b)
    return a == b


def machine_differences(before: Fingerprint, after: Fingerprint) -> list[Difference]:
    """What makes the two runs come from different machines or setups (refuses verdicts)."""
    return [
        Difference(label, getattr(before, name), getattr(after, name))
        for name, label in MACHINE_FIELDS
        if not _same(name, getattr(before, name), getattr(after, name))
    ]


def unforceable(differences: Sequence[Difference]) -> list[Difference]:
    """The differences that refuse verdicts even when forced."""
    labels = {label for name, label in MACHINE_FIELDS if name in NEVER_FORCED}
    return [d for d in differences if d.label in labels]


def compared_differences(before: Fingerprint, after: Fingerprint) -> list[Difference]:
    """What the before/after compares: the kernel and the selftests build, where they differ."""
    return [
        Difference(label, getattr(before, name), getattr(after, name))
        for name, label in UNDER_TEST_FIELDS
        if getattr(before, name) != getattr(after, name)
    ]
