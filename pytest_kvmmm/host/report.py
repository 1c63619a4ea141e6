"""Human-readable host reports: the one-line pytest header and ``--kvm-host-info``. Pure."""

from __future__ import annotations

from .kvm import MMU_PARAMS
from .mm import HugetlbPool
from .model import HostFacts
from .units import format_size


def yes_no(value: bool | None) -> str:
    """``yes``, ``no``, or ``?`` when unknown."""
    return "?" if value is None else "yes" if value else "no"


def _page(size: int | None) -> str:
    return "?" if size is None else format_size(size)


def pools_text(pools: tuple[HugetlbPool, ...]) -> str:
    """``2M:12/16 1G:0/0`` (size:free/nr per pool), or ``none``."""
    return " ".join(f"{format_size(p.size_kb * 1024)}:{p.free}/{p.nr}" for p in pools) or "none"


def memory_text(h: HostFacts) -> str:
    """``15990 MiB total, 12000 MiB available`` (0 when unknown)."""
    return f"{(h.mem_total or 0) // 2**20} MiB total, {(h.mem_available or 0) // 2**20} MiB available"


def summary_line(h: HostFacts) -> str:
    """arch, KVM flavour, TDP MMU, TTRem, hugetlb pools, THP, page_idle: what decides most skips."""
    k = h.kvm
    kvm = k.flavour or "no KVM"
    if not k.available:
        kvm += f" (unusable: {k.unavailable_reason})"
    parts = [f"{h.machine or '?'} {h.kernel_release or '?'}", f"{_page(h.page_size)} pages", f"{h.cpus_online or '?'} CPUs", f"KVM {kvm}"]
    if h.machine == "x86_64":
        parts.append(f"TDP {yes_no(k.tdp)}, TDP MMU {yes_no(k.tdp_mmu)}")
    if k.arm64 is not None:
        parts.append(f"TTRem {k.ttrem if k.ttrem is not None else '?'}, IPA {k.ipa_size or '?'} bits")
    parts.append(f"hugetlb free/nr {pools_text(h.hugetlb)}")
    parts.append(f"THP {h.thp.enabled or '?'}")
    parts.append(f"page_idle {yes_no(h.page_idle)}")
    return ", ".join(parts)


def text_report(h: HostFacts, probe_s: float | None = None) -> str:
    k = h.kvm
    lines = [f"host {h.hostname or '?'} (facts from {h.source}" + (f", probed in {probe_s * 1000:.1f} ms)" if probe_s is not None else ")")]
    mem = memory_text(h)
    lines += [
        f"  system    {h.machine} {h.kernel_release}, {_page(h.page_size)} pages, {h.cpus_online} CPUs online, {mem}, "
        f"NUMA nodes {list(h.numa_nodes)}",
        f"  cpu       {h.cpu.vendor or '?'} {h.cpu.model_name or ''}; flags {' '.join(h.cpu.flags) or '-'}; "
        f"address sizes {h.cpu.phys_bits}/{h.cpu.virt_bits}",
        f"  kvm       {k.flavour or 'none'}; /dev/kvm {'usable' if k.available else 'unusable: ' + str(k.unavailable_reason)}; "
        f"API {k.api_version}",
    ]
    if k.x86 is not None:
        x = k.x86
        lines.append(
            f"  kvm cpuid 1G pages {yes_no(x.gbpages)}, LA57 {yes_no(x.la57)}, MAXPHYADDR {x.maxphyaddr}, "
            f"virt {x.maxvirtaddr}, nested vmx {yes_no(x.vmx)} svm {yes_no(x.svm)}"
        )
    if k.arm64 is not None:
        a = k.arm64
        lines.append(
            f"  arm64     mode {k.arm64_mode}; TTRem (FEAT_BBM) level {a.ttrem}; FWB {yes_no(a.fwb)}; "
            f"stage-2 granules {','.join(a.s2_granules or ()) or '?'}; PARange {a.parange_bits}; "
            f"IPA {k.ipa_size}; HAFDBS {a.hafdbs}; IDC {yes_no(a.idc)} DIC {yes_no(a.dic)}"
        )
    shown = [n for n in MMU_PARAMS if n in k.params]
    if shown:
        lines.append("  mmu params " + ", ".join(
            f"{n}={k.params[n].value}{'' if k.params[n].writable else ' (ro)'}" for n in shown))
    caps = {**k.caps, **k.vm_caps}
    if caps:
        lines.append("  caps      " + ", ".join(f"{n[len('KVM_CAP_'):] if n.startswith('KVM_CAP_') else n}={v}" for n, v in sorted(caps.items())))
    lines += [
        f"  hugetlb   default {format_size(h.hugetlb_default_kb * 1024) if h.hugetlb_default_kb else '?'}; "
        + "; ".join(f"{format_size(p.size_kb * 1024)} nr={p.nr} free={p.free} resv={p.resv} surplus={p.surplus}"
                    f"{'' if p.writable else ' (ro)'}" for p in h.hugetlb),
    ]
    for node in h.numa_nodes:
        node_pools = tuple(p for p in h.hugetlb_nodes if p.node == node)
        lines.append(f"  node{node}     {pools_text(node_pools)} (free/nr)")
    lines += [
        f"  thp       enabled {h.thp.enabled}, defrag {h.thp.defrag}, shmem {h.thp.shmem_enabled}, pmd {h.thp.pmd_size}",
        f"  tracking  page_idle {yes_no(h.page_idle)}; MGLRU "
        + ("absent" if h.mglru.enabled_mask is None else f"{h.mglru.enabled_mask:#06x} (aging {yes_no(h.mglru.usable_for_aging)})"),
    ]
    if h.unknown:
        lines.append("  unknown   " + "; ".join(f"{k_}: {v}" for k_, v in sorted(h.unknown.items())))
    return "\n".join(lines)
