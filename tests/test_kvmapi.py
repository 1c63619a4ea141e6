"""host.kvmapi: the live probe on this host, failure paths, JSON, and the arm64 path through a fake ioctl."""

from __future__ import annotations

import ctypes
import errno
import json
import os
import platform
import re
import struct
from pathlib import Path
from typing import Union

import pytest

from pytest_kvmmm.host.kvmapi import (
    ARM64_REGS,
    CAPS,
    VM_CAPS,
    KvmAnswers,
    arm64_sys_reg,
    probe_kvm,
)

SNAPSHOTS = Path(__file__).parent / "snapshots" / "kvm"


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


needs_kvm = pytest.mark.skipif(
    not os.path.exists("/dev/kvm") or not os.access("/dev/kvm", os.R_OK | os.W_OK),
    reason="/dev/kvm is absent or not read-writable (load kvm, run as root or join the kvm group)",
)


@needs_kvm
def test_live_probe_of_this_host() -> None:
    before = _open_fds()
    answers = probe_kvm()
    assert _open_fds() == before, "the probe must close the system, VM and vCPU fds it opened"
    assert answers.open_error is None and answers.api_version == 12
    assert answers.caps["KVM_CAP_NR_MEMSLOTS"] > 1
    assert set(answers.caps) == set(CAPS), answers.errors
    assert set(answers.vm_caps) == set(VM_CAPS), answers.errors
    if platform.machine() == "x86_64":
        assert answers.cpuid is not None
        assert any(e[0] == 0x80000001 for e in answers.cpuid)
        assert answers.arm64_regs is None


@needs_kvm
def test_live_answers_survive_json() -> None:
    answers = probe_kvm()
    again = KvmAnswers.from_json(json.loads(json.dumps(answers.to_json())))
    assert again == answers


def test_missing_device_is_an_open_error(tmp_path: Path) -> None:
    answers = probe_kvm(str(tmp_path / "kvm"))
    assert answers.open_error == f"{tmp_path / 'kvm'} does not exist (kvm module not loaded?)"
    assert answers == KvmAnswers(answers.open_error, None)


def test_permission_denied_says_what_to_do() -> None:
    def denied(path: str, flags: int) -> int:
        raise PermissionError(errno.EACCES, "Permission denied", path)

    answers = probe_kvm(_open=denied)
    assert answers.open_error == "permission denied on /dev/kvm (run as root or join the kvm group)"


def test_plain_file_records_enotty_and_closes(tmp_path: Path) -> None:
    fake = tmp_path / "kvm"
    fake.write_bytes(b"")
    before = _open_fds()
    answers = probe_kvm(str(fake), machine="x86_64")
    assert _open_fds() == before
    assert answers.open_error is None and answers.api_version is None
    assert answers.errors == {"api_version": "ENOTTY: Inappropriate ioctl for device"}
    assert answers.caps == {} and answers.cpuid is None


def test_wrong_api_version_stops_asking() -> None:
    answers = probe_kvm(machine="x86_64", _open=lambda p, f: 3, _close=lambda fd: None, _ioctl=lambda fd, r, a: 11)
    assert answers.api_version == 11 and answers.caps == {}
    assert "expected 12" in answers.errors["api_version"]


# -- arm64 through a fake ioctl --------------------------------------------------------------

#: An arm64 host like a Cortex/QEMU ``max`` CPU: MMFR0 PARange 5 (48 bits), TGRAN4/64 IMP,
#: TGRAN16 IMP, and TGRANx_2 = 2 (stage 2 implemented for all three); MMFR1 HAFDBS 2;
#: MMFR2 BBM 2, FWB 1; CTR_EL0 IDC 1, DIC 0.
ARM64_VALUES = {
    "ID_AA64MMFR0_EL1": 0x0000022200101125,
    "ID_AA64MMFR1_EL1": 0x0000000010312122,
    "ID_AA64MMFR2_EL1": 0x0021011100001011,
    "CTR_EL0": 0x9444C004,
}
Arg = Union[int, bytes, bytearray]


class FakeArm64Kvm:
    """Answers the probe's ioctls as an arm64 6.12 host would, checking every request it gets."""

    KVM, VM, VCPU = 100, 101, 102
    TARGET = 5  # KVM_ARM_TARGET_GENERIC_V8

    def __init__(self, fail_reg: str | None = None) -> None:
        self.calls: list[tuple[int, int, object]] = []
        self.closed: list[int] = []
        self.fail_reg = fail_reg

    def open(self, path: str, flags: int) -> int:
        assert flags & os.O_RDWR and flags & os.O_CLOEXEC
        return self.KVM

    def close(self, fd: int) -> None:
        self.closed.append(fd)

    def ioctl(self, fd: int, request: int, arg: Arg) -> int | bytes:
        self.calls.append((fd, request, arg if isinstance(arg, int) else bytes(arg)))
        if request == 0xAE00:  # KVM_GET_API_VERSION
            return 12
        if request == 0xAE03:  # KVM_CHECK_EXTENSION: system or VM fd
            assert fd in (self.KVM, self.VM) and isinstance(arg, int)
            return {165: 48, 105: 1, 10: 32767, 223: 1048576}.get(arg, 0)
        if request == 0xAE01:  # KVM_CREATE_VM, type = IPA size
            assert (fd, arg) == (self.KVM, 48)
            return self.VM
        if request == 0xAE41:  # KVM_CREATE_VCPU
            assert (fd, arg) == (self.VM, 0)
            return self.VCPU
        if request == 0x8020AEAF:  # KVM_ARM_PREFERRED_TARGET fills struct kvm_vcpu_init
            assert fd == self.VM and isinstance(arg, bytearray) and len(arg) == 32
            struct.pack_into("=I", arg, 0, self.TARGET)
            return 0
        if request == 0x4020AEAE:  # KVM_ARM_VCPU_INIT takes that struct back
            assert fd == self.VCPU and isinstance(arg, bytes) and len(arg) == 32
            assert struct.unpack_from("=8I", arg) == (self.TARGET,) + (0,) * 7
            return arg
        if request == 0x4010AEAB:  # KVM_GET_ONE_REG: struct kvm_one_reg {u64 id; u64 addr}
            assert fd == self.VCPU and isinstance(arg, bytes) and len(arg) == 16
            reg_id, addr = struct.unpack("=QQ", arg)
            name = next(n for n, i in ARM64_REGS.items() if i == reg_id)
            if name == self.fail_reg:
                raise OSError(errno.ENOENT, "No such file or directory")
            ctypes.c_uint64.from_address(addr).value = ARM64_VALUES[name]
            return arg
        raise OSError(errno.ENOTTY, "Inappropriate ioctl for device")

    def probe(self) -> KvmAnswers:
        return probe_kvm("/dev/kvm", "aarch64", _ioctl=self.ioctl, _open=self.open, _close=self.close)


def test_arm64_register_ids_match_the_uapi_encoding() -> None:
    assert arm64_sys_reg(3, 0, 0, 7, 0) == 0x603000000013C038
    assert ARM64_REGS == {
        "ID_AA64MMFR0_EL1": 0x603000000013C038,
        "ID_AA64MMFR1_EL1": 0x603000000013C039,
        "ID_AA64MMFR2_EL1": 0x603000000013C03A,
        "CTR_EL0": 0x603000000013D801,
    }


def test_arm64_probe_sends_the_right_requests_and_structs() -> None:
    kvm = FakeArm64Kvm()
    answers = kvm.probe()
    assert answers.errors == {}
    assert answers.arm64_regs == ARM64_VALUES and answers.cpuid is None
    assert answers.caps["KVM_CAP_ARM_VM_IPA_SIZE"] == 48
    assert answers.vm_caps["KVM_CAP_DIRTY_LOG_RING_ACQ_REL"] == 1048576
    requests = [request for _, request, _ in kvm.calls]
    assert 0xC008AE05 not in requests, "no KVM_GET_SUPPORTED_CPUID on arm64"
    # The order of aarch64_get_supported_page_sizes(): VM, vCPU, preferred target, init, ONE_REG.
    tail = [r for r in requests if r != 0xAE03]
    assert tail == [0xAE00, 0xAE01, 0xAE41, 0x8020AEAF, 0x4020AEAE] + [0x4010AEAB] * 4
    asked_on_vm = [arg for fd, request, arg in kvm.calls if request == 0xAE03 and fd == kvm.VM]
    assert asked_on_vm == [CAPS[name] for name in VM_CAPS]
    assert kvm.closed == [kvm.VCPU, kvm.VM, kvm.KVM], "every fd closed, newest first"


def test_arm64_register_failure_is_recorded_not_raised() -> None:
    kvm = FakeArm64Kvm(fail_reg="ID_AA64MMFR2_EL1")
    answers = kvm.probe()
    assert answers.arm64_regs is not None and "ID_AA64MMFR2_EL1" not in answers.arm64_regs
    assert answers.errors == {"one_reg.ID_AA64MMFR2_EL1": "ENOENT: No such file or directory"}
    assert kvm.closed == [kvm.VCPU, kvm.VM, kvm.KVM]


def test_failed_vm_creation_still_closes_the_system_fd() -> None:
    kvm = FakeArm64Kvm()

    def no_vm(fd: int, request: int, arg: Arg) -> int | bytes:
        if request == 0xAE01:
            raise OSError(errno.ENOMEM, "Cannot allocate memory")
        return kvm.ioctl(fd, request, arg)

    answers = probe_kvm("/dev/kvm", "aarch64", _ioctl=no_vm, _open=kvm.open, _close=kvm.close)
    assert answers.errors == {"create_vm": "ENOMEM: Cannot allocate memory"}
    assert answers.arm64_regs is None and answers.vm_caps == {}
    assert answers.caps["KVM_CAP_ARM_VM_IPA_SIZE"] == 48
    assert kvm.closed == [kvm.KVM]


# -- JSON ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(SNAPSHOTS.glob("*.json")), ids=lambda p: p.stem)
def test_snapshots_are_canonical_to_json(path: Path) -> None:
    data = json.loads(path.read_text())
    assert data.pop("_comment"), "every fixture says where its values come from"
    assert KvmAnswers.from_json(data).to_json() == data


def test_from_json_is_tolerant_of_missing_keys() -> None:
    assert KvmAnswers.from_json({}) == KvmAnswers(None, None, {}, {}, None, None, {})
    assert KvmAnswers.from_json({"caps": {"KVM_CAP_NR_VCPUS": "0x2"}}).caps == {"KVM_CAP_NR_VCPUS": 2}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"caps": {"KVM_CAP_NR_VCPUS": "two"}}, "'caps.KVM_CAP_NR_VCPUS' must be an integer"),
        ({"caps": [1, 2]}, "'caps' must be an object"),
        ({"cpuid": [["0x1", "0x0"]]}, "'cpuid[0]' must be 7 words"),
        ({"cpuid": "0x1"}, "'cpuid' must be a list"),
        ({"api_version": True}, "'api_version' must be an integer"),
        ({"open_error": 2}, "'open_error' must be a string"),
        ({"errors": {"api_version": 25}}, "'errors' must map step names to strings"),
    ],
)
def test_from_json_rejects_malformed_values(data: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        KvmAnswers.from_json(data)
