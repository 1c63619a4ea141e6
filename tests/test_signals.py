"""SIGTERM and SIGHUP (a CI timeout, a closed terminal) end a run as Ctrl-C does (issue 13, section 2):
the selftest is killed, host changes are restored, finished results are kept, exit code 2."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from fakes import make_fake, make_host_root, process_gone, records, wait_for
from pytest_kvmmm.coordination.rundir import run_dir

SUITE = """
    import pytest

    @pytest.mark.kvm_requires(hugetlb={"2M": 32}, thp=True)
    @pytest.mark.kvm_selftest("quick")
    def test_1_needs_a_pool():
        pass

    @pytest.mark.kvm_selftest("hangs")
    def test_2_hangs():
        pass

    @pytest.mark.kvm_selftest("quick")
    def test_3_never_runs():
        pass
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_signal_restores_the_host_and_keeps_finished_results(
    pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sig: signal.Signals
) -> None:
    monkeypatch.setenv("KVMMM_CACHE_DIR", str(tmp_path / "cache"))
    root = make_host_root(tmp_path / "root", pools={2048: {"nr": 5, "free": 0}}, thp_enabled="never")
    nr = root / "sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"
    thp = root / "sys/kernel/mm/transparent_hugepage/enabled"
    bins = tmp_path / "b"
    make_fake(bins, "hangs", hang=True, argv_file=bins / "started", child_pidfile=bins / "child.pid")
    make_fake(bins, "quick")
    pytester.makepyfile(SUITE)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", f"--kvm-host-snapshot={root}", f"--kvm-selftests={bins}",
         "--kvm-allow-host-changes", "--kvm-results", "r.jsonl", "-p", "no:cacheprovider", "-o", "faulthandler_timeout=30"],
        cwd=pytester.path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    wait_for(bins / "child.pid")
    assert nr.read_text().strip() == "37" and thp.read_text().strip() == "madvise", "the run grew the pool"
    proc.send_signal(sig)
    try:
        out, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"pytest did not stop within 30 s of {sig.name}; its output:\n{out}")
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, out
    assert nr.read_text().strip() == "5" and thp.read_text().strip() == "never", out
    assert f"{sig.name}: the run was interrupted" in out and "INTERNALERROR" not in out
    assert "kvmmm: restored /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages: 37 -> 5" in out
    child = int((bins / "child.pid").read_text())
    deadline = time.monotonic() + 3
    while not process_gone(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process_gone(child), "the interrupted selftest's process group is killed"
    recs = records(pytester.path / "r.jsonl")
    # the fake pool's free count does not grow with nr_hugepages, so the finished test is a skip
    assert recs["test_1_needs_a_pool"]["status"] == "skipped" and "test_3_never_runs" not in recs, "finished results kept"
    assert not list((tmp_path / "cache").rglob("*.json")), "nothing left for the next session to replay"


def test_an_ignored_sighup_stays_ignored(pytester: pytest.Pytester, tmp_path: Path) -> None:
    """nohup: a SIGHUP the user chose to ignore does not end the run."""
    bins = tmp_path / "b"
    make_fake(bins, "slow", sleep=1.5, argv_file=bins / "started")
    pytester.makepyfile("""
        import pytest

        @pytest.mark.kvm_selftest("slow")
        def test_slow():
            pass
    """)
    proc = subprocess.Popen(
        [sys.executable, "-c", "import signal, sys, pytest; signal.signal(signal.SIGHUP, signal.SIG_IGN); "
         "sys.exit(pytest.main(sys.argv[1:]))", f"--kvm-selftests={bins}", "-p", "no:cacheprovider"],
        cwd=pytester.path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    wait_for(bins / "started")
    os.kill(proc.pid, signal.SIGHUP)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out


DIES = """
    @pytest.mark.kvm_param_values("eager_page_split", ["N"])
    @pytest.mark.kvm_selftest("quick")
    def test_{order}_dies_holding_a_change():
        assert pathlib.Path({split!r}).read_text().strip() == "N"
        os.kill(os.getpid(), signal.SIGKILL)  # the worker dies; its change is journalled
"""
LIVES = """
    @pytest.mark.kvm_param_values("nx_huge_pages", ["Y"])
    @pytest.mark.kvm_selftest("quick")
    def test_{order}_restores_its_own():
        assert pathlib.Path({nx!r}).read_text().strip() == "Y"
"""


@pytest.mark.parametrize("dies_last", [False, True], ids=["replacement-worker-restores", "controller-restores"])
def test_a_dead_workers_changes_are_restored_and_listed(
    pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dies_last: bool
) -> None:
    monkeypatch.setenv("KVMMM_CACHE_DIR", str(tmp_path / "cache"))
    root = make_host_root(tmp_path / "root", kvm_modules={"kvm": {"eager_page_split": "Y", "nx_huge_pages": "N"}})
    split = root / "sys/module/kvm/parameters/eager_page_split"
    nx = root / "sys/module/kvm/parameters/nx_huge_pages"
    bins = tmp_path / "b"
    make_fake(bins, "quick")
    tests = [DIES.format(order=2 if dies_last else 1, split=str(split)), LIVES.format(order=1 if dies_last else 2, nx=str(nx))]
    tests = tests[::-1] if dies_last else tests
    pytester.makepyfile("import os, pathlib, signal\nimport pytest\n" + "".join(textwrap.dedent(t) for t in tests))
    no_replacement = ["--max-worker-restart", "0"] if dies_last else []
    uid = uuid.uuid4().hex
    res = pytester.runpytest_subprocess("-n", "1", "--testrunuid", uid, *no_replacement, f"--kvm-host-snapshot={root}", f"--kvm-selftests={bins}",
                                        "-p", "no:cacheprovider")
    out = res.stdout.str()
    res.assert_outcomes(passed=1, failed=1)
    assert split.read_text().strip() == "Y" and nx.read_text().strip() == "N", out
    # the crashed worker is replaced, and the new worker restores first; without replacement
    # the controller restores at the end of the run (the dead worker is a zombie by then)
    lines = [ln for ln in out.splitlines() if ln.startswith("kvmmm: restored /sys/module/kvm/parameters/eager_page_split: N -> Y")]
    assert len(lines) == 1 and "[left by killed process " in lines[0], out
    assert lines[0].endswith("] [by worker gw1]") is not dies_last, out
    assert not list((tmp_path / "cache").rglob("*.json")) and "INTERNALERROR" not in out
    assert not run_dir(uid, str(root)).exists(), "the run directory is removed"


def test_sigterm_to_the_xdist_controller_restores_the_workers_changes(
    pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CI timeout signals the controller only: the run still ends as interrupted, the worker's
    module parameter is set back and its selftest does not live on."""
    monkeypatch.setenv("KVMMM_CACHE_DIR", str(tmp_path / "cache"))
    root = make_host_root(tmp_path / "root", kvm_modules={"kvm": {"eager_page_split": "Y"}})
    split = root / "sys/module/kvm/parameters/eager_page_split"
    bins = tmp_path / "b"
    make_fake(bins, "hangs", hang=True, argv_file=bins / "started", child_pidfile=bins / "child.pid")
    pytester.makepyfile("""
        import pytest

        @pytest.mark.kvm_param_values("eager_page_split", ["N"])
        @pytest.mark.kvm_selftest("hangs")
        def test_changes_then_hangs():
            pass
    """)
    uid = uuid.uuid4().hex
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-n", "2", "--testrunuid", uid, f"--kvm-host-snapshot={root}", f"--kvm-selftests={bins}",
         "-p", "no:cacheprovider"],
        cwd=pytester.path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    wait_for(bins / "child.pid")
    assert split.read_text().strip() == "N"
    proc.send_signal(signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"the controller did not stop within 60 s of SIGTERM; its output:\n{out}")
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, out
    assert split.read_text().strip() == "Y", out
    child = int((bins / "child.pid").read_text())
    deadline = time.monotonic() + 5
    while not process_gone(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process_gone(child), "the worker's selftest does not outlive the run"
    assert not list((tmp_path / "cache").rglob("*.json")), "nothing left for the next session to replay"
    assert not run_dir(uid, str(root)).exists(), "the run directory is removed, interrupted or not"
