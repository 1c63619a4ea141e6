"""Decoding what KVM answered (:class:`.kvmapi.KvmAnswers`) into features. Pure: no I/O.

Kept apart from the probe so snapshots decode exactly like live answers, and so the bit
positions live in one place, each cited to the header or ``arch/arm64/tools/sysreg`` line of
the 6.12 tree it comes from.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

#: ID_AA64MMFR0_EL1.PARANGE encodings (``arch/arm64/tools/sysreg:1614-1623``).
_PARANGE_BITS = {0: 32, 1: 36, 2: 40, 3: 42, 4: 44, 5: 48, 6: 52, 7: 56}


def _bits(value: int, high: int, low: int) -> int:
    return (value >> low) & ((1 << (high - low + 1)) - 1)


@dataclass(frozen=True)
class X86KvmCpu:
    """What KVM offers a guest, from KVM_GET_SUPPORTED_CPUID (not what the host CPU has).

    The selftests size and map guests from this view (``kvm_get_cpu_address_width()``,
    6.12 ``lib/x86_64/processor.c:1124``); bit positions from ``include/x86_64/processor.h``.
    """

    gbpages: bool  # 0x80000001.EDX[26]: 1 GiB guest pages (kvm_page_table_test's 1G backing)
    la57: bool  # 0x7.0 ECX[16]: 5-level paging
    maxphyaddr: int | None  # 0x80000008.EAX[7:0]; None if KVM does not report the leaf
    maxvirtaddr: int | None  # 0x80000008.EAX[15:8]
    guest_phys_bits: int | None  # 0x80000008.EAX[23:16] (6.10+), 0 -> None: "same as maxphyaddr"
    vmx: bool  # 0x1 ECX[5]: KVM offers nested VMX
    svm: bool  # 0x80000001 ECX[2]: KVM offers nested SVM


def _leaf(entries: Sequence[Sequence[int]], function: int) -> Sequence[int] | None:
    """The entry for ``function`` at index 0, matched the way ``get_cpuid_entry()`` matches."""
    return next((e for e in entries if e[0] == function and e[1] == 0), None)


def decode_x86_cpuid(entries: Iterable[Sequence[int]]) -> X86KvmCpu:
    """Decode (function, index, flags, eax, ebx, ecx, edx) entries; a missing leaf reads as 0/None."""
    table = list(entries)
    zero = (0,) * 7
    leaf1 = _leaf(table, 0x1) or zero
    leaf7 = _leaf(table, 0x7) or zero
    ext1 = _leaf(table, 0x80000001) or zero
    ext8 = _leaf(table, 0x80000008)
    eax8 = None if ext8 is None else ext8[3]
    return X86KvmCpu(
        gbpages=bool(_bits(ext1[6], 26, 26)),
        la57=bool(_bits(leaf7[5], 16, 16)),
        maxphyaddr=None if eax8 is None else _bits(eax8, 7, 0),
        maxvirtaddr=None if eax8 is None else _bits(eax8, 15, 8),
        guest_phys_bits=(None if eax8 is None else _bits(eax8, 23, 16)) or None,
        vmx=bool(_bits(leaf1[5], 5, 5)),
        svm=bool(_bits(ext1[5], 2, 2)),
    )


@dataclass(frozen=True)
class Arm64KvmCpu:
    """The vCPU's view of the ID registers (KVM_GET_ONE_REG). A field is None when its register
    could not be read.

    Two granule views, because they answer different questions: ``granules`` (stage-1 TGRANx)
    are the page sizes a *guest* can use, which is what the selftests' guest modes test;
    ``s2_granules`` (TGRANx_2) are what the CPU offers a hypervisor for stage 2, which matters
    for nested virtualisation (KVM's own stage 2 always uses the host's page size).
    """

    ttrem: int | None  # ID_AA64MMFR2_EL1.BBM [55:52]: FEAT_BBM level 0/1/2 ("TTRem")
    fwb: bool | None  # MMFR2.FWB [43:40] == 1: FEAT_S2FWB
    parange_bits: int | None  # MMFR0.PARange [3:0] -> 32..56
    s2_granules: tuple[str, ...] | None  # stage-2 granules (TGRANx_2, 0 -> as stage 1)
    s2_52bit: tuple[str, ...] | None  # stage-2 granules with 52-bit output addresses
    hafdbs: int | None  # MMFR1.HAFDBS [3:0]: 0 none, 1 AF, 2 AF+DBM, 3 HAFT
    idc: bool | None  # CTR_EL0[28]: no D-cache clean to PoU needed for I/D coherence
    dic: bool | None  # CTR_EL0[29]: no I-cache invalidation to PoU needed
    granules: tuple[str, ...] | None = None  # stage-1 granules (TGRAN4/16/64)
    granules_52bit: tuple[str, ...] | None = None  # stage-1 granules with 52-bit addresses


#: Stage-1 fields (``arch/arm64/tools/sysreg:1584-1597``): granule -> (shift, NI value, lowest
#: 52-bit value). The last two are the arguments ``aarch64_get_supported_page_sizes()`` gives
#: ``max_ipa_for_page_size()`` (6.12 ``lib/aarch64/processor.c:568-578``). TGRAN64 has no 52-bit
#: value: the selftest passes TGRAN64_IMP, so any 64K granule counts as 52-bit capable there.
_S1_FIELDS = {"4k": (28, 0xF, 1), "16k": (20, 0x0, 2), "64k": (24, 0xF, 0)}
#: Stage-2 field shifts (``sysreg:1567-1583``): 0 as stage 1, 1 NI, 2 IMP, 3 52-bit.
_S2_SHIFTS = {"4k": 40, "16k": 32, "64k": 36}


def _has_lpa(mmfr0: int) -> bool:
    """FEAT_LPA: 52-bit PA with 64K pages, shown by PARange 0b0110."""
    return _PARANGE_BITS.get(_bits(mmfr0, 3, 0), 0) >= 52


def _stage1(mmfr0: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(granules, 52-bit granules). 64K's 52-bit output needs FEAT_LPA (PARange 52) instead."""
    present, wide = [], []
    for granule, (shift, ni, min52) in _S1_FIELDS.items():
        value = _bits(mmfr0, shift + 3, shift)
        if value == ni:
            continue
        present.append(granule)
        if (value >= min52 and granule != "64k") or (granule == "64k" and _has_lpa(mmfr0)):
            wide.append(granule)
    return tuple(present), tuple(wide)


def _stage2(mmfr0: int, s1: tuple[str, ...], s1_52: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(granules, 52-bit granules) for stage 2. TGRAN64_2 has no 52-bit value: as for stage 1,
    a 64K stage 2 reaches 52 bits with FEAT_LPA."""
    present, wide = [], []
    for granule, shift in _S2_SHIFTS.items():
        value = _bits(mmfr0, shift + 3, shift)
        if value == 0:  # "as stage 1"
            ok, is52 = granule in s1, granule in s1_52
        elif granule == "64k":
            ok, is52 = value == 2, value == 2 and _has_lpa(mmfr0)
        else:
            ok, is52 = value in (2, 3), value == 3
        if ok:
            present.append(granule)
        if ok and is52:
            wide.append(granule)
    return tuple(present), tuple(wide)


def decode_arm64_regs(regs: Mapping[str, int]) -> Arm64KvmCpu:
    """Decode ID_AA64MMFR0/1/2_EL1 and CTR_EL0 by name, as :data:`.kvmapi.ARM64_REGS` reads them.

    Fields: ``arch/arm64/tools/sysreg`` (6.12) MMFR0 at 1551, MMFR1.HAFDBS at 1690,
    MMFR2.BBM at 1707 and FWB at 1717, CTR_EL0 IDC/DIC at 2271-2272.
    """
    mmfr0 = regs.get("ID_AA64MMFR0_EL1")
    mmfr1 = regs.get("ID_AA64MMFR1_EL1")
    mmfr2 = regs.get("ID_AA64MMFR2_EL1")
    ctr = regs.get("CTR_EL0")
    s1 = s1_52 = s2 = s2_52 = None
    if mmfr0 is not None:
        s1, s1_52 = _stage1(mmfr0)
        s2, s2_52 = _stage2(mmfr0, s1, s1_52)
    return Arm64KvmCpu(
        ttrem=None if mmfr2 is None else _bits(mmfr2, 55, 52),
        fwb=None if mmfr2 is None else _bits(mmfr2, 43, 40) == 1,
        parange_bits=None if mmfr0 is None else _PARANGE_BITS.get(_bits(mmfr0, 3, 0)),
        s2_granules=s2,
        s2_52bit=s2_52,
        hafdbs=None if mmfr1 is None else _bits(mmfr1, 3, 0),
        idc=None if ctr is None else bool(_bits(ctr, 28, 28)),
        dic=None if ctr is None else bool(_bits(ctr, 29, 29)),
        granules=s1,
        granules_52bit=s1_52,
    )
