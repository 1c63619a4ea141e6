"""``-m kvm``: every KVM selftest of the static lists, the same collection on every host, skips at run time."""

from __future__ import annotations

import re
import signal
import sys
from pathlib import Path

import pytest
from test_integration import CACHE_ROOT, _real_build

from fakes import make_fake, make_host_root
from pytest_kvmmm.coordination.safefs import private_dir
from pytest_kvmmm.provision.cache import CACHE_ENV, default_cache_root
from pytest_kvmmm.pytest.all_kvm import asked_for
from pytest_kvmmm.reports.results import read_results
from pytest_kvmmm.suite.all_kvm import ARCHES, EXTENDED, SELFTESTS, all_names

KVM = ["--pyargs", "pytest_kvmmm.suite", "-m", "kvm", "-p", "no:cacheprovider"]


def _ids(res: pytest.RunResult) -> list[str]:
    return [line for line in res.stdout.lines if "::test_kvm[" in line]


def test_collection_is_the_same_on_every_arch(pytester: pytest.Pytester, tmp_path: Path) -> None:
    x86 = make_host_root(tmp_path / "x86", machine="x86_64")
    arm = make_host_root(tmp_path / "arm", machine="aarch64", kvm="arm64_ttrem2", kvm_modules={})
    on_x86 = _ids(pytester.runpytest(*KVM, f"--kvm-host-snapshot={x86}", "--co", "-q"))
    on_arm = _ids(pytester.runpytest(*KVM, f"--kvm-host-snapshot={arm}", "--co", "-q"))
    assert on_x86 == on_arm and len(on_x86) == len(all_names("6.12")) == 110


def test_each_selftest_runs_with_its_default_arguments_or_skips_with_why(pytester: pytest.Pytester, tmp_path: Path) -> None:
    bins = tmp_path / "bins"
    make_fake(bins, "coalesced_io_test", stdout="ok\n", argv_file=tmp_path / "argv")
    make_fake(bins / "x86_64", "set_sregs_test", stdout="1..0 # SKIP - CPUID.foo is not supported\n", exit=4)
    root = make_host_root(tmp_path / "root", machine="x86_64")
    res = pytester.runpytest(*KVM, f"--kvm-host-snapshot={root}", f"--kvm-selftests={bins}", "--kvm-results", "r.jsonl",
                             "-rs", "-k", "coalesced_io_test or set_sregs_test or vgic_init or rseq_test")
    res.assert_outcomes(passed=1, skipped=2, failed=1)
    assert (tmp_path / "argv").read_text() == ""  # no arguments: the binary's defaults
    res.stdout.fnmatch_lines(["*CPUID.foo is not supported*"])
    res.stdout.fnmatch_lines(["*needs a aarch64 host, this one is x86_64*"])  # aarch64/vgic_init
    # in the lists, not in the build this run named: that build is broken, unless --kvm-allow-missing
    res.stdout.fnmatch_lines(["*rseq_test not found in*lacks the program (--kvm-allow-missing skips instead)*"])
    status = {r["binary"]: r["status"] for r in read_results(pytester.path / "r.jsonl")}
    assert status == {"coalesced_io_test": "passed", "set_sregs_test": "skipped", "vgic_init": "skipped", "rseq_test": "error"}


def test_a_crash_and_a_binary_that_cannot_start_stay_distinct(pytester: pytest.Pytester, tmp_path: Path) -> None:
    """Peers (the upstream runner's SEGFAULT, kselftest's exit codes) tell these apart: so do the records."""
    bins = tmp_path / "bins"
    make_fake(bins, "rseq_test", signal=signal.SIGSEGV)
    (bins / "steal_time").write_bytes(b"\x7fELF\x02\x01\x01" + b"\x00" * 64)  # ENOEXEC: it cannot be started
    (bins / "steal_time").chmod(0o755)
    root = make_host_root(tmp_path / "root", machine="x86_64")
    res = pytester.runpytest(*KVM, f"--kvm-host-snapshot={root}", f"--kvm-selftests={bins}", "--kvm-results=r.jsonl",
                             "-k", "rseq_test or steal_time")
    res.assert_outcomes(failed=2)
    res.stdout.fnmatch_lines(["*rseq_test crashed: killed by SIGSEGV (signal 11)*"])
    status = {r["binary"]: r["status"] for r in read_results(pytester.path / "r.jsonl")}
    assert status == {"rseq_test": "crashed", "steal_time": "error"}


def _makefile_lists(makefile: Path) -> dict[str, set[str]]:
    text = makefile.read_text().replace("\\\n", " ")
    lists: dict[str, set[str]] = {}
    for m in re.finditer(r"^TEST_GEN_PROGS_(\w+)\s*\+?=\s*(.*)$", text, re.M):
        lists.setdefault(m.group(1), set()).update(m.group(2).split())
    return lists


def test_the_static_lists_are_the_kernels_makefile() -> None:
    """Against the 6.12 source kvmmm-build fetched (ci/setup.sh): TEST_GEN_PROGS_<arch>, read off the Makefile."""
    sources = sorted((default_cache_root() / "src").glob("6.12.*/tools/testing/selftests/kvm/Makefile"))
    if not sources:
        pytest.skip(f"no 6.12 kernel source under {default_cache_root() / 'src'} (ci/setup.sh fetches it)")
    lists = _makefile_lists(sources[-1])
    assert {arch: set(names) for arch, names in SELFTESTS["6.12"].items()} == {a: lists[a] for a in ARCHES}
    assert set(EXTENDED["6.12"]["x86_64"]) == lists["EXTENDED_x86_64"]
    assert {a: len(n) for a, n in SELFTESTS["6.12"].items()} == {"x86_64": 84, "aarch64": 30, "s390x": 16, "riscv": 13}


def test_a_few_real_selftests_run_with_their_defaults(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """``-m kvm -k`` against this host's build: a program that exists passes or skips with its reason;
    another architecture's skips before it would run."""
    root = _real_build()
    monkeypatch.setenv(CACHE_ENV, str(CACHE_ROOT))
    res = pytester.runpytest_subprocess(*KVM, "--kvm-results=r.jsonl", "-rA", "-k",
                                        "kvm_binary_stats_test or coalesced_io_test or aarch64/vgic_init or guest_print_test")
    status = {str(r["binary"]): r for r in read_results(pytester.path / "r.jsonl")}
    assert set(status) == {"kvm_binary_stats_test", "coalesced_io_test", "vgic_init", "guest_print_test"}, res.stdout.str()
    assert status["vgic_init"]["status"] == "skipped" and "needs a aarch64 host" in str(status["vgic_init"]["reason"])
    for name in ("kvm_binary_stats_test", "coalesced_io_test", "guest_print_test"):
        assert status[name]["status"] == "passed", (name, status[name]["reason"])
        assert str(status[name]["argv"][0]).startswith(str(root)) and len(status[name]["argv"]) == 1  # type: ignore[index]


def test_they_run_only_when_the_marker_expression_names_kvm(pytester: pytest.Pytester, tmp_path: Path) -> None:
    """Selections by -k alone (the lab's, kvmmm-ab's) and plain runs keep to the MM suite."""
    root = make_host_root(tmp_path / "root")
    base = ["--pyargs", "pytest_kvmmm.suite", "-p", "no:cacheprovider", f"--kvm-host-snapshot={root}", "--co", "-q"]
    assert not _ids(pytester.runpytest(*base))
    assert not _ids(pytester.runpytest(*base, "-k", "not test_dirty_log"))
    assert len(_ids(pytester.runpytest(*base, "-m", "kvm or pagetable"))) == 110
    assert asked_for("kvm and not perf") and not asked_for("kvm_selftest") and not asked_for("pagetable")


def test_a_catalogue_binarys_own_kernel_lines_are_expected(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """set_memory_region_test provokes KVM's internal error on purpose (PVM logs it): the
    catalogue says so, and -m kvm runs it with that knowledge; another program's line fails it."""
    kmsg, ledger = tmp_path / "kmsg", tmp_path / "ledger"
    kmsg.write_text("")
    private_dir(ledger)
    monkeypatch.setenv("KVMMM_KMSG", str(kmsg))
    monkeypatch.setenv("KVMMM_LEDGER_DIR", str(ledger))
    line = "kvm-pvm: INTERNAL_ERROR in batch emul: rip=0xfff0 cpl=0 cr3=0x0"
    bins = tmp_path / "bins"
    for name in ("set_memory_region_test", "guest_print_test"):
        bins.mkdir(exist_ok=True)
        (bins / name).write_text(f"#!{sys.executable}\nwith open({str(kmsg)!r}, 'a') as f:\n    f.write('4,1,0,-;{line}\\n')\n")
        (bins / name).chmod(0o755)
    res = pytester.runpytest_subprocess(*KVM, f"--kvm-selftests={bins}", "-rA",
                                        "-k", "set_memory_region_test or guest_print_test")
    out = res.stdout.str()
    if "KVM" in out and "passed" not in out.splitlines()[-1] and "failed" not in out.splitlines()[-1]:
        pytest.skip("no usable KVM here: the tests skip before running")
    res.assert_outcomes(passed=1, failed=1)
    res.stdout.fnmatch_lines([f"*kernel (expected from set_memory_region_test): {line}*"])
    res.stdout.fnmatch_lines(["*guest_print_test passed, but the kernel logged KVM internal error during the run*"])
