"""The lab's host kinds, as data: adding a kind of emulated host is adding an entry here.

A kind says what QEMU emulates (architecture, machine, CPU, memory), which kernel it boots
(a Debian package, or one built to order from a configuration fragment: ``kbuild.py``),
which modules its /init loads (with their dependencies) and with what parameters, its page
size, and the facts a lab run must find on it (``expect``: checked by ``table.lab_checks``).
Pure data, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Arch:
    """What differs between the architectures the lab emulates."""

    machine: str  # uname -m of the guest: "aarch64", "x86_64"
    debian: str  # Debian's architecture: "arm64", "amd64"
    qemu: str  # the QEMU binary
    qemu_package: str  # the Debian package that has it
    console: str  # the serial console device of the kernel command line
    wheel_platform: str  # pip download --platform for the guest's wheels
    #: the kernel image in a Debian package (boot/vmlinuz-*) and in a kernel build tree
    build_image: str


ARCHES: Mapping[str, Arch] = {
    "aarch64": Arch("aarch64", "arm64", "qemu-system-aarch64", "qemu-system-arm", "ttyAMA0",
                    "manylinux2014_aarch64", "arch/arm64/boot/Image"),
    "x86_64": Arch("x86_64", "amd64", "qemu-system-x86_64", "qemu-system-x86", "ttyS0",
                   "manylinux2014_x86_64", "arch/x86/boot/bzImage"),
}  # fmt: skip


@dataclass(frozen=True)
class KernelBuild:
    """A kernel built to order: a base configuration (make targets) merged with a fragment.

    ``fragment`` names a file in ``pytest_kvmmm/lab/kconfig/``; the build is cached by the
    source tree's revision and the hash of base + fragment (``kbuild.py``).
    """

    name: str
    arch: str
    base: tuple[str, ...]
    fragment: str


#: Built-in KVM, idle page tracking: what access_tracking_perf_test (6.12) needs and Debian's
#: kernels lack (they have CONFIG_IDLE_PAGE_TRACKING unset).
KERNEL_BUILDS: Mapping[str, KernelBuild] = {
    b.name: b for b in (KernelBuild("x86-idle", "x86_64", ("x86_64_defconfig", "kvm_guest.config"), "x86-idle.config"),)
}


@dataclass(frozen=True)
class HostKind:
    """One kind of lab host."""

    name: str  # "x86-tdp": what --hosts takes
    hostname: str  # the guest's hostname, the host's name in results
    arch: str  # a key of ARCHES
    machine: str  # QEMU -machine
    cpu: str  # QEMU -cpu
    #: Debian's meta package of the kernel (it depends on the versioned image package), or
    #: "build:<name>" for a kernel of KERNEL_BUILDS.
    kernel: str
    page_kib: int = 4
    mem: str = "3G"
    smp: int = 2
    #: QEMU -accel: TCG, with its options (``thread=single``: one thread for all vCPUs).
    accel: str = "tcg"
    #: Modules the guest loads at boot, dependencies first (their dependencies are added).
    modules: tuple[str, ...] = ()
    #: Parameters per module at load time: {"kvm": ("tdp_mmu=Y",)}.
    module_params: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: Kernel command line additions: the guest's hugetlb pool is set at boot, so the lab needs
    #: no host changes for the hugetlb cases.
    cmdline: str = ""
    #: Facts a lab run must find on this host (names of the results' host facts).
    expect: Mapping[str, str] = field(default_factory=dict)
    doc: str = ""

    @property
    def arch_info(self) -> Arch:
        return ARCHES[self.arch]

    @property
    def kernel_build(self) -> KernelBuild | None:
        if not self.kernel.startswith("build:"):
            return None
        return KERNEL_BUILDS[self.kernel.split(":", 1)[1]]


#: The NIC behind QEMU's user networking and 9p for the results directory shared with the host.
NET_9P = ("virtio_net", "9pnet_virtio", "9p")
ARM_VIRT = "virt,virtualization=on,gic-version=3"
#: AMD: TCG emulates SVM with nested paging (NPT) but not Intel's VMX/EPT. pdpe1gb gives the
#: guests of KVM 1 GiB pages.
X86_Q35 = "q35"
EPYC_NPT = "EPYC,+svm,+npt,+pdpe1gb"
#: The x86 hosts run two vCPUs on one TCG thread (``thread=single``: the vCPUs take turns).
#: With two vCPUs in parallel threads (MTTCG, QEMU 7.2's default), one ran x86 kernel text the
#: other was patching: "Oops: int3" in __schedule (static-key patching), "Fatal exception in
#: interrupt", on lab-x86-tdp 11 s after boot with no module reload (lab integration run),
#: twice during kvmmm-ab's module swaps, on lab-x86-idle at 285 s in CI: each lost the host.
#: With one vCPU, max_guest_memory_test cannot run at all (6.12 asserts CPUs * 3/4 > 0 before
#: it reads -c: "Uh, no CPUs?"). Taking turns, no vCPU runs while another patches, and the
#: guest still has two CPUs; on this 2-core machine the lab's hosts share the cores anyway.
X86_SMP = 2
X86_ACCEL = "tcg,thread=single"

HOST_KINDS: Mapping[str, HostKind] = {
    k.name: k
    for k in (
        # max: FEAT_BBM level 2 (TTRem 2), FWB, VHE. KVM is built into Debian's arm64 kernels.
        HostKind("arm64-4k", "lab-arm64-4k", "aarch64", ARM_VIRT, "max", "linux-image-6.12-arm64",
                 modules=NET_9P, expect={"arm64_mode": "vhe", "ttrem": "2", "page_size": "4K", "emulated": "tcg"},
                 doc="arm64 VHE, 4K pages, FEAT_BBM level 2, FWB"),
        # Without FEAT_LPA2, like most arm64 servers: KVM caps the IPA at 48 bits, so its set of
        # guest modes differs from the 4K host's.
        HostKind("arm64-16k", "lab-arm64-16k", "aarch64", ARM_VIRT, "max,lpa2=off", "linux-image-6.12-arm64-16k",
                 page_kib=16, modules=NET_9P, expect={"arm64_mode": "vhe", "ttrem": "2", "page_size": "16K", "emulated": "tcg"},
                 doc="arm64 VHE, 16K pages, no LPA2"),
        # ARMv8.0: no FWB (so KVM cleans the data cache and invalidates the I-cache itself on
        # stage-2 faults: the cache-maintenance path), TTRem 0, no VHE (nVHE KVM).
        HostKind("arm64-cmo", "lab-arm64-cmo", "aarch64", ARM_VIRT, "cortex-a72", "linux-image-6.12-arm64",
                 modules=NET_9P, expect={"arm64_mode": "nvhe", "fwb": "no", "ttrem": "0", "page_size": "4K", "emulated": "tcg"},
                 doc="arm64 v8.0 (cortex-a72): nVHE, no FWB, TTRem 0: the stage-2 cache-maintenance path"),
        # Debian's modular KVM: its parameters can be set by reloading the modules. One vCPU
        # (X86_SMP).
        HostKind("x86-tdp", "lab-x86-tdp", "x86_64", X86_Q35, EPYC_NPT, "linux-image-6.12-amd64",
                 modules=(*NET_9P, "kvm_amd"), cmdline="hugepages=96", smp=X86_SMP, accel=X86_ACCEL,
                 expect={"tdp": "yes", "tdp_mmu": "yes", "guest_1g_pages": "yes", "pre_fault": "yes", "emulated": "tcg"},
                 doc="x86 AMD SVM+NPT under TCG: TDP MMU, 1 GiB guest pages, KVM as modules"),
        HostKind("x86-idle", "lab-x86-idle", "x86_64", X86_Q35, EPYC_NPT, "build:x86-idle", cmdline="hugepages=96",
                 smp=X86_SMP, accel=X86_ACCEL,
                 expect={"tdp": "yes", "tdp_mmu": "yes", "page_idle": "yes", "emulated": "tcg"},
                 doc="x86 AMD SVM+NPT, a kernel built to order with idle page tracking (KVM built in)"),
    )
}  # fmt: skip
DEFAULT_HOSTS = tuple(HOST_KINDS)


def parse_hosts(value: str) -> list[str]:
    """``--hosts x86-tdp,arm64-cmo`` (or ``all``) -> kind names; ValueError names the known ones."""
    if value.strip() == "all":
        return list(HOST_KINDS)
    names = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [n for n in names if n not in HOST_KINDS]
    if unknown or not names:
        raise ValueError(f"unknown lab host kind(s) {unknown or value!r}; known: {', '.join(HOST_KINDS)}")
    return list(dict.fromkeys(names))
