"""Host facts as text: the one place they become text (``fact_texts``), a line of them per host
(``facts_line``), the one-line pytest header and ``--kvm-host-info``. Pure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

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


ENV_KEYS = (
    "emulated", "kernel", "arch", "page_size", "cpus", "memory", "kvm", "tdp", "tdp_mmu", "guest_1g_pages", "maxphyaddr", "pre_fault",
    "ttrem", "arm64_mode", "ipa_size", "parange", "s2_granules", "guest_granules", "fwb", "hafdbs", "idc_dic", "thp", "page_idle", "mglru", "hugetlb_free_nr", "hugetlb_default", "selftests", "facts_from",
)


def _granules(names: tuple[str, ...] | None) -> str:
    return "?" if names is None else ",".join(names) or "none"


def fact_texts(host: HostFacts, selftests: str | None = None, emulated: str | None = None) -> dict[str, str]:
    """The host facts that matter for triage, as text, keyed and ordered as ``ENV_KEYS``: the one
    place facts become text for the pytest header line, every record (hence the terminal's
    per-host lines and Allure's ``environment.properties``) and the lab's host table.
    ``emulated``: how the host is emulated ("tcg" on a kvmmm lab host), None for a real one."""
    k = host.kvm
    kvm = k.flavour or "none"
    if not k.available:
        kvm += f" (unusable: {k.unavailable_reason or 'unknown'})"
    env = {
        "kernel": host.kernel_release or "?",
        "arch": host.machine or "?",
        "page_size": format_size(host.page_size) if host.page_size else "?",
        "cpus": str(host.cpus_online or "?"),
        "memory": memory_text(host),
        "kvm": kvm,
        "thp": host.thp.enabled or "?",
        "page_idle": yes_no(host.page_idle),
        "mglru": yes_no(host.mglru.usable_for_aging),
        "hugetlb_free_nr": pools_text(host.hugetlb),
        "hugetlb_default": format_size(host.hugetlb_default_kb * 1024) if host.hugetlb_default_kb else "?",
        "facts_from": host.source,
    }
    if k.x86 is not None or host.machine == "x86_64":
        env["tdp"] = yes_no(k.tdp)
        env["tdp_mmu"] = yes_no(k.tdp_mmu)
        if k.x86 is not None:
            env["guest_1g_pages"] = yes_no(k.x86.gbpages)
            env["maxphyaddr"] = str(k.x86.maxphyaddr or "?")
        if k.available:
            env["pre_fault"] = yes_no(k.cap("PRE_FAULT_MEMORY") > 0)
    if k.arm64 is not None or host.machine == "aarch64":
        env["ttrem"] = "?" if k.ttrem is None else str(k.ttrem)
        env["arm64_mode"] = k.arm64_mode or "?"
        env["ipa_size"] = "?" if k.ipa_size is None else f"{k.ipa_size} bits"
    if k.arm64 is not None:
        a = k.arm64
        env["parange"] = "?" if a.parange_bits is None else f"{a.parange_bits} bits"
        env["s2_granules"] = _granules(a.s2_granules)
        env["guest_granules"] = _granules(a.granules)
        env["fwb"] = yes_no(a.fwb)
        env["hafdbs"] = "?" if a.hafdbs is None else str(a.hafdbs)
        env["idc_dic"] = f"{yes_no(a.idc)}/{yes_no(a.dic)}"
    if selftests:
        env["selftests"] = selftests
    if emulated:
        env["emulated"] = emulated
    return {key: env[key] for key in ENV_KEYS if key in env}


def facts_line(facts: Mapping[str, str], keys: Sequence[str]) -> str:
    """``arch x86_64, tdp yes, tdp_mmu no``: the facts among ``keys`` a host's ``fact_texts`` have,
    in that order; each table shows the keys that matter to its reader (the terminal's hosts,
    the lab's table, kvmmm-ab's)."""
    return ", ".join(f"{k} {facts[k]}" for k in keys if facts.get(k) not in (None, ""))


def summary_line(h: HostFacts) -> str:
    """arch, KVM flavour, TDP MMU, TTRem, hugetlb pools, THP, page_idle: what decides most skips."""
    f = fact_texts(h)
    parts = [f"{f['arch']} {f['kernel']}", f"{f['page_size']} pages", f"{f['cpus']} CPUs", f"KVM {f['kvm']}"]
    if h.machine == "x86_64":
        parts.append(f"TDP {f['tdp']}, TDP MMU {f['tdp_mmu']}")
    if h.kvm.arm64 is not None:
        parts.append(f"TTRem {f['ttrem']}, IPA {f['ipa_size']}")
    parts += [f"hugetlb free/nr {f['hugetlb_free_nr']}", f"THP {f['thp']}", f"page_idle {f['page_idle']}"]
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
