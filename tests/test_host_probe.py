"""host.probe_host against hand-built snapshots of five kinds of host, the live host, and bad files."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from fakes import make_host_root
from pytest_kvmmm.host import probe_host
from pytest_kvmmm.host.cpu import parse_cpuinfo
from pytest_kvmmm.host.probe import with_fresh_pools
from pytest_kvmmm.host.report import summary_line, text_report
from pytest_kvmmm.host.snapshot import capture, open_snapshot

INTEL_CPU = (
    "vendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\n"
    "flags\t\t: fpu vmx ept vpid ept_ad pdpe1gb la57 lm\naddress sizes\t: 52 bits physical, 57 bits virtual\n"
)
ARM_CPU = "processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm aes\nCPU implementer\t: 0x41\n"


def intel_ept(tmp: Path) -> Path:
    return make_host_root(
        tmp, hostname="intel-ept", kvm="intel_ept", cpuinfo=INTEL_CPU,
        kvm_modules={"kvm": {"tdp_mmu": "Y", "eager_page_split": "Y", "nx_huge_pages": "N"},
                     "kvm_intel": {"ept!": "Y", "eptad!": "Y", "pml!": "Y"}},
        pools={2048: {"nr": 1024, "free": 1024}, 1048576: {"nr": 4, "free": 4}},
    )


def amd_npt(tmp: Path) -> Path:
    return make_host_root(
        tmp, hostname="amd-npt", kvm="amd_npt",
        kvm_modules={"kvm": {"tdp_mmu": "Y", "eager_page_split": "Y"}, "kvm_amd": {"npt!": "1", "nested!": "1"}},
    )


def arm64(tmp: Path, kvm: str, mode_line: str) -> Path:
    return make_host_root(
        tmp, machine="aarch64", hostname=kvm, kvm=kvm, cpuinfo=ARM_CPU, kvm_modules={},
        pools={2048: {"nr": 64, "free": 64}, 32768: {"nr": 0, "free": 0}, 1048576: {"nr": 0, "free": 0}},
        extra={"/dev/kmsg": f"6,123,456,-;kvm [1]: {mode_line}\n"},
    )


def test_intel_ept_host_with_tdp_mmu(tmp_path: Path) -> None:
    h = probe_host(intel_ept(tmp_path))
    assert (h.hostname, h.machine) == ("intel-ept", "x86_64")
    assert h.cpu.vendor == "GenuineIntel" and h.cpu.has("vmx") and h.cpu.has("la57")
    assert (h.cpu.phys_bits, h.cpu.virt_bits) == (52, 57)
    k = h.kvm
    assert k.available and k.api_version == 12 and k.flavour == "kvm_intel"
    assert k.tdp is True and k.tdp_mmu is True
    assert k.params["kvm.tdp_mmu"].writable and not k.params["kvm_intel.ept"].writable
    assert k.x86 is not None and k.x86.gbpages and k.x86.la57
    assert k.cap("PRE_FAULT_MEMORY") == 1
    assert [(p.size_kb, p.free, p.writable) for p in h.hugetlb] == [(2048, 1024, True), (1048576, 4, True)]
    assert h.hugetlb_pool(2048, node=0) is not None


def test_amd_npt_host(tmp_path: Path) -> None:
    h = probe_host(amd_npt(tmp_path))
    assert h.kvm.flavour == "kvm_amd" and h.kvm.tdp is True and h.kvm.tdp_mmu is True
    assert h.kvm.x86 is not None and h.kvm.x86.svm


def test_arm64_host_with_ttrem_2(tmp_path: Path) -> None:
    h = probe_host(arm64(tmp_path, "arm64_ttrem2", "VHE mode initialized successfully"))
    k = h.kvm
    assert h.machine == "aarch64" and k.flavour == "arm64-vhe" and k.arm64_mode == "vhe"
    assert k.ttrem == 2 and k.arm64 is not None and k.arm64.fwb is True
    assert k.ipa_size == 48 and k.x86 is None and k.tdp is None
    assert "TTRem 2, IPA 48 bits" in summary_line(h)


def test_arm64_cpuinfo_names_the_implementer_and_keeps_mm_hwcaps() -> None:
    text = ("processor\t: 0\nFeatures\t: fp asimd atomics cpuid dcpop mte\nCPU implementer\t: 0x48\n"
            "CPU architecture: 8\nCPU part\t: 0xd01\n")
    cpu = parse_cpuinfo(text)
    assert (cpu.vendor, cpu.model_name) == ("HiSilicon (0x48)", "part 0xd01")
    assert cpu.flags == ("atomics", "dcpop", "mte")
    assert parse_cpuinfo("CPU implementer\t: 0x7f\n").vendor == "arm implementer 0x7f"


@pytest.mark.parametrize(("pmd_size", "page_size"), [(2 << 20, 4096), (32 << 20, 16384), (512 << 20, 65536)])
def test_snapshot_page_size_is_derived_from_the_thp_pmd_size(tmp_path: Path, pmd_size: int, page_size: int) -> None:
    root = arm64(tmp_path, "arm64_ttrem2", "VHE mode initialized successfully")
    (root / "sys/kernel/mm/transparent_hugepage/hpage_pmd_size").write_text(f"{pmd_size}\n")
    h = probe_host(root)
    assert h.page_size == page_size and h.to_json()["page_size"] == page_size
    assert f"{page_size // 1024}K pages" in summary_line(h)


def test_snapshot_page_size_recorded_wins_and_a_strange_pmd_is_unknown(tmp_path: Path) -> None:
    root = make_host_root(tmp_path)
    (root / "sys/kernel/mm/transparent_hugepage/hpage_pmd_size").write_text("12345\n")
    h = probe_host(root)
    assert h.page_size is None and "not the PMD size of a 4K, 16K or 64K page" in h.unknown["page_size"]
    meta = json.loads((root / "kvmmm-snapshot.json").read_text())
    (root / "kvmmm-snapshot.json").write_text(json.dumps({**meta, "page_size": 16384}))
    assert probe_host(root).page_size == 16384


def test_arm64_host_with_ttrem_0_nvhe(tmp_path: Path) -> None:
    h = probe_host(arm64(tmp_path, "arm64_ttrem0", "Hyp nVHE mode initialized successfully"))
    assert h.kvm.ttrem == 0 and h.kvm.flavour == "arm64-nvhe"
    assert h.kvm.arm64 is not None and h.kvm.arm64.fwb is False
    assert h.kvm.ipa_size == 40


def test_arm64_mode_from_the_command_line_wins(tmp_path: Path) -> None:
    root = arm64(tmp_path, "arm64_ttrem2", "VHE mode initialized successfully")
    (root / "proc/cmdline").write_text("console=ttyAMA0 kvm-arm.mode=protected\n")
    assert probe_host(root).kvm.flavour == "arm64-protected"


def test_host_without_kvm(tmp_path: Path) -> None:
    h = probe_host(make_host_root(tmp_path, kvm="no_kvm", kvm_modules={}))
    assert not h.kvm.available and h.kvm.flavour is None
    assert h.kvm.unavailable_reason and "does not exist" in h.kvm.unavailable_reason
    assert "KVM none (unusable:" in summary_line(h), "the header says what records and Allure say"


def test_snapshot_records_read_only_pools(tmp_path: Path) -> None:
    h = probe_host(make_host_root(tmp_path, writable_pools=False))
    assert not any(p.writable for p in h.hugetlb)


def test_missing_and_malformed_files_become_unknown_with_reasons(tmp_path: Path) -> None:
    root = make_host_root(tmp_path)
    (root / "sys/kernel/mm/transparent_hugepage/enabled").write_text("always madvise never\n")
    (root / "sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages").write_text("lots\n")
    (root / "sys/devices/system/cpu/online").unlink()
    (root / "kvmmm-snapshot.json").write_text("{not json")
    h = probe_host(root)
    assert h.thp.enabled is None and "no [selected] value" in h.unknown["thp.enabled"]
    assert h.hugetlb_pool(2048) is None
    assert "expected a number, found 'lots'" in h.unknown["hugetlb.hugepages-2048kB"]
    assert h.cpus_online is None and "does not exist" in h.unknown["cpus_online"]
    assert not h.kvm.available and "has no kvmmm-snapshot.json" in (h.kvm.unavailable_reason or "")


@pytest.mark.parametrize("text", ["garbage", "0-x", "3-1", "0-1-2"])
def test_malformed_cpu_and_node_lists_become_unknown(tmp_path: Path, text: str) -> None:
    root = make_host_root(tmp_path)
    (root / "sys/devices/system/cpu/online").write_text(text + "\n")
    (root / "sys/devices/system/node/online").write_text(text + "\n")
    h = probe_host(root)  # must not raise
    assert h.cpus_online is None and repr(text) in h.unknown["cpus_online"]
    assert h.numa_nodes == () and h.hugetlb_nodes == () and repr(text) in h.unknown["numa_nodes"]
    assert h.hugetlb_pool(2048) is not None  # the rest of the facts are still read
    assert text_report(h)


def test_cpu_and_node_lists_are_parsed(tmp_path: Path) -> None:
    root = make_host_root(tmp_path, cpus="0-3,8,10-11")
    (root / "sys/devices/system/node/online").write_text("0,2-3\n")
    h = probe_host(root)
    assert h.cpus_online == 7 and h.numa_nodes == (0, 2, 3) and "cpus_online" not in h.unknown


def test_empty_root_never_raises(tmp_path: Path) -> None:
    h = probe_host(tmp_path)
    assert h.machine is None and h.hugetlb == () and h.thp.enabled is None and not h.kvm.available
    assert "hugetlb" in h.unknown and "meminfo" in h.unknown
    assert text_report(h)  # renders with every fact unknown


def test_json_form_has_the_documented_keys(tmp_path: Path) -> None:
    data = probe_host(intel_ept(tmp_path)).to_json()
    json.dumps(data)  # serialisable
    assert data["format"] == 1
    for key in ("hostname", "machine", "kernel_release", "page_size", "cpus_online", "mem_total", "mem_available", "numa_nodes",
                "cpu", "kvm", "hugetlb_default_kb", "hugetlb", "hugetlb_nodes", "thp", "page_idle", "mglru", "unknown"):
        assert key in data, key
    assert data["kvm"]["tdp_mmu"] is True and data["kvm"]["x86"]["gbpages"] is True
    assert data["kvm"]["params"]["kvm.tdp_mmu"] == {"value": "Y", "writable": True}
    assert data["hugetlb"][0]["usable"] == 1024


LIVE = pytest.mark.skipif(not os.path.exists("/dev/kvm"), reason="no /dev/kvm on this host")


@LIVE
def test_live_host_is_fast_and_matches_sysfs() -> None:
    probe_host()  # warm the page cache
    t0, cpu0 = time.perf_counter(), time.process_time()
    h = probe_host()
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    # Cheap is CPU time (about 4 ms here): the wall time of a shared host's load (213 ms seen at
    # load 20 on two cores) is not the probe's. The wall bound still catches a probe that waits.
    assert cpu < 0.1, f"probe took {cpu * 1000:.1f} ms of CPU"
    assert elapsed < 1.0, f"probe took {elapsed * 1000:.1f} ms"
    assert h.cpus_online == os.cpu_count()
    assert h.kernel_release == os.uname().release
    assert h.page_size == os.sysconf("SC_PAGE_SIZE")
    nr = int(Path("/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages").read_text())
    assert h.hugetlb_pool(2048) is not None and h.hugetlb_pool(2048).nr == nr  # type: ignore[union-attr]
    tdp_mmu = Path("/sys/module/kvm/parameters/tdp_mmu")
    if tdp_mmu.exists():
        assert h.kvm.tdp_mmu == (tdp_mmu.read_text().strip() == "Y")
        assert h.kvm.params["kvm.tdp_mmu"].writable == bool(tdp_mmu.stat().st_mode & 0o222)


@LIVE
def test_snapshot_of_the_live_host_gives_the_same_facts(tmp_path: Path) -> None:
    live = probe_host()
    snap = probe_host(capture(tmp_path / "snap"))
    a, b = live.to_json(), snap.to_json()
    for volatile in ("source", "mem_available", "unknown"):
        a.pop(volatile), b.pop(volatile)
    assert a == b


def test_tarball_snapshot_opens(tmp_path: Path) -> None:
    import tarfile

    root = intel_ept(tmp_path / "intel")
    tarball = tmp_path / "intel.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(root, arcname="intel")
    assert probe_host(open_snapshot(tarball)).hostname == "intel-ept"
    with pytest.raises(ValueError, match="neither a snapshot directory nor a tarball"):
        open_snapshot(tmp_path / "intel" / "proc" / "cpuinfo")


def test_snapshot_cli_writes_a_tarball_the_plugin_reads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pytest_kvmmm.host.cli import main

    out = tmp_path / "this-host.tar.gz"
    assert main([str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"use it with: pytest --kvm-host-snapshot={out}" in printed
    assert probe_host(open_snapshot(out)).hostname == os.uname().nodename


def test_snapshot_cli_unwritable_target_is_one_clear_line(capsys: pytest.CaptureFixture[str]) -> None:
    from pytest_kvmmm.host.cli import main

    assert main(["/proc/kvmmm-cannot-write-here"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("kvmmm-snapshot: cannot write /proc/kvmmm-cannot-write-here:") and "Traceback" not in err


def test_fresh_pools_reread_only_the_pools(tmp_path: Path) -> None:
    root = make_host_root(tmp_path, pools={2048: {"nr": 64, "free": 64}})
    before = probe_host(root)
    (root / "sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages").write_text("10\n")
    (root / "proc/sys/kernel/hostname").write_text("renamed\n")  # not a pool: not read again
    after = with_fresh_pools(before, root)
    pool = after.hugetlb_pool(2048)
    assert pool is not None and pool.free == 10 and pool.nr == 64
    assert after.hostname == before.hostname and after.kvm is before.kvm
    (root / "sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages").write_text("lots\n")
    broken = with_fresh_pools(after, root)
    assert broken.hugetlb_pool(2048) is None and "found 'lots'" in broken.unknown["hugetlb.hugepages-2048kB"]
    (root / "sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages").write_text("12\n")
    mended = with_fresh_pools(broken, root)  # a reason from an earlier read does not linger
    assert "hugetlb.hugepages-2048kB" not in mended.unknown and mended.hugetlb_pool(2048).free == 12  # type: ignore[union-attr]


def test_every_table_names_facts_that_records_have() -> None:
    """The tables pick keys of ``fact_texts``; a key it never makes is a fact a table silently
    lacks (kvmmm-ab's once asked for cpu_model, gbpages, hypervisor and kvm_mode)."""
    from pytest_kvmmm.ab.table import DECIDING_FACTS
    from pytest_kvmmm.host.report import ENV_KEYS, facts_line
    from pytest_kvmmm.lab.table import FACT_KEYS
    from pytest_kvmmm.reports.summary import HOST_FACTS

    for keys in (DECIDING_FACTS, FACT_KEYS, HOST_FACTS):
        assert set(keys) <= set(ENV_KEYS), set(keys) - set(ENV_KEYS)
    assert facts_line({"tdp": "yes", "arch": "x86_64", "kvm": ""}, ("arch", "kvm", "tdp", "ttrem")) == "arch x86_64, tdp yes"
