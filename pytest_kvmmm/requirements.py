"""Host requirements for your own tests (``kvm_selftests.run(..., requires=[HugetlbPages(2048, 512)])``):
the import path the README documents; they live in ``pytest_kvmmm.engine.requirements``."""

from .engine.requirements import (
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
    ThpMadvise,
    TtremLevel,
)

__all__ = [
    "AnyOf", "Arch", "GuestGbpages", "HugetlbPages", "IdleTracking", "KvmCap", "KvmParam", "KvmUsable",
    "MinMemory", "MinVcpus", "OnArch", "Requirement", "Tdp", "ThpMadvise", "TtremLevel",
]
