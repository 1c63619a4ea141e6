"""KVM facts: the device, the flavour, module parameters, capabilities and the CPU KVM offers guests.

sysfs gives the flavour and the parameters (with whether each is writable: on some hosts,
PVM among them, every ``kvm`` parameter is 0444 even for root); the KVM API answers
(``kvmapi.KvmAnswers``, live or from a snapshot) give the rest; ``kvmdecode`` turns registers
into facts.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from .kmsg import read_kmsg_records
from .kvmapi import KvmAnswers
from .kvmdecode import Arm64KvmCpu, X86KvmCpu, decode_arm64_regs, decode_x86_cpuid
from .sysfs import FactReader

#: Modules whose parameters are read; the first vendor module present names the flavour.
KVM_MODULES = ("kvm", "kvm_intel", "kvm_amd", "kvm_pvm")
VENDOR_MODULES = ("kvm_intel", "kvm_amd", "kvm_pvm")
#: Parameters that shape the MMU; the report shows these first.
MMU_PARAMS = (
    "kvm.tdp_mmu", "kvm.eager_page_split", "kvm.nx_huge_pages", "kvm.nx_huge_pages_recovery_ratio",
    "kvm.nx_huge_pages_recovery_period_ms", "kvm_intel.ept", "kvm_intel.eptad", "kvm_intel.pml",
    "kvm_amd.npt", "kvm_intel.nested", "kvm_amd.nested",
)
_ARM_MODE_CMDLINE = re.compile(r"(?:^|\s)kvm-arm\.mode=(\S+)")
#: arch/arm64/kvm/arm.c: "kvm [1]: {VHE,Hyp nVHE,Protected nVHE,Protected hVHE} mode initialized successfully".
_ARM_MODE_LOG = re.compile(r"(?:^|[:;]\s*)(VHE|Hyp nVHE|Protected nVHE|Protected hVHE) mode initialized successfully")
_ARM_MODE_LOG_NAMES = {"VHE": "vhe", "Hyp nVHE": "nvhe", "Protected nVHE": "protected", "Protected hVHE": "protected"}
_ARM_MODE_NAMES = {"nvhe": "nvhe", "protected": "protected", "nested": "vhe", "none": "none"}


@dataclass(frozen=True)
class ModuleParam:
    value: str
    writable: bool

    def as_bool(self) -> bool | None:
        """``Y``/``N`` (and ``1``/``0``), as ``get_module_param_bool`` reads them."""
        first = self.value[:1].upper()
        return True if first in ("Y", "1") else False if first in ("N", "0") else None


@dataclass(frozen=True)
class KvmFacts:
    available: bool
    #: Why /dev/kvm cannot be used ("does not exist", "permission denied ..."), else None.
    unavailable_reason: str | None
    api_version: int | None
    #: kvm_intel, kvm_amd, kvm_pvm, arm64-vhe, arm64-nvhe, arm64-protected, s390, riscv; None if no KVM.
    flavour: str | None
    params: Mapping[str, ModuleParam] = field(default_factory=dict)
    caps: Mapping[str, int] = field(default_factory=dict)
    vm_caps: Mapping[str, int] = field(default_factory=dict)
    x86: X86KvmCpu | None = None
    arm64: Arm64KvmCpu | None = None
    arm64_mode: str | None = None

    def param(self, name: str) -> bool | None:
        p = self.params.get(name)
        return None if p is None else p.as_bool()

    def cap(self, name: str) -> int:
        """A capability's value, VM scope first (it is the more precise answer); 0 if absent."""
        key = name if name.startswith("KVM_CAP_") else f"KVM_CAP_{name}"
        return self.vm_caps.get(key, self.caps.get(key, 0))

    @property
    def tdp_mmu(self) -> bool | None:
        return self.param("kvm.tdp_mmu")

    @property
    def tdp(self) -> bool | None:
        """Two-dimensional paging: EPT on Intel, NPT on AMD; PVM shadows guest page tables; None if unknown."""
        for name in ("kvm_intel.ept", "kvm_amd.npt"):
            if name in self.params:
                return self.param(name)
        return False if self.flavour == "kvm_pvm" else None

    @property
    def ttrem(self) -> int | None:
        return None if self.arm64 is None else self.arm64.ttrem

    @property
    def ipa_size(self) -> int | None:
        return self.caps.get("KVM_CAP_ARM_VM_IPA_SIZE") or None


def module_params(r: FactReader) -> dict[str, ModuleParam]:
    params: dict[str, ModuleParam] = {}
    for module in KVM_MODULES:
        base = f"/sys/module/{module}/parameters"
        try:
            names = sorted(p.name for p in r.path(base).iterdir())
        except OSError:
            continue
        for name in names:
            path = f"{base}/{name}"
            value = r.get(f"param.{module}.{name}", lambda path=path: r.text(path).strip())  # type: ignore[misc]
            if value is not None:
                params[f"{module}.{name}"] = ModuleParam(value, r.writable(path))
    return params


def kernel_log(r: FactReader) -> str:
    """The kernel log: /dev/kmsg read without blocking (live), or the captured text (snapshot)."""
    if not r.live:
        return r.get("kernel_log", lambda: r.text("/dev/kmsg")) or ""
    try:
        fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        r.unknown["kernel_log"] = f"cannot read /dev/kmsg: {exc.strerror or exc}"
        return ""
    try:
        return "".join(read_kmsg_records(fd))
    finally:
        os.close(fd)


def arm64_mode(r: FactReader) -> str | None:
    """VHE / nVHE / protected: ``kvm-arm.mode=`` on the command line, else KVM's init line in the log."""
    cmdline = r.get("cmdline", lambda: r.text("/proc/cmdline")) or ""
    m = _ARM_MODE_CMDLINE.search(cmdline)
    if m and m.group(1) in _ARM_MODE_NAMES:
        return _ARM_MODE_NAMES[m.group(1)]
    found = _ARM_MODE_LOG.findall(kernel_log(r))
    if found:
        return _ARM_MODE_LOG_NAMES[found[-1]]
    r.unknown.setdefault("arm64_mode", "no kvm-arm.mode= on the command line and no KVM init line in the kernel log")
    return None


def _flavour(machine: str | None, r: FactReader, available: bool) -> tuple[str | None, str | None]:
    mode = None
    if machine in ("aarch64", "arm64"):
        mode = arm64_mode(r)
        return (f"arm64-{mode}" if mode else "arm64"), mode
    for module in VENDOR_MODULES:
        if r.path(f"/sys/module/{module}").is_dir():
            return module, None
    if machine == "s390x":
        return "s390", None
    if machine in ("riscv64",):
        return "riscv", None
    return ("kvm" if available else None), None


def kvm_facts(r: FactReader, machine: str | None, answers: KvmAnswers) -> KvmFacts:
    params = module_params(r)
    available = answers.open_error is None
    if not available:
        r.unknown["kvm"] = answers.open_error or "unknown"
    for step, why in answers.errors.items():
        r.unknown[f"kvm.{step}"] = why
    flavour, mode = _flavour(machine, r, available)
    return KvmFacts(
        available=available,
        unavailable_reason=answers.open_error,
        api_version=answers.api_version,
        flavour=flavour,
        params=params,
        caps=dict(answers.caps),
        vm_caps=dict(answers.vm_caps),
        x86=decode_x86_cpuid(answers.cpuid) if answers.cpuid else None,
        arm64=decode_arm64_regs(answers.arm64_regs) if answers.arm64_regs else None,
        arm64_mode=mode,
    )
