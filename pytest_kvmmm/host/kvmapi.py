"""Asking ``/dev/kvm`` what KVM offers, from userspace, in pure Python.

sysfs and ``/proc/cpuinfo`` describe the *host*; the selftests run against what *KVM* offers a
guest, which can differ (on a PVM host KVM's supported CPUID lacks GBPAGES although the host
CPU has ``pdpe1gb``). So the probe asks KVM itself: ``KVM_CHECK_EXTENSION``, x86
``KVM_GET_SUPPORTED_CPUID``, and on arm64 the vCPU's ID registers via ``KVM_GET_ONE_REG``, the
same route as ``aarch64_get_supported_page_sizes()`` in the selftests.

The answers are kept raw (numbers, registers) in a JSON-serialisable :class:`KvmAnswers`, so a
lab host's snapshot replays offline; :mod:`.kvmdecode` turns them into features. Request
numbers and struct layouts: ``include/uapi/linux/kvm.h`` and
``arch/arm64/include/uapi/asm/kvm.h`` (6.12), cross-checked against a C build.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import platform
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar, Union


def _ioc(direction: int, nr: int, size: int) -> int:
    """asm-generic ``_IOC`` (x86, arm64, riscv and s390 all use it); type is KVMIO = 0xAE."""
    return (direction << 30) | (size << 16) | (0xAE << 8) | nr


_W, _R = 1, 2  # _IOC_WRITE, _IOC_READ
KVM_GET_API_VERSION = _ioc(0, 0x00, 0)  # 0xae00
KVM_CREATE_VM = _ioc(0, 0x01, 0)  # 0xae01
KVM_CHECK_EXTENSION = _ioc(0, 0x03, 0)  # 0xae03
KVM_GET_SUPPORTED_CPUID = _ioc(_R | _W, 0x05, 8)  # 0xc008ae05, struct kvm_cpuid2 header
KVM_CREATE_VCPU = _ioc(0, 0x41, 0)  # 0xae41
KVM_GET_ONE_REG = _ioc(_W, 0xAB, 16)  # 0x4010aeab, struct kvm_one_reg
KVM_ARM_VCPU_INIT = _ioc(_W, 0xAE, 32)  # 0x4020aeae, struct kvm_vcpu_init
KVM_ARM_PREFERRED_TARGET = _ioc(_R, 0xAF, 32)  # 0x8020aeaf

#: ``KVM_API_VERSION``; the selftests refuse anything else, and so does every ioctl meaning below.
KVM_API_VERSION = 12

CAPS: dict[str, int] = {
    f"KVM_CAP_{name}": number
    for name, number in (
        ("USER_MEMORY", 3), ("NR_VCPUS", 9), ("NR_MEMSLOTS", 10), ("SYNC_MMU", 16),
        ("MAX_VCPUS", 66), ("CHECK_EXTENSION_VM", 105), ("MAX_VCPU_ID", 128),
        ("IMMEDIATE_EXIT", 136), ("ARM_VM_IPA_SIZE", 165), ("MANUAL_DIRTY_LOG_PROTECT2", 168),
        ("SMALLER_MAXPHYADDR", 185), ("DIRTY_LOG_RING", 192), ("BINARY_STATS_FD", 203),
        ("VM_GPA_BITS", 207), ("DISABLE_QUIRKS2", 213), ("VM_DISABLE_NX_HUGE_PAGES", 220),
        ("DIRTY_LOG_RING_ACQ_REL", 223), ("DIRTY_LOG_RING_WITH_BITMAP", 225),
        ("ARM_EAGER_SPLIT_CHUNK_SIZE", 228), ("ARM_SUPPORTED_BLOCK_SIZES", 229),
        ("USER_MEMORY2", 231), ("MEMORY_FAULT_INFO", 232), ("MEMORY_ATTRIBUTES", 233),
        ("GUEST_MEMFD", 234), ("VM_TYPES", 235), ("PRE_FAULT_MEMORY", 236),
    )
}  # fmt: skip

#: Caps whose answer can depend on the VM (``kvm != NULL`` in 6.12 ``kvm_vm_ioctl_check_extension*``),
#: or that the selftests ask with ``vm_check_cap()``. On x86 GUEST_MEMFD and MEMORY_ATTRIBUTES say 1/8
#: on the system fd but 0 on a default VM; on arm64 the eager-split chunk and MAX_VCPUS are per VM.
VM_CAPS: tuple[str, ...] = tuple(
    f"KVM_CAP_{name}"
    for name in (
        "NR_MEMSLOTS", "MAX_VCPUS", "MAX_VCPU_ID", "MANUAL_DIRTY_LOG_PROTECT2", "DIRTY_LOG_RING",
        "DIRTY_LOG_RING_ACQ_REL", "DIRTY_LOG_RING_WITH_BITMAP", "DISABLE_QUIRKS2",
        "VM_DISABLE_NX_HUGE_PAGES", "ARM_EAGER_SPLIT_CHUNK_SIZE", "ARM_SUPPORTED_BLOCK_SIZES",
        "USER_MEMORY2", "MEMORY_ATTRIBUTES", "GUEST_MEMFD", "PRE_FAULT_MEMORY",
    )
)  # fmt: skip


def arm64_sys_reg(op0: int, op1: int, crn: int, crm: int, op2: int) -> int:
    """``ARM64_SYS_REG()``: KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM64_SYSREG | encoding."""
    return 0x6030000000130000 | op0 << 14 | op1 << 11 | crn << 7 | crm << 3 | op2


#: The vCPU registers read on arm64; KVM shows their sanitised host value, BBM and FWB included
#: (``__kvm_read_sanitised_id_reg()``), which userspace ``mrs`` hides.
ARM64_REGS: dict[str, int] = {
    "ID_AA64MMFR0_EL1": arm64_sys_reg(3, 0, 0, 7, 0),  # 0x603000000013c038
    "ID_AA64MMFR1_EL1": arm64_sys_reg(3, 0, 0, 7, 1),  # 0x603000000013c039
    "ID_AA64MMFR2_EL1": arm64_sys_reg(3, 0, 0, 7, 2),  # 0x603000000013c03a
    "CTR_EL0": arm64_sys_reg(3, 3, 0, 0, 1),  # 0x603000000013d801
}

_CPUID_HEADER = struct.Struct("=II")  # struct kvm_cpuid2: nent, padding
_CPUID_ENTRY = struct.Struct("=7I12x")  # kvm_cpuid_entry2: function..edx, padding[3]
_ONE_REG = struct.Struct("=QQ")  # struct kvm_one_reg: id, addr (a pointer to a u64)
_VCPU_INIT_SIZE = 32  # struct kvm_vcpu_init: target, features[7]
_CPUID_FIRST_NENT = 256  # KVM_MAX_CPUID_ENTRIES in 6.12: one call almost always suffices
_CPUID_MAX_NENT = 4096
_X86_MACHINES = ("x86_64", "amd64", "i386", "i686")

T = TypeVar("T")
CpuidEntry = tuple[int, int, int, int, int, int, int]
IoctlArg = Union[int, bytes, bytearray]
#: ``fcntl.ioctl``'s shape; the arm64 tests inject a fake one.
IoctlFn = Callable[[int, int, IoctlArg], Union[int, bytes]]


def _fcntl_ioctl(fd: int, request: int, arg: IoctlArg) -> int | bytes:
    """``fcntl.ioctl`` with one signature: an int by value, or a bytearray the kernel fills in."""
    if isinstance(arg, int):
        return fcntl.ioctl(fd, request, arg)
    if isinstance(arg, bytearray):
        return int(fcntl.ioctl(fd, request, arg, True))  # the kernel filled ``arg`` in
    result: bytes = fcntl.ioctl(fd, request, arg)  # a copy of the buffer after the call
    return result


@dataclass(frozen=True)
class KvmAnswers:
    """What /dev/kvm answered. JSON-serialisable, so a host snapshot can store it and replay it offline."""

    #: None if /dev/kvm opened O_RDWR; else what is wrong and what to do about it.
    open_error: str | None
    api_version: int | None
    #: KVM_CHECK_EXTENSION on the system fd, by capability name ("KVM_CAP_NR_VCPUS": 2).
    caps: dict[str, int] = field(default_factory=dict)
    #: The :data:`VM_CAPS` asked on a scratch VM fd.
    vm_caps: dict[str, int] = field(default_factory=dict)
    #: x86 KVM_GET_SUPPORTED_CPUID entries (function, index, flags, eax, ebx, ecx, edx); None elsewhere.
    cpuid: tuple[CpuidEntry, ...] | None = None
    #: arm64 vCPU view of :data:`ARM64_REGS` after KVM_ARM_VCPU_INIT; None elsewhere.
    arm64_regs: dict[str, int] | None = None
    #: probe step -> why it failed; the fact it would have given is None or absent.
    errors: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        """Numbers as JSON ints; CPUID words and registers as hex strings, to read against the manuals."""
        return {
            "open_error": self.open_error,
            "api_version": self.api_version,
            "caps": dict(self.caps),
            "vm_caps": dict(self.vm_caps),
            "cpuid": None if self.cpuid is None else [[f"{w:#x}" for w in e] for e in self.cpuid],
            "arm64_regs": None
            if self.arm64_regs is None
            else {name: f"{value:#x}" for name, value in self.arm64_regs.items()},
            "errors": dict(self.errors),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> KvmAnswers:
        """Tolerant: missing keys give empty/None, unknown ones (``_comment``) are ignored.

        Integers may be JSON numbers or ``"0x..."`` strings (hand-written fixtures). A malformed
        value raises ValueError naming the key, so a broken snapshot is fixed, not half-used.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"KVM answers must be a JSON object, got {type(data).__name__}")
        cpuid, regs, why = data.get("cpuid"), data.get("arm64_regs"), data.get("open_error")
        if not isinstance(cpuid, (list, type(None))):
            raise ValueError(f"KVM answers 'cpuid' must be a list of entries, got {cpuid!r}")
        if not isinstance(why, (str, type(None))):
            raise ValueError(f"KVM answers 'open_error' must be a string or null, got {why!r}")
        entries = []
        for i, entry in enumerate(cpuid or ()):
            if not isinstance(entry, list) or len(entry) != 7:
                raise ValueError(f"KVM answers 'cpuid[{i}]' must be 7 words (function, index, flags, "
                                 f"eax, ebx, ecx, edx), got {entry!r}")
            f, i_, fl, a, b, c, d = (_json_int(w, f"cpuid[{i}]") for w in entry)
            entries.append((f, i_, fl, a, b, c, d))
        errors = _json_map(data.get("errors"), "errors")
        if not all(isinstance(v, str) for v in errors.values()):
            raise ValueError(f"KVM answers 'errors' must map step names to strings, got {errors!r}")
        api = data.get("api_version")
        return cls(
            open_error=why,
            api_version=None if api is None else _json_int(api, "api_version"),
            caps=_json_ints(data.get("caps"), "caps"),
            vm_caps=_json_ints(data.get("vm_caps"), "vm_caps"),
            cpuid=None if cpuid is None else tuple(entries),
            arm64_regs=None if regs is None else _json_ints(regs, "arm64_regs"),
            errors={k: str(v) for k, v in errors.items()},
        )  # fmt: skip


def _json_int(value: object, where: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return int(value, 0)
        except ValueError:
            pass
    raise ValueError(f"KVM answers '{where}' must be an integer or a '0x...' string, got {value!r}")


def _json_map(value: object, where: str) -> Mapping[str, object]:
    if not isinstance(value, (Mapping, type(None))):
        raise ValueError(f"KVM answers '{where}' must be an object, got {value!r}")
    return value or {}


def _json_ints(value: object, where: str) -> dict[str, int]:
    return {k: _json_int(v, f"{where}.{k}") for k, v in _json_map(value, where).items()}


def _open_error(device: str, exc: OSError) -> str:
    """Say what is wrong with the device and what to do next, as a skip reason would."""
    if exc.errno == errno.ENOENT:
        return f"{device} does not exist (kvm module not loaded?)"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied on {device} (run as root or join the kvm group)"
    if exc.errno in (errno.ENXIO, errno.ENODEV):
        return f"{device} has no KVM behind it (virtualization disabled in firmware?)"
    return f"cannot open {device}: {exc.strerror or exc}"


class _Probe:
    """One probe run: the injected system calls, the fds to close, and what went wrong."""

    def __init__(self, ioctl: IoctlFn) -> None:
        self.ioctl = ioctl
        self.fds: list[int] = []
        self.errors: dict[str, str] = {}

    def attempt(self, step: str, call: Callable[..., T], *args: Any) -> T | None:
        """``call(*args)``; a failure is recorded under ``step`` and gives None, never an exception."""
        try:
            return call(*args)
        except OSError as exc:  # "ENOTTY: Inappropriate ioctl for device"
            self.errors[step] = f"{errno.errorcode.get(exc.errno or 0, exc.errno)}: {exc.strerror}"
        except (ValueError, struct.error, OverflowError) as exc:  # a malformed answer
            self.errors[step] = f"{type(exc).__name__}: {exc}"
        return None

    def int_ioctl(self, fd: int, request: int, arg: int = 0) -> int:
        result = self.ioctl(fd, request, arg)
        if not isinstance(result, int):
            raise ValueError(f"ioctl {request:#x} answered {result!r}, expected an integer")
        return result

    def new_fd(self, fd: int, request: int, arg: int) -> int:
        """An ioctl that creates an fd (VM, vCPU): remembered at once so the caller closes it."""
        new = self.int_ioctl(fd, request, arg)
        self.fds.append(new)
        return new

    def caps(self, fd: int, names: tuple[str, ...], step: str) -> dict[str, int]:
        answers = {}
        for name in names:
            value = self.attempt(f"{step}.{name}", self.int_ioctl, fd, KVM_CHECK_EXTENSION, CAPS[name])
            if value is not None:
                answers[name] = value
        return answers

    def supported_cpuid(self, kvm: int) -> tuple[CpuidEntry, ...]:
        """KVM_GET_SUPPORTED_CPUID, growing ``nent`` on E2BIG (a kernel with a larger maximum)."""
        nent = _CPUID_FIRST_NENT
        while True:
            buf = bytearray(_CPUID_HEADER.pack(nent, 0) + bytes(nent * _CPUID_ENTRY.size))
            try:
                self.ioctl(kvm, KVM_GET_SUPPORTED_CPUID, buf)
            except OSError as exc:
                if exc.errno == errno.E2BIG and nent < _CPUID_MAX_NENT:
                    nent *= 2
                    continue
                raise
            count = min(_CPUID_HEADER.unpack_from(buf)[0], nent)
            offsets = range(_CPUID_HEADER.size, _CPUID_HEADER.size + count * _CPUID_ENTRY.size, _CPUID_ENTRY.size)
            return tuple(_CPUID_ENTRY.unpack_from(buf, at) for at in offsets)

    def arm64_regs(self, vm: int) -> dict[str, int] | None:
        """The vCPU's ID registers, the way ``aarch64_get_supported_page_sizes()`` reads MMFR0
        (6.12 ``lib/aarch64/processor.c:541-583``): vCPU, preferred target, init, ONE_REG."""
        vcpu = self.attempt("create_vcpu", self.new_fd, vm, KVM_CREATE_VCPU, 0)
        init = bytearray(_VCPU_INIT_SIZE)  # the preferred target fills it in; init takes it back
        if vcpu is None or self.attempt("arm_preferred_target", self.ioctl, vm, KVM_ARM_PREFERRED_TARGET, init) is None:
            return None
        if self.attempt("arm_vcpu_init", self.ioctl, vcpu, KVM_ARM_VCPU_INIT, bytes(init)) is None:
            return None
        regs = {}
        for name, reg_id in ARM64_REGS.items():
            value = ctypes.c_uint64()  # kvm_one_reg.addr points here; KVM writes the register
            request = _ONE_REG.pack(reg_id, ctypes.addressof(value))
            if self.attempt(f"one_reg.{name}", self.ioctl, vcpu, KVM_GET_ONE_REG, request) is not None:
                regs[name] = value.value
        return regs

    def ask(self, kvm: int, x86: bool, arm64: bool) -> KvmAnswers:
        api = self.attempt("api_version", self.int_ioctl, kvm, KVM_GET_API_VERSION)
        if api is None:
            return KvmAnswers(None, None, errors=self.errors)
        if api != KVM_API_VERSION:
            self.errors["api_version"] = f"KVM API {api}, expected {KVM_API_VERSION}: not asked further"
            return KvmAnswers(None, api, errors=self.errors)
        caps = self.caps(kvm, tuple(CAPS), "cap")
        cpuid = self.attempt("supported_cpuid", self.supported_cpuid, kvm) if x86 else None
        # arm64: the VM type is the IPA size (KVM_VM_TYPE_ARM_IPA_SIZE); 0 means the 40-bit default.
        vm_type = caps.get("KVM_CAP_ARM_VM_IPA_SIZE", 0) & 0xFF if arm64 else 0
        vm = self.attempt("create_vm", self.new_fd, kvm, KVM_CREATE_VM, vm_type)
        vm_caps: dict[str, int] = {}
        regs = None
        if vm is not None:
            if caps.get("KVM_CAP_CHECK_EXTENSION_VM", 0) > 0:
                vm_caps = self.caps(vm, VM_CAPS, "vm_cap")
            else:
                self.errors["vm_caps"] = "KVM_CAP_CHECK_EXTENSION_VM is 0: no per-VM capabilities"
            if arm64:
                regs = self.arm64_regs(vm)
        return KvmAnswers(None, api, caps, vm_caps, cpuid, regs, self.errors)


def probe_kvm(
    device: str = "/dev/kvm",
    machine: str | None = None,
    *,
    _ioctl: IoctlFn = _fcntl_ioctl,
    _open: Callable[[str, int], int] = os.open,
    _close: Callable[[int], None] = os.close,
) -> KvmAnswers:
    """Ask ``device`` everything the plugin needs. Never raises; closes every fd it opened.

    ``machine`` (``uname -m``, default this host's) picks the x86 or arm64 questions, so a
    test drives the arm64 path on an x86 host through a fake ``_ioctl``.
    """
    machine = machine or platform.machine()
    try:
        kvm = _open(device, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return KvmAnswers(open_error=_open_error(device, exc), api_version=None)
    probe = _Probe(_ioctl)
    probe.fds.append(kvm)
    try:
        return probe.ask(kvm, x86=machine in _X86_MACHINES, arm64=machine in ("aarch64", "arm64"))
    finally:
        for fd in reversed(probe.fds):
            try:
                _close(fd)
            except OSError:
                pass
