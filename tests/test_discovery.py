"""discovery: search order, build and install layouts, aliases, non-executable files."""

from __future__ import annotations

from pathlib import Path

from fakes import make_fake
from pytest_kvmmm.engine.discovery import (
    Found,
    NotFound,
    SearchRoot,
    find_binary,
    search_roots,
)
from pytest_kvmmm.provision.cache import BuildManifest, selftests_dir, write_manifest


def root(path: Path, origin: str = "test") -> SearchRoot:
    return SearchRoot(path, origin)


def test_build_layout_old_and_new_arch_dirs(tmp_path: Path) -> None:
    make_fake(tmp_path / "b612" / "x86_64", "nx_huge_pages_test")
    make_fake(tmp_path / "b614" / "x86", "nx_huge_pages_test")
    for d in ("b612", "b614"):
        found = find_binary("nx_huge_pages_test", [root(tmp_path / d)], machine="x86_64")
        assert isinstance(found, Found) and found.path.parent.name in ("x86_64", "x86")
    make_fake(tmp_path / "arm" / "arm64", "page_fault_test")
    found = find_binary("page_fault_test", [root(tmp_path / "arm")], machine="aarch64")
    assert isinstance(found, Found)
    # another arch's subfolder is not this machine's
    assert isinstance(find_binary("page_fault_test", [root(tmp_path / "arm")], machine="x86_64"), NotFound)


def test_common_test_at_the_top_and_flat_install_layout(tmp_path: Path) -> None:
    make_fake(tmp_path / "build", "kvm_page_table_test")
    make_fake(tmp_path / "install" / "kvm", "kvm_page_table_test")
    for d in ("build", "install"):
        assert isinstance(find_binary("kvm_page_table_test", [root(tmp_path / d)], "x86_64"), Found)


def test_alias_finds_the_renamed_binary(tmp_path: Path) -> None:
    make_fake(tmp_path, "mmu_stress_test")
    found = find_binary("max_guest_memory_test", [root(tmp_path)], "x86_64")
    assert isinstance(found, Found) and found.name == "mmu_stress_test"


def test_first_root_wins(tmp_path: Path) -> None:
    make_fake(tmp_path / "a", "t")
    make_fake(tmp_path / "b", "t")
    found = find_binary("t", [root(tmp_path / "a", "first"), root(tmp_path / "b", "second")], "x86_64")
    assert isinstance(found, Found) and found.root.origin == "first"


def test_not_found_says_where_it_looked_and_how_to_build(tmp_path: Path) -> None:
    nf = find_binary("kvm_page_table_test", [root(tmp_path, "--kvm-selftests")], "x86_64")
    assert isinstance(nf, NotFound)
    assert f"not found in {tmp_path} (--kvm-selftests)" in nf.reason()
    assert "kvmmm-build" in nf.reason()


def test_a_program_the_build_never_had_is_not_a_build_problem(tmp_path: Path) -> None:
    # 6.12 builds max_guest_memory_test for x86_64 only: on arm64 "build them" cannot help.
    build = tmp_path / "6.12.117-aarch64"
    build.mkdir()
    write_manifest(build, BuildManifest(kernel_version="6.12.117", arch="aarch64", source="test",
                                        built=("kvm_page_table_test", "aarch64/page_fault_test")))
    nf = find_binary("max_guest_memory_test", [root(build, "kvmmm-build cache 6.12.117")], "aarch64")
    assert isinstance(nf, NotFound)
    assert nf.reason() == (
        "max_guest_memory_test is not among the programs the 6.12.117 KVM selftests build for aarch64 "
        f"(the kernel's Makefile has no such test there; {build}/manifest.json); a newer kernel's selftests may have it"
    )
    # a program the build lists (built, or failed to build) but that is gone is the usual "not found"
    write_manifest(build, BuildManifest(kernel_version="6.12.117", arch="aarch64", source="test",
                                        failed=("max_guest_memory_test",)))
    nf = find_binary("max_guest_memory_test", [root(build)], "aarch64")
    assert isinstance(nf, NotFound) and "not found in" in nf.reason() and "kvmmm-build" in nf.reason()


def test_non_executable_file_is_named(tmp_path: Path) -> None:
    fake = make_fake(tmp_path, "kvm_page_table_test")
    fake.chmod(0o644)
    nf = find_binary("kvm_page_table_test", [root(tmp_path)], "x86_64")
    assert isinstance(nf, NotFound) and nf.not_executable == fake
    assert "is not executable" in nf.reason()


def _cached_build(cache: Path, version: str, arch: str = "x86_64") -> Path:
    d = selftests_dir(cache) / version
    d.mkdir(parents=True)
    write_manifest(d, BuildManifest(kernel_version=version, arch=arch, source="test"))
    return d


def test_explicit_root_is_searched_alone(tmp_path: Path) -> None:
    _cached_build(tmp_path / "cache", "6.12.117")
    roots = search_roots(root(tmp_path / "mine", "--kvm-selftests"), tmp_path / "cache", "6.18.0", "x86_64")
    assert [r.origin for r in roots] == ["--kvm-selftests"]


def test_cache_build_chosen_for_the_running_kernel(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    _cached_build(cache, "6.1.192")
    _cached_build(cache, "6.12.117")
    _cached_build(cache, "6.16.3")
    (selftests_dir(cache) / "6.17.0").mkdir()  # no manifest: an interrupted build, never used
    _cached_build(cache, "6.14.1", arch="aarch64")

    def chosen(release: str) -> str:
        roots = search_roots(None, cache, release, "x86_64", distro_dirs=())
        return roots[0].path.name

    assert chosen("6.18.44-fc-v595") == "6.16.3"
    assert chosen("6.12.117-amd64") == "6.12.117"
    assert chosen("6.13.0") == "6.12.117"
    assert chosen("5.15.0") == "6.1.192"  # all newer: the oldest is the best bet


def test_distro_dirs_follow_the_cache(tmp_path: Path) -> None:
    distro = tmp_path / "usr-libexec-kselftests-kvm"
    distro.mkdir()
    roots = search_roots(None, tmp_path / "empty-cache", "6.12.0", "x86_64", distro_dirs=(distro, tmp_path / "absent"))
    assert [(r.path, r.origin) for r in roots] == [(distro, "distro kselftests")]
