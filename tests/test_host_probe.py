"""host.probe_host against fake roots, including broken files."""

from __future__ import annotations

from pathlib import Path

from fakes import make_host_root
from pytest_kvmmm.host import probe_host


def test_reads_a_fake_root(tmp_path: Path) -> None:
    root = make_host_root(tmp_path, pools={2048: {"nr": 600, "free": 512, "resv": 12}, 1048576: {"nr": 1, "free": 1}})
    host = probe_host(root)
    assert host.machine == "x86_64" and host.kernel_release == "6.12.0-test"
    assert host.cpus_online == 4
    assert host.mem_available == 12 * 1024**3
    assert host.hugetlb_default_kb == 2048
    assert [p.size_kb for p in host.hugetlb] == [2048, 1048576]
    pool = host.hugetlb_pool(2048)
    assert pool is not None and (pool.nr, pool.free, pool.resv, pool.usable) == (600, 512, 12, 500)
    assert not pool.writable, "a snapshot's pools are never writable"
    assert host.thp.enabled == "madvise" and host.thp.pmd_size == 2 * 1024 * 1024
    assert host.unknown == {}


def test_missing_and_malformed_files_become_unknown_with_reasons(tmp_path: Path) -> None:
    root = make_host_root(tmp_path)
    (root / "sys/kernel/mm/transparent_hugepage/enabled").write_text("always madvise never\n")
    (root / "sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages").write_text("lots\n")
    (root / "sys/devices/system/cpu/online").unlink()
    host = probe_host(root)
    assert host.thp.enabled is None
    assert "no [selected] value" in host.unknown["thp.enabled"]
    assert host.hugetlb_pool(2048) is None
    assert "expected a number, found 'lots'" in host.unknown["hugetlb.hugepages-2048kB"]
    assert host.cpus_online is None and "does not exist" in host.unknown["cpus_online"]


def test_empty_root_never_raises(tmp_path: Path) -> None:
    host = probe_host(tmp_path)
    assert host.machine is None and host.hugetlb == () and host.thp.enabled is None
    assert "hugetlb" in host.unknown and "meminfo" in host.unknown


def test_live_host_is_fast_and_sane() -> None:
    import time

    t0 = time.perf_counter()
    host = probe_host()
    assert time.perf_counter() - t0 < 0.5
    assert host.cpus_online and host.cpus_online >= 1
    assert host.kernel_release
