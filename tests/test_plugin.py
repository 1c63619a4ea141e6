"""The plugin seen from a user: markers, outcomes, results file, fixtures, the shipped suite."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import pytest

from fakes import golden, make_fake, make_golden_fake, make_host_root, records

ASSERT_254 = """\
==== Test Assertion Failure ====
  lib/kvm_util.c:1000: region->mmap_start != MAP_FAILED
  pid=4242 tid=4242 errno=12 - Cannot allocate memory
     1\t0x0000000000404f8b: vm_mem_add at kvm_util.c:1000
  mmap() failed, rc: -1 errno: 12 (Cannot allocate memory)
"""



@pytest.fixture
def bins(tmp_path: Path) -> Path:
    d = tmp_path / "selftests"
    pt = golden("kvm_page_table_test.anonymous.stdout")
    make_fake(d, "kvm_page_table_test", stdout=pt)
    make_fake(d, "skip6", stdout="Random seed: 0x6b8b4567\n1..0 # SKIP - CONFIG_IDLE_PAGE_TRACKING is not enabled\n", exit=4)
    make_fake(d, "skip5", stdout="__NR_userfaultfd must be present for userfaultfd test, skipping test\n", exit=4)
    make_fake(d, "fail254", stdout="Random seed: 0x6b8b4567\n", stderr=ASSERT_254, exit=254)
    make_fake(d, "segv", stdout="Started all vCPUs successfully\n", signal=signal.SIGSEGV)
    make_fake(d, "hang", stdout="Started all vCPUs successfully\n", hang=True)
    make_fake(d, "garbage", raw_stdout=b"\xff\xfe\x00\x80garbage\n", exit=1)
    make_fake(d, "noexec").chmod(0o644)
    return d


MARKER_TESTS = """
    import pytest

    @pytest.mark.kvm_selftest("kvm_page_table_test", "-b", "64M", "-v", 2)
    def test_pass(kvm_result):
        assert kvm_result.returncode == 0
        assert kvm_result.metrics["KVM_CREATE_MAPPINGS"] > 0
        assert kvm_result.argv[1:] == ("-b", "64M", "-v", "2")

    @pytest.mark.kvm_selftest("skip6")
    def test_skip6():
        raise AssertionError("the body must not run after a skip")

    @pytest.mark.kvm_selftest("skip5")
    def test_skip5():
        pass

    @pytest.mark.kvm_selftest("fail254")
    def test_fail254():
        raise AssertionError("the body must not run after a failure")

    @pytest.mark.kvm_selftest("segv")
    def test_segv():
        pass

    @pytest.mark.kvm_selftest("hang", timeout=2)
    def test_hang():
        pass

    @pytest.mark.kvm_selftest("garbage")
    def test_garbage():
        pass

    @pytest.mark.kvm_selftest("noexec")
    def test_noexec():
        pass

    @pytest.mark.kvm_selftest("not_built_test")
    def test_missing():
        pass
"""


def test_marker_maps_every_exit(pytester: pytest.Pytester, bins: Path) -> None:
    pytester.makepyfile(MARKER_TESTS)
    # --kvm-allow-missing: a missing or unrunnable program skips (tests/test_dashboards.py: it fails without)
    res = pytester.runpytest(f"--kvm-selftests={bins}", "--kvm-results", "r.jsonl", "-rA", "--kvm-allow-missing")
    res.assert_outcomes(passed=1, skipped=4, failed=4)
    out = res.stdout.str()
    assert "Traceback" not in out and "INTERNALERROR" not in out
    res.stdout.fnmatch_lines([
        "SKIPPED * CONFIG_IDLE_PAGE_TRACKING is not enabled",
        "SKIPPED * __NR_userfaultfd must be present for userfaultfd test",
        f"SKIPPED * noexec: {bins}/noexec exists but is not executable*",
        f"SKIPPED * not_built_test not found in {bins} (--kvm-selftests); build them with `kvmmm-build`*",
    ])
    assert "fail254 exit 254: lib/kvm_util.c:1000: region->mmap_start != MAP_FAILED: mmap() failed" in out
    assert "==== Test Assertion Failure ====" in out
    assert "segv crashed: killed by SIGSEGV (signal 11)" in out
    assert "hang timed out after 2s; its process group was killed" in out
    assert "garbage exit 1:" in out

    recs = records(pytester.path / "r.jsonl")
    assert {k: v["status"] for k, v in recs.items()} == {
        "test_pass": "passed", "test_skip6": "skipped", "test_skip5": "skipped", "test_fail254": "failed",
        "test_segv": "crashed", "test_hang": "timeout", "test_garbage": "failed", "test_noexec": "missing",
        "test_missing": "missing",
    }
    ok = recs["test_pass"]
    assert ok["binary"] == "kvm_page_table_test" and ok["returncode"] == 0
    assert ok["argv"] == [str(bins / "kvm_page_table_test"), "-b", "64M", "-v", "2"]
    assert set(ok["metrics"]) == {"KVM_CREATE_MAPPINGS", "KVM_UPDATE_MAPPINGS", "KVM_ADJUST_MAPPINGS"}
    assert isinstance(ok["duration_s"], float) and ok["duration_s"] > 0
    assert recs["test_fail254"]["returncode"] == 254
    assert recs["test_segv"]["returncode"] == -11
    assert recs["test_skip6"]["reason"] == "CONFIG_IDLE_PAGE_TRACKING is not enabled"
    for rec in recs.values():
        assert {"nodeid", "binary", "argv", "status", "returncode", "duration_s", "reason", "metrics"} <= set(rec)


def test_summary_section_shows_metrics(pytester: pytest.Pytester, bins: Path) -> None:
    pytester.makepyfile("""
        import pytest

        @pytest.mark.kvm_selftest("kvm_page_table_test")
        def test_pt():
            pass
    """)
    res = pytester.runpytest(f"--kvm-selftests={bins}")
    res.stdout.fnmatch_lines([
        "*= kvm selftests on * =*",
        "PASSED * test_*.py::test_pt",
        "",
        "kvm_page_table_test  KVM_CREATE_MAPPINGS  KVM_UPDATE_MAPPINGS  KVM_ADJUST_MAPPINGS",
        "test_pt                          0.2540s              0.0768s              0.0622s",
    ])


def test_runner_fixture_passes_args_and_returns_result(pytester: pytest.Pytester, tmp_path: Path) -> None:
    d = tmp_path / "b"
    argv_file = tmp_path / "argv"
    make_fake(d, "kvm_page_table_test", stdout=golden("kvm_page_table_test.anonymous.stdout"), argv_file=argv_file)
    pytester.makepyfile("""
        def test_run(kvm_selftests):
            r = kvm_selftests.run("kvm_page_table_test", "-b", "64M", "-v", 2)
            assert r.passed and r.metrics["KVM_ADJUST_MAPPINGS"] > 0
    """)
    pytester.runpytest(f"--kvm-selftests={d}").assert_outcomes(passed=1)
    assert argv_file.read_text().split("\n") == ["-b", "64M", "-v", "2"]


@pytest.mark.parametrize(
    "marker, message",
    [
        ("kvm_selftest()", "the first argument must be the binary's name"),
        ("kvm_selftest('t', retries=3)", "unknown keyword(s) retries"),
        ("kvm_selftest('t', timeout=-1)", "timeout must be a finite positive number"),
        ("kvm_selftest('t', timeout=float('nan'))", "timeout must be a finite positive number of seconds, got nan"),
        ("kvm_selftest('t', timeout=float('inf'))", "timeout must be a finite positive number of seconds, got inf"),
        ("kvm_selftest('t', timeout=True)", "timeout must be a finite positive number of seconds, got True"),
        ("kvm_selftest('t', ['-b'])", "arguments must be strings or numbers"),
    ],
)
def test_marker_misuse_quotes_the_signature(pytester: pytest.Pytester, bins: Path, marker: str, message: str) -> None:
    pytester.makepyfile(f"""
        import pytest

        @pytest.mark.{marker}
        def test_x():
            pass
    """)
    res = pytester.runpytest(f"--kvm-selftests={bins}")
    assert res.ret != 0
    res.stderr.fnmatch_lines([f"*@pytest.mark.kvm_selftest(name, *args, timeout=None): {message}*"])


def test_kvm_result_without_marker_is_a_usage_error(pytester: pytest.Pytester, bins: Path) -> None:
    pytester.makepyfile("def test_x(kvm_result):\n    pass\n")
    res = pytester.runpytest(f"--kvm-selftests={bins}")
    res.stderr.fnmatch_lines(["*the kvm_result fixture needs a @pytest.mark.kvm_selftest*"])


@pytest.mark.parametrize(
    "args, message",
    [
        (["--kvm-timeout", "soon"], "--kvm-timeout: 'soon' is not a number of seconds"),
        # nan compares false with every deadline and inf never comes: both would never time out.
        *(([f"--kvm-timeout={bad}"], f"--kvm-timeout: the timeout must be a finite positive number of seconds, got '{bad}'")
          for bad in ("nan", "NaN", "inf", "-inf", "1e999", "0", "-0", "-5")),
        (["--kvm-timeout", ""], "--kvm-timeout: '' is not a number of seconds"),
        (["--kvm-scale", "huge"], "--kvm-scale: unknown scale 'huge'; choose one of "),
        (["--kvm-selftests", "/nonexistent/dir"], "--kvm-selftests: /nonexistent/dir is not a directory"),
    ],
)
def test_bad_options_are_usage_errors(pytester: pytest.Pytester, args: list[str], message: str) -> None:
    pytester.makepyfile("def test_x():\n    pass\n")
    res = pytester.runpytest(*args)
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    res.stderr.fnmatch_lines([f"*{message}*"])


@pytest.mark.parametrize("bad", ["nan", "inf", "0", "-1", "2 minutes"])
def test_bad_ini_timeout_is_a_usage_error_naming_the_ini_key(pytester: pytest.Pytester, bad: str) -> None:
    pytester.makeini(f"[pytest]\nkvm_timeout = {bad}\n")
    pytester.makepyfile("def test_x():\n    pass\n")
    res = pytester.runpytest()
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    res.stderr.fnmatch_lines([f"*ini kvm_timeout: *{bad!r}*"])


def test_timeout_from_ini_and_environment_dir(pytester: pytest.Pytester, bins: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makeini("[pytest]\nkvm_timeout = 1.5\n")
    pytester.makepyfile("""
        import pytest

        @pytest.mark.kvm_selftest("hang")
        def test_hang():
            pass
    """)
    monkeypatch.setenv("KVM_SELFTESTS_DIR", str(bins))
    res = pytester.runpytest()
    res.assert_outcomes(failed=1)
    assert "hang timed out after 1.5s" in res.stdout.str()


SUITE = ["--pyargs", "pytest_kvmmm.suite", "-m", "pagetable", "--kvm-scale", "smoke", "-rs"]
PAGE_TABLE = [*SUITE, "-k", "test_kvm_page_table"]


def test_suite_skips_before_running_when_the_host_lacks_pools(pytester: pytest.Pytester, tmp_path: Path) -> None:
    argv_file = tmp_path / "argv"
    d = tmp_path / "b"
    make_fake(d, "kvm_page_table_test", stdout=golden("kvm_page_table_test.anonymous.stdout"), argv_file=argv_file)
    root = make_host_root(tmp_path / "root", thp_enabled="never")
    res = pytester.runpytest(*PAGE_TABLE, f"--kvm-selftests={d}", f"--kvm-host-snapshot={root}", "--kvm-results", "r.jsonl")
    res.assert_outcomes(passed=2, skipped=4)
    res.stdout.fnmatch_lines_random([
        ("SKIPPED * needs 32 free 2 MiB hugepages for anonymous_hugetlb_2mb, pool has 0 (nr=0 free=0 resv=0): "
        "echo 32 > /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages*"),
        "SKIPPED * needs 1 free 1 GiB hugepage for anonymous_hugetlb_1gb, pool has 0*",
        "SKIPPED * needs 32 free 2 MiB hugepages for shared_hugetlb*",
        "SKIPPED * needs transparent hugepages, THP is 'never': echo madvise > /sys/kernel/mm/transparent_hugepage/enabled (or --kvm-allow-host-changes)",
    ])
    recs = records(pytester.path / "r.jsonl")
    assert recs["test_kvm_page_table[anonymous]"]["argv"][1:] == ["-s", "anonymous", "-b", "64M", "-v", "2"]
    assert recs["test_kvm_page_table[anonymous_thp]"]["returncode"] is None, "a pre-checked skip never runs the binary"
    assert argv_file.read_text().split("\n")[:2] == ["-s", "shmem"], "the last binary run was shmem"


def test_suite_runs_hugetlb_cases_when_the_pool_is_big_enough(pytester: pytest.Pytester, tmp_path: Path) -> None:
    d = tmp_path / "b"
    make_fake(d, "kvm_page_table_test", stdout=golden("kvm_page_table_test.anonymous.stdout"))
    root = make_host_root(tmp_path / "root", cpus="0", pools={2048: {"nr": 32, "free": 32}, 1048576: {"nr": 1, "free": 1}})
    res = pytester.runpytest(*PAGE_TABLE, f"--kvm-selftests={d}", f"--kvm-host-snapshot={root}", "--kvm-results", "r.jsonl")
    res.assert_outcomes(passed=6)
    rec = records(pytester.path / "r.jsonl")["test_kvm_page_table[anonymous_hugetlb_2mb]"]
    assert rec["argv"][1:] == ["-s", "anonymous_hugetlb_2mb", "-b", "64M", "-v", "1"]
    assert rec["notes"] == ["vCPUs capped from 2 to 1 (online CPUs)"]


def test_suite_fails_when_a_pass_prints_no_stage_times(pytester: pytest.Pytester, tmp_path: Path) -> None:
    d = tmp_path / "b"
    make_fake(d, "kvm_page_table_test", stdout="Random seed: 0x6b8b4567\n\xff garbage\n")
    res = pytester.runpytest(*SUITE, f"--kvm-selftests={d}", "-k", "test_kvm_page_table and anonymous and not thp and not hugetlb")
    res.assert_outcomes(failed=1)
    res.stdout.fnmatch_lines(["*kvm_page_table_test passed but printed no value for KVM_CREATE_MAPPINGS, KVM_UPDATE_MAPPINGS*"])


def test_suite_collects_the_same_ids_on_any_host(pytester: pytest.Pytester, tmp_path: Path) -> None:
    empty = make_host_root(tmp_path / "a", machine="aarch64", cpus="0", pools={})
    rich = make_host_root(tmp_path / "b", pools={2048: {"nr": 4096, "free": 4096}})
    ids = []
    for root in (empty, rich):
        res = pytester.runpytest(*SUITE, "--collect-only", "-q", f"--kvm-host-snapshot={root}")
        ids.append([ln for ln in res.outlines if "::" in ln])
    assert ids[0] == ids[1] and len(ids[0]) >= 24


def test_host_info_text_and_json_from_a_snapshot(pytester: pytest.Pytester, tmp_path: Path) -> None:
    root = make_host_root(tmp_path / "root", hostname="lab-7", pools={2048: {"nr": 64, "free": 60}})
    res = pytester.runpytest("--kvm-host-info", f"--kvm-host-snapshot={root}")
    assert res.ret == 0
    res.stdout.fnmatch_lines([
        f"host lab-7 (facts from {root}, probed in * ms)",
        "*kvm       kvm_pvm; /dev/kvm usable; API 12",
        "*kvm cpuid 1G pages no, LA57 no, MAXPHYADDR 48*",
        "*hugetlb   default 2M; 2M nr=64 free=60 resv=0 surplus=0*",
    ])
    assert "collected" not in res.stdout.str(), "--kvm-host-info must not collect or run tests"
    res = pytester.runpytest("--kvm-host-info=json", f"--kvm-host-snapshot={root}")
    data = json.loads(res.stdout.str())
    assert data["hostname"] == "lab-7" and data["kvm"]["flavour"] == "kvm_pvm"
    assert data["kvm"]["tdp_mmu"] is False and data["kvm"]["params"]["kvm.tdp_mmu"]["writable"] is False


def test_report_header_summarises_the_host(pytester: pytest.Pytester, tmp_path: Path) -> None:
    root = make_host_root(tmp_path / "root", hostname="lab-7")
    pytester.makepyfile("def test_x():\n    pass\n")
    res = pytester.runpytest(f"--kvm-host-snapshot={root}")
    res.stdout.fnmatch_lines([
        # "[[]" is fnmatch's literal "[": an unescaped one opens a character class, which
        # Python 3.9 rejects for the path's reversed ranges ("t-o").
        f"kvmmm: lab-7 [[]snapshot {root}]: x86_64 6.12.0-test, 4K pages, 4 CPUs, KVM kvm_pvm, TDP no, TDP MMU no, "
        "hugetlb free/nr 2M:0/0 1G:0/0, THP madvise, page_idle no",
    ])


def test_host_fixtures(pytester: pytest.Pytester, tmp_path: Path) -> None:
    root = make_host_root(tmp_path / "root", machine="aarch64", kvm="arm64_ttrem2", kvm_modules={})
    pytester.makepyfile("""
        def test_facts(kvm_host, kvm_info, kvm_hugetlb_pools, kvm_ttrem):
            assert kvm_host.machine == "aarch64"
            assert kvm_info.ipa_size == 48
            assert [p.size_kb for p in kvm_hugetlb_pools] == [2048, 1048576]
            assert kvm_ttrem == 2
    """)
    pytester.runpytest(f"--kvm-host-snapshot={root}").assert_outcomes(passed=1)


def test_bad_snapshot_is_a_usage_error(pytester: pytest.Pytester, tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.txt"
    bogus.write_text("x")
    res = pytester.runpytest(f"--kvm-host-snapshot={bogus}")
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    res.stderr.fnmatch_lines(["*--kvm-host-snapshot: * is neither a snapshot directory nor a tarball*"])


REQUIRES_TESTS = """
    import pytest

    @pytest.mark.kvm_requires(hugetlb={"2M": 512})
    @pytest.mark.kvm_selftest("kvm_page_table_test")
    def test_needs_pool():
        pass

    @pytest.mark.kvm_requires(kvm_params={"tdp_mmu": True}, arch="x86_64")
    def test_needs_tdp_mmu():
        pass

    @pytest.mark.kvm_requires(ttrem=2)
    def test_needs_ttrem():
        pass

    @pytest.mark.kvm_requires(kvm_caps=["PRE_FAULT_MEMORY"])
    def test_needs_prefault():
        pass

    @pytest.mark.kvm_requires(min_vcpus=64, min_memory="1T")
    def test_needs_big_host():
        pass

    @pytest.mark.kvm_requires(thp=True, kvm=True, min_vcpus=2)
    def test_satisfied():
        pass
"""


def test_kvm_requires_skips_with_what_is_missing(pytester: pytest.Pytester, tmp_path: Path, bins: Path) -> None:
    root = make_host_root(tmp_path / "root", pools={2048: {"nr": 64, "free": 64}})
    pytester.makepyfile(REQUIRES_TESTS)
    res = pytester.runpytest(f"--kvm-host-snapshot={root}", f"--kvm-selftests={bins}", "-rs", "--kvm-results", "r.jsonl")
    res.assert_outcomes(passed=1, skipped=5)
    res.stdout.fnmatch_lines_random([
        "*needs 512 free 2 MiB hugepages, pool has 64 (nr=64 free=64 resv=0): "
        "echo 512 > /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages*",
        "*needs KVM parameter kvm.tdp_mmu=Y, it is N: it is read-only here: reload kvm with tdp_mmu=Y*",
        "*needs TTRem (FEAT_BBM) level 2, unknown on this host*",
        "*needs KVM_CAP_PRE_FAULT_MEMORY, KVM answers 0*",
        "*needs 64 online CPUs, this host has 4",
    ])
    # the selftest test that skipped before running still has its record
    rec = records(pytester.path / "r.jsonl")["test_needs_pool"]
    assert rec["status"] == "skipped" and rec["returncode"] is None and "512 free" in rec["reason"]


@pytest.mark.parametrize(
    "marker, message",
    [
        ("kvm_requires(hugetlb=512)", "hugetlb=512: takes {page size: pages}"),
        ("kvm_requires(warp_drive=True)", "unknown requirement 'warp_drive'"),
        ("kvm_requires(kvm_params={'tdp_mmu': 'yes'})", "takes {parameter: True/False}"),
        ("kvm_requires('x86_64')", "takes keyword arguments only"),
        ("kvm_requires(min_memory='lots')", "not a size: 'lots'"),
    ],
)
def test_kvm_requires_misuse_quotes_the_signature(pytester: pytest.Pytester, marker: str, message: str) -> None:
    pytester.makepyfile(f"import pytest\n\n@pytest.mark.{marker}\ndef test_x():\n    pass\n")
    res = pytester.runpytest()
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    res.stderr.fnmatch_lines([f"*@pytest.mark.kvm_requires(arch=None, kvm=None, *): *{message}*"])


def test_guest_modes_resolve_through_the_binarys_own_help(pytester: pytest.Pytester, tmp_path: Path) -> None:
    d = tmp_path / "b"
    help_text = golden("help/kvm_page_table_test.real-6.12.117-x86_64.stdout")
    argv_file = tmp_path / "argv"
    script = d / "kvm_page_table_test"
    make_fake(d, "real_pt", stdout=golden("kvm_page_table_test.anonymous.stdout"), argv_file=argv_file)
    # -h prints the real 6.12 table; anything else behaves like a passing run
    script.write_text(
        f"#!{sys.executable}\nimport os, sys\n"
        f"if sys.argv[1:] == ['-h']:\n    sys.stdout.write({help_text!r}); sys.exit(0)\n"
        f"os.execv({str(d / 'real_pt')!r}, [{str(d / 'real_pt')!r}, *sys.argv[1:]])\n"
    )
    script.chmod(0o755)
    x86 = make_host_root(tmp_path / "x86")
    res = pytester.runpytest(
        *PAGE_TABLE, f"--kvm-selftests={d}", "--kvm-guest-modes", "pxxv48_4k,p52v48_4k",
        "--kvm-backing-srcs", "anonymous", "--kvm-results", "r.jsonl", f"--kvm-host-snapshot={x86}",
    )
    res.assert_outcomes(passed=1, skipped=1)
    recs = records(pytester.path / "r.jsonl")
    assert recs["test_kvm_page_table[anonymous-pxxv48_4k]"]["argv"][-2:] == ["-m", "9"]
    skip = recs["test_kvm_page_table[anonymous-p52v48_4k]"]
    # another arch's mode skips without asking the binary
    assert skip["status"] == "skipped" and skip["reason"] == (
        "guest mode p52v48_4k (PA-bits:52, VA-bits:48, 4K pages) is for aarch64 or riscv64 hosts, this host is x86_64")
    # on an arm64 host the same build's -h decides: the x86 table marks p52v48_4k unsupported
    arm = make_host_root(tmp_path / "arm", machine="aarch64", kvm="arm64_ttrem2", kvm_modules={})
    res = pytester.runpytest(
        *PAGE_TABLE, f"--kvm-selftests={d}", "--kvm-guest-modes", "p52v48_4k",
        "--kvm-backing-srcs", "anonymous", "--kvm-results", "r2.jsonl", f"--kvm-host-snapshot={arm}",
    )
    skip = records(pytester.path / "r2.jsonl")["test_kvm_page_table[anonymous-p52v48_4k]"]
    assert skip["status"] == "skipped" and "guest mode p52v48_4k" in skip["reason"]
    assert "without '(supported)'" in skip["reason"]


def test_bad_mode_and_backing_selections_are_usage_errors(pytester: pytest.Pytester) -> None:
    res = pytester.runpytest("--kvm-guest-modes", "p99v99_4k")
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    res.stderr.fnmatch_lines(["*--kvm-guest-modes: *p99v99_4k*"])
    res = pytester.runpytest("--kvm-backing-srcs", "anonymous,floppy")
    res.stderr.fnmatch_lines(["*--kvm-backing-srcs: unknown backing source(s) floppy*"])


def test_exit_0_with_a_logical_failure_fails(pytester: pytest.Pytester, tmp_path: Path) -> None:
    d = tmp_path / "b"
    make_golden_fake(d, "memslot_perf_test", "memslot_perf_test.count_too_high")
    res = pytester.runpytest(*SUITE, "-m", "memslot", "-k", "memslot_perf", f"--kvm-selftests={d}")
    res.assert_outcomes(failed=1)
    res.stdout.fnmatch_lines(["*memslot_perf_test exit 0 but: Memslot count too high for this test, decrease the cap (max is 8209)*"])


def test_collection_is_the_same_on_any_host_with_all_modes(pytester: pytest.Pytester, tmp_path: Path) -> None:
    arm = make_host_root(tmp_path / "arm", machine="aarch64", kvm="arm64_ttrem2", kvm_modules={}, cpus="0")
    x86 = make_host_root(tmp_path / "x86", kvm="intel_ept", pools={2048: {"nr": 4096, "free": 4096}})
    nokvm = make_host_root(tmp_path / "nokvm", kvm="no_kvm", kvm_modules={})
    ids = []
    for root in (arm, x86, nokvm):
        res = pytester.runpytest(*SUITE, "--collect-only", "-q", "--kvm-guest-modes", "all", f"--kvm-host-snapshot={root}")
        ids.append([ln for ln in res.outlines if "::" in ln])
    assert ids[0] == ids[1] == ids[2]
    assert any("p40v48_64k" in i for i in ids[0]) and any("pxxv48_4k" in i for i in ids[0])


def test_repeat_keeps_every_sample_and_stops_at_a_failure(pytester: pytest.Pytester, tmp_path: Path) -> None:
    d = tmp_path / "b"
    d.mkdir()
    counter = tmp_path / "count"
    # prints CREATE = 0.1 * run number; the fourth run fails
    script = d / "kvm_page_table_test"  # named so its metric parser applies
    script.write_text(
        f"#!{sys.executable}\nimport sys, pathlib\np = pathlib.Path({str(counter)!r})\n"
        "n = int(p.read_text()) + 1 if p.exists() else 1\np.write_text(str(n))\n"
        "print(f'KVM_CREATE_MAPPINGS: total execution time: {0.1 * n:.9f}s')\n"
        "sys.exit(254 if n == 4 else 0)\n"
    )
    script.chmod(0o755)
    pytester.makepyfile(f"""
        import pytest

        @pytest.mark.perf
        @pytest.mark.kvm_selftest({str(script)!r})
        def test_timed():
            pass

        @pytest.mark.kvm_selftest({str(script)!r})
        def test_functional_runs_once():
            pass
    """)
    res = pytester.runpytest("--kvm-repeat", "2", "--kvm-results", "r.jsonl")
    res.assert_outcomes(passed=2)
    recs = records(pytester.path / "r.jsonl")
    assert counter.read_text() == "3", "perf test twice, functional test once"
    assert recs["test_timed"]["samples"]["KVM_CREATE_MAPPINGS"] == [0.1, 0.2]
    assert recs["test_timed"]["metrics"]["KVM_CREATE_MAPPINGS"] == pytest.approx(0.15)
    counter.unlink()
    res = pytester.runpytest("--kvm-repeat", "5", "-k", "timed", "--kvm-results", "r2.jsonl")
    res.assert_outcomes(failed=1)
    assert counter.read_text() == "4", "the failing fourth run ends the repetition"
