"""The host CPU as ``/proc/cpuinfo`` tells it (x86: vendor, flags, address sizes; arm64: implementer).

What KVM offers a *guest* (1 GiB pages, LA57, MAXPHYADDR) is a different question, answered
by ``KVM_GET_SUPPORTED_CPUID`` in ``kvmdecode``: the host can have ``pdpe1gb`` while KVM does not
pass it on, as on PVM hosts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: The flags that matter for KVM's MMU; the rest of the (long) flag list is not kept.
KVM_RELEVANT_FLAGS = frozenset(
    {"vmx", "svm", "ept", "npt", "vpid", "ept_ad", "pdpe1gb", "la57", "hypervisor", "nx", "pse", "pge"}
)
_ADDRESS_SIZES = re.compile(r"(\d+) bits physical, (\d+) bits virtual")


@dataclass(frozen=True)
class CpuFacts:
    vendor: str | None
    model_name: str | None
    flags: tuple[str, ...]
    phys_bits: int | None
    virt_bits: int | None

    def has(self, flag: str) -> bool:
        return flag in self.flags


def parse_cpuinfo(text: str) -> CpuFacts:
    """Facts from the first processor block of ``/proc/cpuinfo``."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    flags = set(fields.get("flags", fields.get("Features", "")).split())
    vendor = fields.get("vendor_id") or (f"arm implementer {fields['CPU implementer']}" if "CPU implementer" in fields else None)
    m = _ADDRESS_SIZES.search(fields.get("address sizes", ""))
    return CpuFacts(
        vendor=vendor,
        model_name=fields.get("model name"),
        flags=tuple(sorted(flags & KVM_RELEVANT_FLAGS)),
        phys_bits=int(m.group(1)) if m else None,
        virt_bits=int(m.group(2)) if m else None,
    )
