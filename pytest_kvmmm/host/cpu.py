"""The host CPU as ``/proc/cpuinfo`` tells it (x86: vendor, flags, address sizes; arm64:
implementer, part and ``Features``).

What KVM offers a *guest* (1 GiB pages, LA57, MAXPHYADDR) is a different question, answered
by ``KVM_GET_SUPPORTED_CPUID`` in ``kvmdecode``: the host can have ``pdpe1gb`` while KVM does not
pass it on, as on PVM hosts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: The flags that matter for KVM's MMU; the rest of the (long) flag list is not kept. arm64's
#: ``Features`` (hwcaps) cannot show FEAT_BBM, FWB or the granules (those come from the vCPU's ID
#: registers, ``kvmdecode``); kept are LSE atomics (stage-2 updates are cmpxchg loops), MTE (KVM
#: sanitises tags on stage-2 faults) and DC CVAP/CVADP (cache maintenance to PoP).
KVM_RELEVANT_FLAGS = frozenset(
    {"vmx", "svm", "ept", "npt", "vpid", "ept_ad", "pdpe1gb", "la57", "hypervisor", "nx", "pse", "pge"}
    | {"atomics", "mte", "mte3", "dcpop", "dcpodp"}
)
#: ``CPU implementer`` codes (MIDR_EL1.Implementer, ``arch/arm64/include/asm/cputype.h``).
ARM_IMPLEMENTERS = {
    0x00: "software (QEMU)", 0x41: "Arm", 0x42: "Broadcom", 0x43: "Cavium", 0x46: "Fujitsu", 0x48: "HiSilicon",
    0x4E: "NVIDIA", 0x50: "APM", 0x51: "Qualcomm", 0x61: "Apple", 0x6D: "Microsoft", 0xC0: "Ampere",
}
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
    vendor = fields.get("vendor_id") or _arm_implementer(fields.get("CPU implementer"))
    model = fields.get("model name") or (f"part {fields['CPU part']}" if "CPU part" in fields else None)
    m = _ADDRESS_SIZES.search(fields.get("address sizes", ""))
    return CpuFacts(
        vendor=vendor,
        model_name=model,
        flags=tuple(sorted(flags & KVM_RELEVANT_FLAGS)),
        phys_bits=int(m.group(1)) if m else None,
        virt_bits=int(m.group(2)) if m else None,
    )


def _arm_implementer(code: str | None) -> str | None:
    if code is None:
        return None
    try:
        name = ARM_IMPLEMENTERS.get(int(code, 0))
    except ValueError:
        name = None
    return f"{name} ({code})" if name else f"arm implementer {code}"
