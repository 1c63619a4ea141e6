"""SelftestEngine decisions that depend on the binary as well as the host: which skip reason wins
when a binary is absent, and requirements that depend on what the build can do."""

from __future__ import annotations

from pathlib import Path

import pytest

from fakes import make_fake, make_host_root
from pytest_kvmmm.engine.discovery import SearchRoot
from pytest_kvmmm.engine.engine import EngineSettings, SelftestEngine
from pytest_kvmmm.engine.outcome import Status
from pytest_kvmmm.engine.requirements import Arch, IdleTracking
from pytest_kvmmm.host import probe_host
from pytest_kvmmm.host.model import HostFacts
from pytest_kvmmm.host.view import HostView

X86 = Arch(("x86_64",))


def engine(bins: Path, host: HostFacts) -> SelftestEngine:
    settings = EngineSettings(roots=lambda: [SearchRoot(bins, "--kvm-selftests")], default_timeout=30)
    return SelftestEngine(settings, HostView(Path(host.source), lambda: host))


def test_an_x86_only_test_on_arm64_skips_as_x86_only_not_as_missing(tmp_path: Path) -> None:
    arm = probe_host(make_host_root(tmp_path / "arm", machine="aarch64", kvm="arm64_ttrem2", kvm_modules={}))
    bins = tmp_path / "bins"
    bins.mkdir()
    result = engine(bins, arm).run("nx_huge_pages_test", requires=[X86])
    assert result.status is Status.SKIPPED
    assert result.reason == "needs a x86_64 host, this one is aarch64"


def test_a_missing_binary_on_the_right_arch_is_still_missing(tmp_path: Path) -> None:
    x86 = probe_host(make_host_root(tmp_path / "x86"))
    bins = tmp_path / "bins"
    bins.mkdir()
    result = engine(bins, x86).run("nx_huge_pages_test", requires=[X86])
    assert result.status is Status.MISSING and "nx_huge_pages_test not found in" in (result.reason or "")


def mglru_host(tmp_path: Path) -> HostFacts:
    """A host with MGLRU on (0x0007) and no page_idle bitmap."""
    host = probe_host(make_host_root(tmp_path / "root", extra={"/sys/kernel/mm/lru_gen/enabled": "0x0007\n"}))
    assert host.mglru.usable_for_aging and not host.page_idle
    return host


def test_a_build_without_mglru_support_skips_on_an_mglru_only_host(tmp_path: Path) -> None:
    bins = tmp_path / "bins"
    make_fake(bins, "access_tracking_perf_test", stdout="Populating memory             : 0.000512000s\n")
    result = engine(bins, mglru_host(tmp_path)).run("access_tracking_perf_test", requires=[IdleTracking()])
    assert result.status is Status.SKIPPED and result.returncode is None  # never ran
    assert "needs idle page tracking" in (result.reason or "")
    assert "MGLRU with bits" not in (result.reason or "")
    assert "this build predates the test's MGLRU support (6.16+ selftests)" in (result.reason or "")


def test_a_build_with_mglru_support_runs_on_an_mglru_only_host(tmp_path: Path) -> None:
    bins = tmp_path / "bins"
    make_fake(bins, "access_tracking_perf_test", stdout="Using lru_gen for aging\n")
    result = engine(bins, mglru_host(tmp_path)).run("access_tracking_perf_test", requires=[IdleTracking()])
    assert result.status is Status.PASSED and result.returncode == 0


def test_a_requirement_not_yet_specialised_accepts_mglru(tmp_path: Path) -> None:
    # Before a binary is found (kvm_requires markers, explicit paths that cannot be read) MGLRU counts.
    host = mglru_host(tmp_path)
    assert IdleTracking().unmet(host) is None
    assert IdleTracking().for_binary(tmp_path / "absent").unmet(host) is None


def test_a_binary_is_resolved_once_per_run_and_not_again_when_the_caller_did(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = probe_host(make_host_root(tmp_path / "x86"))
    bins = tmp_path / "bins"
    make_fake(bins, "set_memory_region_test", stdout="ok\n")
    e = engine(bins, host)
    found = e.resolve("set_memory_region_test")
    real = e.resolve
    looked_up: list[str] = []

    def resolve(name: str) -> object:
        looked_up.append(name)
        return real(name)

    monkeypatch.setattr(e, "resolve", resolve)
    result = e.run("set_memory_region_test", ["2"], found=found, repeat=3)
    assert result.status is Status.PASSED and result.argv[1:] == ("2",)
    assert looked_up == [], "the engine resolved the binary again"
    e.run("set_memory_region_test", ["2"], repeat=3)
    assert looked_up == ["set_memory_region_test"], "three runs, one look-up"


def test_the_engine_is_built_without_touching_the_host(tmp_path: Path) -> None:
    """Built in one step from its settings; the host is probed when first needed and the kernel
    log opened by ``watch`` (the session calls it once the run needs the host)."""
    probes = []
    root = make_host_root(tmp_path / "root")

    def first() -> HostFacts:
        probes.append(1)
        return probe_host(root)

    settings = EngineSettings(roots=lambda: [], default_timeout=30, kmsg=tmp_path / "no-kmsg", kernel_mode="report")
    made = SelftestEngine(settings, HostView(root, first))
    assert not made.view.probed and made.kernel_watch is None and made.counters is None and made.host_changes is None
    made.watch()
    assert not probes and made.kernel_watch is not None and not made.kernel_watch.active
    assert "cannot read" in (made.kernel_watch.reason or "")
    assert made.host().hostname == "fakehost" and probes == [1]
    made.host()
    assert probes == [1]


def test_the_host_view_rereads_pools_without_a_new_probe(tmp_path: Path) -> None:
    """What is computed from whole facts (their text) is redone after a reprobe, not after the
    hugetlb pools are read again before a hugetlb case."""
    root = make_host_root(tmp_path / "root", pools={2048: {"nr": 8, "free": 8}})
    view = HostView(root)
    pool = view.facts().hugetlb_pool(2048)
    assert pool is not None and pool.free == 8 and view.generation == 1
    (root / "sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages").write_text("3\n")
    view.reread_pools()
    pool = view.facts().hugetlb_pool(2048)
    assert pool is not None and pool.free == 3 and view.generation == 1
    view.reprobe()
    assert view.generation == 2
