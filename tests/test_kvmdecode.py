"""host.kvmdecode: CPUID and arm64 ID register decoding, and the arm64 guest-mode rule of the 6.12 selftests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_kvmmm.host.kvmapi import KvmAnswers
from pytest_kvmmm.host.kvmdecode import (
    Arm64KvmCpu,
    X86KvmCpu,
    decode_arm64_regs,
    decode_x86_cpuid,
)

SNAPSHOTS = Path(__file__).parent / "snapshots" / "kvm"


def snapshot(name: str) -> KvmAnswers:
    return KvmAnswers.from_json(json.loads((SNAPSHOTS / name).read_text()))


# -- x86 -------------------------------------------------------------------------------------

INTEL_EPT = [  # (function, index, flags, eax, ebx, ecx, edx)
    (0x1, 0, 0, 0x806F8, 0x800, 0xF7FA3223, 0x178BFBFF),  # ECX[5] VMX
    (0x7, 0, 1, 0x2, 0xF1BF2FFB, 0x1B415F6E, 0xBC004410),  # ECX[16] LA57
    (0x7, 1, 1, 0x0, 0x0, 0x0, 0x0),
    (0x80000001, 0, 0, 0x0, 0x0, 0x121, 0x2C100800),  # EDX[26] GBPAGES
    (0x80000008, 0, 0, 0x392E, 0x200, 0x0, 0x0),  # 46 physical, 57 virtual
]
AMD_NPT = [
    (0x1, 0, 0, 0xA10F11, 0x800, 0xF6F83203, 0x178BFBFF),
    (0x7, 0, 1, 0x0, 0x219C07AB, 0x40068C, 0x10),
    (0x80000001, 0, 0, 0xA10F11, 0x40000000, 0x75C237FF, 0x2FD3FBFF),  # ECX[2] SVM
    (0x80000008, 0, 0, 0x303034, 0x0, 0x0, 0x0),  # 52 physical, 48 virtual, 48 for guests (4-level NPT)
]
THIS_HOST = [  # captured here: PVM, AMD EPYC
    (0x1, 0, 0, 0xA10F11, 0x1020800, 0x81202000, 0x78BFBFF),
    (0x7, 0, 1, 0x1, 0x1800002, 0x104, 0x20000000),
    (0x80000001, 0, 0, 0xA10F11, 0x40000000, 0x400393, 0x23D3FBFF),
    (0x80000008, 0, 0, 0x3030, 0x50020005, 0x7001, 0x0),
]


def test_intel_ept_host() -> None:
    assert decode_x86_cpuid(INTEL_EPT) == X86KvmCpu(
        gbpages=True, la57=True, maxphyaddr=46, maxvirtaddr=57, guest_phys_bits=None, vmx=True, svm=False
    )


def test_amd_npt_host_with_guest_phys_bits() -> None:
    assert decode_x86_cpuid(AMD_NPT) == X86KvmCpu(
        gbpages=True, la57=False, maxphyaddr=52, maxvirtaddr=48, guest_phys_bits=48, vmx=False, svm=True
    )


def test_this_pvm_host_offers_no_gbpages_although_the_cpu_has_them() -> None:
    assert decode_x86_cpuid(THIS_HOST) == X86KvmCpu(
        gbpages=False, la57=False, maxphyaddr=48, maxvirtaddr=48, guest_phys_bits=None, vmx=False, svm=False
    )


def test_missing_leaves_read_as_absent() -> None:
    cpu = decode_x86_cpuid([(0x0, 0, 0, 0xD, 0, 0, 0)])
    assert cpu == X86KvmCpu(False, False, None, None, None, False, False)


def test_leaf_7_matches_index_0_only() -> None:
    cpu = decode_x86_cpuid([(0x7, 1, 1, 0, 0, 1 << 16, 0)])
    assert not cpu.la57


@pytest.mark.parametrize(
    ("name", "gbpages", "la57", "maxphyaddr"),
    [("intel_ept.json", True, True, 46), ("amd_npt.json", True, False, 48), ("pvm_live.json", False, False, 48)],
)
def test_x86_snapshots_decode(name: str, gbpages: bool, la57: bool, maxphyaddr: int) -> None:
    cpuid = snapshot(name).cpuid
    assert cpuid is not None
    cpu = decode_x86_cpuid(cpuid)
    assert (cpu.gbpages, cpu.la57, cpu.maxphyaddr) == (gbpages, la57, maxphyaddr)


# -- arm64 registers -------------------------------------------------------------------------


def mmfr0(parange: int, tgran4: int, tgran16: int, tgran64: int, s2: tuple[int, int, int] = (0, 0, 0)) -> int:
    """ID_AA64MMFR0_EL1 from its fields; ``s2`` = (TGRAN4_2, TGRAN16_2, TGRAN64_2)."""
    return parange | tgran16 << 20 | tgran64 << 24 | tgran4 << 28 | s2[1] << 32 | s2[2] << 36 | s2[0] << 40


def test_ttrem2_host() -> None:
    regs = snapshot("arm64_ttrem2.json").arm64_regs
    assert regs is not None
    assert decode_arm64_regs(regs) == Arm64KvmCpu(
        ttrem=2, fwb=True, parange_bits=48, s2_granules=("4k", "16k", "64k"), s2_52bit=(),
        hafdbs=2, idc=True, dic=False, granules=("4k", "16k", "64k"), granules_52bit=(),
    )  # fmt: skip


def test_ttrem0_host() -> None:
    regs = snapshot("arm64_ttrem0.json").arm64_regs
    assert regs is not None
    assert decode_arm64_regs(regs) == Arm64KvmCpu(
        ttrem=0, fwb=False, parange_bits=40, s2_granules=("4k", "64k"), s2_52bit=(),
        hafdbs=0, idc=False, dic=False, granules=("4k", "64k"), granules_52bit=(),
    )  # fmt: skip


def test_stage2_fields_override_stage1() -> None:
    # Stage 1 has 4K and 16K; stage 2 says 4K NI (1), 16K IMP (2), 64K NI (1).
    cpu = decode_arm64_regs({"ID_AA64MMFR0_EL1": mmfr0(5, 0x0, 0x1, 0xF, s2=(1, 2, 1))})
    assert cpu.granules == ("4k", "16k")
    assert cpu.s2_granules == ("16k",) and cpu.s2_52bit == ()


def test_lpa2_host_has_52_bit_granules() -> None:
    # PARange 6 (52 bits), TGRAN4 1 and TGRAN16 2 (52-bit), TGRAN4_2/TGRAN16_2 3, TGRAN64_2 2.
    cpu = decode_arm64_regs({"ID_AA64MMFR0_EL1": mmfr0(6, 0x1, 0x2, 0x0, s2=(3, 3, 2))})
    assert cpu.parange_bits == 52
    assert cpu.granules_52bit == ("4k", "16k", "64k"), "64K reaches 52 bits through FEAT_LPA"
    assert cpu.s2_granules == ("4k", "16k", "64k") and cpu.s2_52bit == ("4k", "16k", "64k")


def test_52_bit_stage2_field_without_lpa_for_64k() -> None:
    cpu = decode_arm64_regs({"ID_AA64MMFR0_EL1": mmfr0(5, 0x0, 0x1, 0x0, s2=(3, 2, 2))})
    assert cpu.s2_52bit == ("4k",)


def test_registers_that_could_not_be_read_are_none() -> None:
    cpu = decode_arm64_regs({"CTR_EL0": 1 << 29})
    assert (cpu.dic, cpu.idc) == (True, False)
    assert (cpu.ttrem, cpu.fwb, cpu.parange_bits, cpu.hafdbs, cpu.granules, cpu.s2_granules) == (None,) * 6
