"""Nothing a selftest starts outlives it: setsid children and double-forked daemons are found,
killed and reported, through a cgroup or as child subreaper, also under pytest-timeout."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fakes import make_fake, process_gone
from pytest_kvmmm.coordination.liveness import ProcStat
from pytest_kvmmm.engine import process as runner
from pytest_kvmmm.engine import proctree


def _gone_soon(pid: int, within: float = 3.0) -> bool:
    deadline = time.monotonic() + within
    while not process_gone(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return process_gone(pid)


@pytest.fixture(params=["cgroup", "subreaper"])
def tracking(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Both ways of following a selftest's processes (the cgroup one where this host allows it)."""
    if request.param == "cgroup":
        parent = proctree.own_cgroup()
        if parent is None:
            pytest.skip("no writable cgroup v2 here: only the subreaper applies")
        monkeypatch.setattr(runner, "_cgroup_parent", parent)
    else:
        monkeypatch.setattr(runner, "_cgroup_parent", None)
    yield request.param


def test_a_double_forked_daemon_is_killed_and_reported(tmp_path: Path, tracking: str) -> None:
    pidfile = tmp_path / "daemon.pid"
    res = runner.run([str(make_fake(tmp_path, "t", stdout="ok\n", daemon_pidfile=pidfile))], timeout=20)
    daemon = int(pidfile.read_text())
    assert res.returncode == 0 and not res.timed_out
    assert res.left_behind == (f"{daemon} sleep 600",)
    assert daemon in res.pids, "the tree's pids are remembered for the kernel-log check"
    assert _gone_soon(daemon), f"the daemon outlived its selftest ({tracking})"
    if tracking == "cgroup":
        assert not list(proctree.own_cgroup().glob(f"{proctree.CGROUP_PREFIX}{__import__('os').getpid()}-*"))  # type: ignore[union-attr]


def test_a_timeout_kills_what_escaped_the_group_and_reports_only_that(tmp_path: Path, tracking: str) -> None:
    pidfile, child = tmp_path / "daemon.pid", tmp_path / "child.pid"
    fake = make_fake(tmp_path, "t", hang=True, daemon_pidfile=pidfile, child_pidfile=child)
    res = runner.run([str(fake)], timeout=1.5)
    daemon = int(pidfile.read_text())
    assert res.timed_out
    assert res.left_behind == (f"{daemon} sleep 600",), "the group's own child was killed with the group"
    assert _gone_soon(daemon) and _gone_soon(int(child.read_text()))


def test_a_clean_selftest_leaves_nothing_and_names_its_threads(tmp_path: Path, tracking: str) -> None:
    script = tmp_path / "threads"
    script.write_text(f"#!{sys.executable}\nimport threading, time\n"
                      "ts = [threading.Thread(target=time.sleep, args=(0.5,)) for _ in range(3)]\n"
                      "[t.start() for t in ts]; [t.join() for t in ts]\n")
    script.chmod(0o755)
    res = runner.run([str(script)], timeout=20)
    assert res.returncode == 0 and res.left_behind == ()
    assert len(res.pids) >= 4, f"the leader and its three threads: {sorted(res.pids)}"


def test_a_selftest_that_leaves_a_daemon_fails_the_test(pytester: pytest.Pytester, tmp_path: Path) -> None:
    make_fake(tmp_path / "b", "leaves", stdout="ok\n", daemon_pidfile=tmp_path / "d.pid")
    pytester.makepyfile("""
        import pytest

        @pytest.mark.kvm_selftest("leaves")
        def test_leaves():
            pass
    """)
    res = pytester.runpytest(f"--kvm-selftests={tmp_path / 'b'}", "-p", "no:cacheprovider")
    res.assert_outcomes(failed=1)
    daemon = int((tmp_path / "d.pid").read_text())
    res.stdout.fnmatch_lines([f"*leaves left 1 processes behind: {daemon} sleep 600*"])
    assert _gone_soon(daemon)


def test_pytest_timeout_thread_method_orphans_nothing(pytester: pytest.Pytester, tmp_path: Path) -> None:
    pytest.importorskip("pytest_timeout")
    pidfile = tmp_path / "d.pid"
    make_fake(tmp_path / "b", "hangs", hang=True, daemon_pidfile=pidfile, child_pidfile=tmp_path / "c.pid")
    pytester.makepyfile("""
        import pytest

        @pytest.mark.kvm_selftest("hangs")
        def test_hangs():
            pass
    """)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", f"--kvm-selftests={tmp_path / 'b'}", "-p", "no:cacheprovider",
         "--timeout=3", "--timeout-method=thread"],
        cwd=pytester.path, capture_output=True, text=True, timeout=60,
    )
    assert "Timeout" in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    assert proc.returncode == 1
    assert _gone_soon(int(pidfile.read_text())), "the daemon outlived pytest-timeout's os._exit"
    assert _gone_soon(int((tmp_path / "c.pid").read_text()))


def test_proc_stat_reads_names_with_parentheses_and_spaces(tmp_path: Path) -> None:
    stat = tmp_path / "42" / "stat"
    stat.parent.mkdir()
    stat.write_text("42 (a) b (c) Z 1 42 42 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 12345 0 0\n")
    st = proctree.proc_stat(42, tmp_path)
    assert st == ProcStat("Z", 1, 42, 12345)
    assert not proctree.alive(42, proc=tmp_path), "a zombie is not alive"
    assert proctree.proc_stat(43, tmp_path) is None
