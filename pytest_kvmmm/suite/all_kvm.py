"""Every KVM selftest a kernel builds, per architecture: the static list behind ``-m kvm``.

Collection must be the same on every host and xdist worker, so the names come from here, not
from the build at hand: each is one test, and at run time a name this host's architecture does
not build skips; one the build lacks is handled as for every selftest test (a kvmmm-build
build that never had it skips; a build the run names fails, unless --kvm-allow-missing). The lists are ``TEST_GEN_PROGS_<arch>`` of
``tools/testing/selftests/kvm/Makefile`` in each kernel version, read off its source; they
leave out ``TEST_PROGS`` (6.12: ``x86_64/nx_huge_pages_test.sh``, a script that changes
``kvm.nx_huge_pages`` and reserves hugetlb pages itself, so it cannot leave the host as found)
and ``TEST_GEN_PROGS_EXTENDED`` (helpers that script runs). Pure: no pytest import.
"""

from __future__ import annotations

from collections.abc import Mapping

#: Architectures by the Makefile's ARCH_DIR names up to 6.13 (``platform.machine()`` values but riscv).
ARCHES = ("x86_64", "aarch64", "s390x", "riscv")

#: ``platform.machine()`` of a host -> its ARCH_DIR.
MACHINE_ARCH: Mapping[str, str] = {
    "x86_64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64", "s390x": "s390x", "riscv64": "riscv",
}

SELFTESTS: Mapping[str, Mapping[str, tuple[str, ...]]] = {
    "6.12": {
        "x86_64": (
            "x86_64/cpuid_test", "x86_64/cr4_cpuid_sync_test",
            "x86_64/dirty_log_page_splitting_test", "x86_64/get_msr_index_features",
            "x86_64/exit_on_emulation_failure_test", "x86_64/fix_hypercall_test",
            "x86_64/hwcr_msr_test", "x86_64/hyperv_clock", "x86_64/hyperv_cpuid",
            "x86_64/hyperv_evmcs", "x86_64/hyperv_extended_hypercalls", "x86_64/hyperv_features",
            "x86_64/hyperv_ipi", "x86_64/hyperv_svm_test", "x86_64/hyperv_tlb_flush",
            "x86_64/kvm_clock_test", "x86_64/kvm_pv_test", "x86_64/monitor_mwait_test",
            "x86_64/nested_exceptions_test", "x86_64/platform_info_test",
            "x86_64/pmu_counters_test", "x86_64/pmu_event_filter_test",
            "x86_64/private_mem_conversions_test", "x86_64/private_mem_kvm_exits_test",
            "x86_64/set_boot_cpu_id", "x86_64/set_sregs_test",
            "x86_64/smaller_maxphyaddr_emulation_test", "x86_64/smm_test", "x86_64/state_test",
            "x86_64/vmx_preemption_timer_test", "x86_64/svm_vmcall_test", "x86_64/svm_int_ctl_test",
            "x86_64/svm_nested_shutdown_test", "x86_64/svm_nested_soft_inject_test",
            "x86_64/tsc_scaling_sync", "x86_64/sync_regs_test", "x86_64/ucna_injection_test",
            "x86_64/userspace_io_test", "x86_64/userspace_msr_exit_test",
            "x86_64/vmx_apic_access_test", "x86_64/vmx_close_while_nested_test",
            "x86_64/vmx_dirty_log_test", "x86_64/vmx_exception_with_invalid_guest_state",
            "x86_64/vmx_msrs_test", "x86_64/vmx_invalid_nested_guest_state",
            "x86_64/vmx_set_nested_state_test", "x86_64/vmx_tsc_adjust_test",
            "x86_64/vmx_nested_tsc_scaling_test", "x86_64/apic_bus_clock_test",
            "x86_64/xapic_ipi_test", "x86_64/xapic_state_test", "x86_64/xcr0_cpuid_test",
            "x86_64/xss_msr_test", "x86_64/debug_regs", "x86_64/tsc_msrs_test",
            "x86_64/vmx_pmu_caps_test", "x86_64/xen_shinfo_test", "x86_64/xen_vmcall_test",
            "x86_64/sev_init2_tests", "x86_64/sev_migrate_tests", "x86_64/sev_smoke_test",
            "x86_64/amx_test", "x86_64/max_vcpuid_cap_test", "x86_64/triple_fault_event_test",
            "x86_64/recalc_apic_map_test", "access_tracking_perf_test", "coalesced_io_test",
            "demand_paging_test", "dirty_log_test", "dirty_log_perf_test", "guest_memfd_test",
            "guest_print_test", "hardware_disable_test", "kvm_create_max_vcpus",
            "kvm_page_table_test", "max_guest_memory_test", "memslot_modification_stress_test",
            "memslot_perf_test", "rseq_test", "set_memory_region_test", "steal_time",
            "kvm_binary_stats_test", "system_counter_offset_test", "pre_fault_memory_test",
        ),
        "aarch64": (
            "aarch64/aarch32_id_regs", "aarch64/arch_timer_edge_cases", "aarch64/debug-exceptions",
            "aarch64/hypercalls", "aarch64/page_fault_test", "aarch64/psci_test",
            "aarch64/set_id_regs", "aarch64/smccc_filter", "aarch64/vcpu_width_config",
            "aarch64/vgic_init", "aarch64/vgic_irq", "aarch64/vgic_lpi_stress",
            "aarch64/vpmu_counter_access", "aarch64/no-vgic-v3", "access_tracking_perf_test",
            "arch_timer", "coalesced_io_test", "demand_paging_test", "dirty_log_test",
            "dirty_log_perf_test", "guest_print_test", "get-reg-list", "kvm_create_max_vcpus",
            "kvm_page_table_test", "memslot_modification_stress_test", "memslot_perf_test",
            "rseq_test", "set_memory_region_test", "steal_time", "kvm_binary_stats_test",
        ),
        "s390x": (
            "s390x/memop", "s390x/resets", "s390x/sync_regs_test", "s390x/tprot", "s390x/cmma_test",
            "s390x/debug_test", "s390x/shared_zeropage_test", "s390x/ucontrol_test",
            "demand_paging_test", "dirty_log_test", "guest_print_test", "kvm_create_max_vcpus",
            "kvm_page_table_test", "rseq_test", "set_memory_region_test", "kvm_binary_stats_test",
        ),
        "riscv": (
            "riscv/sbi_pmu_test", "riscv/ebreak_test", "arch_timer", "coalesced_io_test",
            "demand_paging_test", "dirty_log_test", "get-reg-list", "guest_print_test",
            "kvm_binary_stats_test", "kvm_create_max_vcpus", "kvm_page_table_test",
            "set_memory_region_test", "steal_time",
        ),
    },
}

#: The list ``-m kvm`` collects (the only version listed so far; a newer build runs the names it shares
#: with it, under their new arch folder (``x86/``) or name (``mmu_stress_test``), as discovery finds them).
DEFAULT_VERSION = "6.12"


def all_names(version: str) -> tuple[str, ...]:
    """Every selftest of ``version`` on any architecture, in a stable order: the collected ids."""
    seen: dict[str, None] = {}
    for arch in ARCHES:
        for name in SELFTESTS[version].get(arch, ()):
            seen.setdefault(name, None)
    return tuple(sorted(seen))


def arches_of(version: str, name: str) -> tuple[str, ...]:
    """The architectures whose build of ``version`` has ``name``."""
    return tuple(a for a in ARCHES if name in SELFTESTS[version].get(a, ()))


#: Programs built for others to run (``TEST_GEN_PROGS_EXTENDED``): not tests of their own, but
#: where a catalogue entry's binary lives (``nx_huge_pages_test``, run by its .sh on x86).
EXTENDED: Mapping[str, Mapping[str, tuple[str, ...]]] = {
    "6.12": {"x86_64": ("x86_64/nx_huge_pages_test",)},
}


def selftest_path(name: str, version: str, arch: str) -> str:
    """``name``'s path relative to the KVM selftests directory in ``version`` for ``arch``
    (``x86_64/<name>`` for an arch test of 6.12), as the upstream runner's files name it."""
    for path in (*SELFTESTS.get(version, {}).get(arch, ()), *EXTENDED.get(version, {}).get(arch, ())):
        if path == name or path.endswith("/" + name):
            return path
    return name


#: ARCH_DIR -> the ``uname -m`` names of hosts that run it (the ``kvm_requires(arch=...)`` names).
ARCH_MACHINES: Mapping[str, tuple[str, ...]] = {
    "x86_64": ("x86_64",), "aarch64": ("aarch64",), "s390x": ("s390x",), "riscv": ("riscv64",),
}


def machines_of(version: str, name: str) -> tuple[str, ...]:
    """The ``uname -m`` names of hosts whose build of ``version`` has ``name``."""
    return tuple(m for arch in arches_of(version, name) for m in ARCH_MACHINES[arch])
