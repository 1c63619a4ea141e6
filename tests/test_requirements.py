"""Backing-source requirements and their skip reasons."""

from __future__ import annotations

from pathlib import Path

import pytest

from fakes import make_host_root
from pytest_kvmmm.engine.requirements import first_unmet
from pytest_kvmmm.host import probe_host
from pytest_kvmmm.host.units import format_size, parse_size
from pytest_kvmmm.suite.backing import backing_requirements, hugetlb_pages_needed

MIB = 1024 * 1024


def unmet(tmp_path: Path, backing: str, size: int, **root: object) -> str | None:
    host = probe_host(make_host_root(tmp_path, **root))  # type: ignore[arg-type]
    return first_unmet(list(backing_requirements(backing, size, host.hugetlb_default_kb)), host)


def test_pages_needed_rounds_up() -> None:
    assert hugetlb_pages_needed(64 * MIB, 2048) == 32
    assert hugetlb_pages_needed(65 * MIB, 2048) == 33
    assert hugetlb_pages_needed(64 * MIB, 1048576) == 1


def test_empty_2m_pool_names_the_shortfall_and_the_command(tmp_path: Path) -> None:
    reason = unmet(tmp_path, "anonymous_hugetlb_2mb", 64 * MIB)
    assert reason == (
        "needs 32 free 2 MiB hugepages for anonymous_hugetlb_2mb, pool has 0 (nr=0 free=0 resv=0): "
        "echo 32 > /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"
        " (or let pytest do it and undo it: --kvm-allow-host-changes)"
    )


def test_partly_used_pool_asks_for_the_right_total(tmp_path: Path) -> None:
    reason = unmet(tmp_path, "shared_hugetlb", 64 * MIB, pools={2048: {"nr": 20, "free": 10, "resv": 2}})
    assert reason is not None and "pool has 8" in reason and "echo 44 >" in reason


def test_enough_pages_is_satisfied(tmp_path: Path) -> None:
    assert unmet(tmp_path, "anonymous_hugetlb_2mb", 64 * MIB, pools={2048: {"nr": 32, "free": 32}}) is None


def test_1g_pool_hint_mentions_boot_time(tmp_path: Path) -> None:
    reason = unmet(tmp_path, "anonymous_hugetlb_1gb", 64 * MIB)
    assert reason is not None and "needs 1 free 1 GiB hugepage" in reason
    assert "hugepagesz=1G hugepages=1" in reason


def test_host_without_that_page_size(tmp_path: Path) -> None:
    reason = unmet(tmp_path, "anonymous_hugetlb_1gb", 64 * MIB, pools={2048: {"nr": 0, "free": 0}})
    assert reason is not None and "this host has no 1 GiB hugetlb pool" in reason


def test_thp_never_skips_with_the_fix(tmp_path: Path) -> None:
    reason = unmet(tmp_path, "anonymous_thp", 64 * MIB, thp_enabled="never")
    assert reason == (
        "needs transparent hugepages, THP is 'never': "
        "echo madvise > /sys/kernel/mm/transparent_hugepage/enabled (or --kvm-allow-host-changes)"
    )
    assert unmet(tmp_path / "2", "anonymous_thp", 64 * MIB, thp_enabled="always") is None


def test_plain_backings_need_nothing(tmp_path: Path) -> None:
    assert unmet(tmp_path, "anonymous", 64 * MIB) is None
    assert unmet(tmp_path / "2", "shmem", 64 * MIB) is None


@pytest.mark.parametrize("text, size", [("64M", 64 * MIB), ("1G", 1024 * MIB), ("4096", 4096), ("512k", 512 * 1024)])
def test_sizes_round_trip(text: str, size: int) -> None:
    assert parse_size(text) == size
    assert parse_size(format_size(size)) == size


def test_bad_size_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="not a size: 'lots'"):
        parse_size("lots")


def test_unreadable_pool_says_why(tmp_path: Path) -> None:
    root = make_host_root(tmp_path)
    (root / "sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages").write_text("???\n")
    host = probe_host(root)
    reason = first_unmet(list(backing_requirements("anonymous_hugetlb_2mb", 64 * MIB, 2048)), host)
    assert reason == (
        "needs 32 free 2 MiB hugepages for anonymous_hugetlb_2mb, but the 2 MiB hugetlb pool cannot be read: "
        "/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages: expected a number, found '???'"
    )


def test_max_guest_memory_needs_two_cpus_whatever_the_scale(tmp_path: Path) -> None:
    """6.12's max_guest_memory_test asserts CPUs * 3/4 > 0 before it reads -c: on a one-CPU
    host (a one-vCPU lab guest) it fails "Uh, no CPUs?" (exit 254), so the catalogue skips it."""
    from pytest_kvmmm.engine.requirements import MinVcpus
    from pytest_kvmmm.suite.catalogue import CATALOGUE

    entry = next(e for e in CATALOGUE if e.name == "max_guest_memory_test")
    assert MinVcpus(2) in entry.requires
    one = probe_host(make_host_root(tmp_path / "one", cpus="0"))
    two = probe_host(make_host_root(tmp_path / "two", cpus="0-1"))
    assert MinVcpus(2).unmet(one) == "needs 2 online CPUs, this host has 1"
    assert MinVcpus(2).unmet(two) is None
