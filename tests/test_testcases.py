"""The upstream runner's ``*.test`` files: parsing, collection with this plugin's outcomes, and the
catalogue written out as such files and collected back (round trip)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from fakes import make_fake, make_host_root, records
from pytest_kvmmm.pytest.testcase_items import lookup_name
from pytest_kvmmm.suite import testcases_cli
from pytest_kvmmm.suite.all_kvm import SELFTESTS, all_names, selftest_path
from pytest_kvmmm.suite.testcases import TestcaseError, catalogue_testcases, parse, read

ASSERT_254 = "==== Test Assertion Failure ====\n  lib/kvm_util.c:1000: false\n  pid=1 tid=1 errno=12 - Cannot allocate memory\n"


def test_a_file_is_one_command_line() -> None:
    case = parse("dirty_log_perf_test -x 2 -v 5 -i 10\n")
    assert (case.binary, case.args, case.name) == ("dirty_log_perf_test", ("-x", "2", "-v", "5", "-i", "10"), "dirty_log_perf_test")
    assert parse("x86_64/cpuid_test").name == "cpuid_test"
    assert parse("  dirty_log_test  ").line() == "dirty_log_test"


@pytest.mark.parametrize(("text", "why"), [
    ("", "empty test command"),
    ("a\nb\n", "2 lines: a test-case file holds one command line"),
    ("dirty_log_test | tee log", "'|' needs a shell"),
    ("dirty_log_test > out", "'>' needs a shell"),
    ("dirty_log_test -b $SIZE", "'$' needs a shell"),
    ("FOO=1 dirty_log_test", "'FOO=1': environment assignments need a shell"),
    ("/usr/bin/id", "/usr/bin/id: the binary must be relative to the KVM selftests directory"),
    ("../../bin/sh", "../../bin/sh: the binary must be relative"),
])
def test_what_needs_a_shell_or_leaves_the_directory_is_refused(text: str, why: str) -> None:
    with pytest.raises(TestcaseError, match="^" + why.replace("|", r"\|").replace("$", r"\$")):
        parse(text)


def test_reading_refuses_links_fifos_and_huge_files(tmp_path: Path) -> None:
    real = tmp_path / "real.test"
    real.write_text("dirty_log_test\n")
    (tmp_path / "link.test").symlink_to(real)
    os.mkfifo(tmp_path / "fifo.test")
    (tmp_path / "huge.test").write_text("x" * (64 * 1024 + 1))
    assert read(real).binary == "dirty_log_test"
    with pytest.raises(TestcaseError, match="cannot open"):
        read(tmp_path / "link.test")
    with pytest.raises(TestcaseError, match="not a regular file"):
        read(tmp_path / "fifo.test")
    with pytest.raises(TestcaseError, match="longer than 65536 bytes"):
        read(tmp_path / "huge.test")


def test_arch_folders_are_left_to_discovery() -> None:
    assert lookup_name("x86_64/cpuid_test") == "cpuid_test"
    assert lookup_name("arm64/page_fault_test") == "page_fault_test"
    assert lookup_name("mytests/custom") == "mytests/custom"


@pytest.fixture
def upstream(tmp_path: Path) -> Path:
    """A directory in the upstream runner's layout, one file per outcome."""
    d = tmp_path / "tests"
    for name, line in {
        "dirty_log_perf_test/2slot_5vcpu_10iter": "dirty_log_perf_test -x 2 -v 5 -i 10",
        "cpuid_test/default": "x86_64/cpuid_test",
        "skips/default": "skips",
        "asserts/default": "asserts",
        "segv/default": "segv",
        "noexec/default": "noexec",
        "badelf/default": "badelf",
    }.items():
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / f"{name}.test").write_text(line + "\n")
    return d


@pytest.fixture
def bins(tmp_path: Path) -> Path:
    b = tmp_path / "bins"
    make_fake(b, "dirty_log_perf_test", stdout="ok\n", argv_file=tmp_path / "argv")
    make_fake(b / "x86_64", "cpuid_test", stdout="ok\n")
    make_fake(b, "skips", stdout="1..0 # SKIP - CONFIG_FOO is not enabled\n", exit=4)
    make_fake(b, "asserts", stderr=ASSERT_254, exit=254)
    make_fake(b, "segv", signal=signal.SIGSEGV)
    make_fake(b, "noexec").chmod(0o644)
    (b / "badelf").write_bytes(b"\x7fELF\x02\x01\x01" + b"\x00" * 64)  # cannot be started: ENOEXEC
    (b / "badelf").chmod(0o755)
    return b


def _run(pytester: pytest.Pytester, tmp_path: Path, bins: Path, *args: str, machine: str = "x86_64") -> pytest.RunResult:
    root = make_host_root(tmp_path / f"root-{machine}", machine=machine)
    return pytester.runpytest("-p", "no:cacheprovider", f"--kvm-host-snapshot={root}", f"--kvm-selftests={bins}",
                              "--kvm-results=r.jsonl", "-rA", *args)  # '=': a test file outside the directory is named


def test_a_directory_of_test_files_runs_with_the_plugins_outcomes(
    pytester: pytest.Pytester, tmp_path: Path, upstream: Path, bins: Path
) -> None:
    res = _run(pytester, tmp_path, bins, f"--kvm-testcases={upstream}")
    res.assert_outcomes(passed=2, skipped=1, failed=4)  # noexec too: a named build that cannot run it is broken
    assert records(pytester.path / "r.jsonl")["2slot_5vcpu_10iter"]["argv"][1:] == ["-x", "2", "-v", "5", "-i", "10"]  # type: ignore[index]
    assert (tmp_path / "argv").read_text().split() == ["-x", "2", "-v", "5", "-i", "10"]
    res.stdout.fnmatch_lines(["*skips*CONFIG_FOO is not enabled*"])
    res.stdout.fnmatch_lines(["*segv crashed: killed by SIGSEGV (signal 11)*"])
    res.stdout.fnmatch_lines(["*asserts exit 254: lib/kvm_util.c:1000: false*"])


def test_statuses_peers_tell_apart_stay_apart_in_records(
    pytester: pytest.Pytester, tmp_path: Path, upstream: Path, bins: Path
) -> None:
    _run(pytester, tmp_path, bins, f"--kvm-testcases={upstream}")
    from pytest_kvmmm.reports.results import read_results

    status = {str(r["binary"]): r["status"] for r in read_results(pytester.path / "r.jsonl")}
    assert status == {"dirty_log_perf_test": "passed", "cpuid_test": "passed", "skips": "skipped",
                      "asserts": "failed", "segv": "crashed", "noexec": "error", "badelf": "error"}


def test_a_catalogue_binary_brings_its_host_requirements(
    pytester: pytest.Pytester, tmp_path: Path, bins: Path
) -> None:
    d = tmp_path / "cases"
    (d / "nx").mkdir(parents=True)
    (d / "nx" / "default.test").write_text("x86_64/nx_huge_pages_test -t 887563923 -p 100\n")
    res = _run(pytester, tmp_path, bins, f"--kvm-testcases={d}", machine="aarch64")
    res.assert_outcomes(skipped=1)
    res.stdout.fnmatch_lines(["*needs a x86_64 host, this one is aarch64*"])


def test_only_asked_for_test_files_are_collected(pytester: pytest.Pytester, tmp_path: Path, bins: Path) -> None:
    (pytester.path / "unrelated.test").write_text("whatever | this is\n")
    pytester.makepyfile("def test_plain():\n    pass\n")
    res = _run(pytester, tmp_path, bins)
    res.assert_outcomes(passed=1)  # the .test file in the tree is not ours to run
    named = tmp_path / "one.test"
    named.write_text("skips\n")
    _run(pytester, tmp_path, bins, str(named)).assert_outcomes(skipped=1)  # as upstream's -t FILE


def test_a_malformed_file_is_a_one_line_collection_error(pytester: pytest.Pytester, tmp_path: Path, bins: Path) -> None:
    d = tmp_path / "bad"
    d.mkdir()
    (d / "piped.test").write_text("dirty_log_test | tee log\n")
    res = _run(pytester, tmp_path, bins, f"--kvm-testcases={d}")
    res.assert_outcomes(errors=1)
    res.stdout.fnmatch_lines([f"{d / 'piped.test'}: '|' needs a shell, which this plugin does not use: dirty_log_test | tee log"])
    assert "Traceback" not in res.stdout.str()


def test_the_catalogue_round_trips_through_test_files(pytester: pytest.Pytester, tmp_path: Path) -> None:
    """Written by kvmmm-testcases, collected by pytest: every case runs its binary with the file's arguments."""
    out = tmp_path / "written"
    assert testcases_cli.main(["write", str(out), "--scale", "smoke", "--arch", "x86_64"]) == 0
    written = dict(catalogue_testcases("smoke", arch="x86_64"))
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.test")) == sorted(written)
    assert {rel: read(out / rel) for rel in written} == written
    b = tmp_path / "bins"
    for case in written.values():
        make_fake(b if "/" not in case.binary else b / case.binary.split("/")[0], case.name, stdout="ok\n")
    root = make_host_root(tmp_path / "root", kvm_modules={"kvm": {"tdp_mmu": "Y", "eager_page_split": "Y", "nx_huge_pages": "Y"}})
    res = pytester.runpytest("-p", "no:cacheprovider", f"--kvm-host-snapshot={root}", f"--kvm-selftests={b}",
                             f"--kvm-testcases={out}", "--kvm-results", "r.jsonl", "--co", "-q")
    assert f"{len(written)} tests collected" in res.stdout.str()
    res = pytester.runpytest("-p", "no:cacheprovider", f"--kvm-host-snapshot={root}", f"--kvm-selftests={b}",
                             f"--kvm-testcases={out}", "--kvm-results", "r.jsonl")
    from pytest_kvmmm.reports.results import read_results

    ran = {(str(r["binary"]), tuple(r["argv"][1:])) for r in read_results(pytester.path / "r.jsonl") if r["status"] == "passed"}
    skipped = [r for r in read_results(pytester.path / "r.jsonl") if r["status"] != "passed"]
    expected = {(c.name, c.args) for c in written.values()}
    # what the snapshot host cannot do skips before the binary runs (a kvm cap, page_idle ...); the rest ran as written
    assert ran | {(str(r["binary"]), tuple(r["argv"][1:])) for r in skipped} == expected
    assert ran and all(r["status"] == "skipped" for r in skipped), skipped


def test_write_all_adds_every_selftests_default_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert testcases_cli.main(["write", str(tmp_path), "--all", "--arch", "x86_64", "--kernel", "6.12"]) == 0
    assert (tmp_path / "x86_64" / "cpuid_test" / "default.test").read_text() == "x86_64/cpuid_test\n"  # upstream's layout
    assert (tmp_path / "x86_64" / "nx_huge_pages_test" / "default_scale.test").read_text().startswith("x86_64/nx_huge_pages_test -t ")
    assert (tmp_path / "dirty_log_test" / "default.test").read_text() == "dirty_log_test\n"
    assert len(list(tmp_path.rglob("default.test"))) == len(SELFTESTS["6.12"]["x86_64"]) == 84
    assert "wrote 110 test-case files" in capsys.readouterr().out


def test_the_static_lists() -> None:
    assert len(SELFTESTS["6.12"]["x86_64"]) == 84 and len(SELFTESTS["6.12"]["aarch64"]) == 30
    assert "s390x/sync_regs_test" in all_names("6.12") and "x86_64/sync_regs_test" in all_names("6.12")
    assert selftest_path("nx_huge_pages_test", "6.12", "x86_64") == "x86_64/nx_huge_pages_test"
    assert selftest_path("kvm_page_table_test", "6.12", "aarch64") == "kvm_page_table_test"


def test_a_catalogue_case_file_brings_its_backings_needs() -> None:
    from pytest_kvmmm.engine.requirements import HugetlbPages, ThpMadvise
    from pytest_kvmmm.pytest.testcase_items import file_backing_needs
    from pytest_kvmmm.suite.catalogue import BY_NAME

    pt, dl = BY_NAME["kvm_page_table_test"], BY_NAME["dirty_log_perf_test"]
    assert file_backing_needs(pt, ["-s", "anonymous_hugetlb_2mb", "-b", "64M", "-v", "2"]) == (HugetlbPages(2048, 32, "anonymous_hugetlb_2mb"),)
    assert file_backing_needs(dl, ["-s", "anonymous_hugetlb_2mb", "-b", "64M", "-v", "2"]) == (HugetlbPages(2048, 64, "anonymous_hugetlb_2mb"),)
    assert file_backing_needs(pt, ["-s", "anonymous_thp"]) == (ThpMadvise(),)
    assert file_backing_needs(pt, ["-s", "shared_hugetlb", "-b", "64M"]) == ()  # the host's default size: the binary decides
    assert file_backing_needs(pt, ["-s", "anonymous", "-b", "64M"]) == ()


def test_a_backings_small_pool_skips_before_the_binary_runs(pytester: pytest.Pytester, tmp_path: Path) -> None:
    """A catalogue binary's file asking for 2M hugetlb pages on a host whose pool is empty skips
    with the pool's reason (the binary would fail with exit 254, ENOMEM)."""
    d = tmp_path / "cases"
    (d / "kvm_page_table_test").mkdir(parents=True)
    (d / "kvm_page_table_test" / "h2m.test").write_text("kvm_page_table_test -s anonymous_hugetlb_2mb -b 64M -v 2\n")
    b = tmp_path / "bins"
    make_fake(b, "kvm_page_table_test", stderr=ASSERT_254, exit=254, argv_file=tmp_path / "argv")
    root = make_host_root(tmp_path / "root", pools={2048: {"nr": 0, "free": 0}})
    res = pytester.runpytest("-p", "no:cacheprovider", f"--kvm-host-snapshot={root}", f"--kvm-selftests={b}",
                             f"--kvm-testcases={d}", "--kvm-results=r.jsonl", "-rs")
    res.assert_outcomes(skipped=1)
    res.stdout.fnmatch_lines(["*needs 32 free 2 MiB hugepages for anonymous_hugetlb_2mb, pool has 0*"])
    assert not (tmp_path / "argv").exists()  # never started
    assert records(pytester.path / "r.jsonl")["h2m"]["status"] == "skipped"


def test_a_file_others_could_have_written_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared.test"
    shared.write_text("dirty_log_test\n")
    shared.chmod(0o666)
    with pytest.raises(TestcaseError, match=r"writable by group or others \(mode 0666\)"):
        read(shared)


def test_writing_never_follows_a_link_where_a_folder_should_be(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "x86_64").symlink_to(elsewhere)
    assert testcases_cli.main(["write", str(out), "--all", "--arch", "x86_64"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"refusing to write in {out / 'x86_64'}: it is a symbolic link" in err
    assert not list(elsewhere.iterdir())


def test_another_archs_build_gets_no_x86_only_cases() -> None:
    arm = dict(catalogue_testcases("smoke", arch="aarch64"))
    x86 = dict(catalogue_testcases("smoke", arch="x86_64"))
    only_x86 = {"x86_64/dirty_log_page_splitting_test", "x86_64/nx_huge_pages_test", "pre_fault_memory_test"}
    assert {c.binary for c in x86.values()} >= only_x86
    assert not {c.binary for c in arm.values()} & (only_x86 | {"dirty_log_page_splitting_test", "nx_huge_pages_test"})
    assert all("x86_64/" not in c.binary for c in arm.values())


def test_the_testcases_directory_is_checked_and_ini_paths_are_relative_to_the_ini_file(
    pytester: pytest.Pytester, tmp_path: Path, bins: Path
) -> None:
    res = _run(pytester, tmp_path, bins, f"--kvm-testcases={tmp_path / 'nowhere'}")
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    res.stderr.fnmatch_lines([f"*--kvm-testcases: {tmp_path / 'nowhere'} is not a directory of *.test files"])
    proj = pytester.path / "proj"
    (proj / "cases" / "skips").mkdir(parents=True)
    (proj / "cases" / "skips" / "default.test").write_text("skips\n")
    (proj / "pytest.ini").write_text("[pytest]\nkvm_testcases = cases\n")
    pytester.mkdir("elsewhere")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(pytester.path / "elsewhere")
        res = pytester.runpytest("-p", "no:cacheprovider", f"-c={proj / 'pytest.ini'}", f"--rootdir={proj}",
                                 f"--kvm-host-snapshot={make_host_root(tmp_path / 'r2')}", f"--kvm-selftests={bins}")
    res.assert_outcomes(skipped=1)


def test_xdist_workers_collect_the_same_test_files(pytester: pytest.Pytester, tmp_path: Path, upstream: Path, bins: Path) -> None:
    """The directory reaches the workers with the controller's arguments: no 'Different tests were collected'."""
    root = make_host_root(tmp_path / "root")
    res = pytester.runpytest_subprocess("-n", "2", "-p", "no:cacheprovider", f"--kvm-host-snapshot={root}",
                                        f"--kvm-selftests={bins}", f"--kvm-testcases={upstream}", "--kvm-results=r.jsonl")
    res.assert_outcomes(passed=2, skipped=1, failed=4)
    from pytest_kvmmm.reports.results import read_results

    assert len(read_results(pytester.path / "r.jsonl")) == 7
