"""The lab when things go wrong: two builds on one cache, a lab host that dies mid-run.

The build lock is exercised with real flocks (two opens of one file conflict even in one
process); a dying host with a real execnet socket server that ends its own process, the way a
guest's kernel panic ends the gateway of ``--tx socket=...``.
"""

from __future__ import annotations

import fcntl
import io
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pytest_kvmmm.lab.buildlock import LOCK_NAME, build_lock
from pytest_kvmmm.lab.image import LabError


class TestBuildLock:
    def test_a_second_build_waits_and_says_for_whom(self, tmp_path: Path) -> None:
        with build_lock(tmp_path, None):
            assert (tmp_path / LOCK_NAME).read_text() == f"{os.getpid()}\n"
            said = io.StringIO()
            entered = threading.Event()

            def second() -> None:
                with build_lock(tmp_path, said):
                    entered.set()

            t = threading.Thread(target=second, daemon=True)
            t.start()
            time.sleep(0.5)
            assert not entered.is_set(), "the second build did not wait for the first"
            assert f"waiting for the kvmmm-lab build of pid {os.getpid()}" in said.getvalue()
        t.join(10)
        assert entered.is_set(), "the second build did not go on once the first was done"

    def test_the_lock_is_free_after_its_holder(self, tmp_path: Path) -> None:
        with build_lock(tmp_path, None):
            pass
        fd = os.open(tmp_path / LOCK_NAME, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises if still held
        finally:
            os.close(fd)

    def test_an_error_inside_releases_it(self, tmp_path: Path) -> None:
        with pytest.raises(LabError), build_lock(tmp_path, None):
            raise LabError("make failed")
        with build_lock(tmp_path, io.StringIO()) as _:
            pass

    def test_a_link_is_not_followed(self, tmp_path: Path) -> None:
        target = tmp_path / "victim"
        target.write_text("precious\n")
        (tmp_path / LOCK_NAME).symlink_to(target)
        with pytest.raises(LabError, match="cannot be opened"), build_lock(tmp_path, None):
            pass
        assert target.read_text() == "precious\n"

    def test_a_lock_writable_by_others_is_refused(self, tmp_path: Path) -> None:
        path = tmp_path / LOCK_NAME
        path.write_text("1\n")
        path.chmod(0o666)
        with pytest.raises(LabError, match="writable by others"), build_lock(tmp_path, None):
            pass
        assert path.read_text() == "1\n"

    def test_build_all_holds_it(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        from pytest_kvmmm.lab import build
        from pytest_kvmmm.lab.image import BuildSettings

        held: list[bool] = []

        def inner(s: BuildSettings) -> dict[str, object]:
            fd = os.open(s.paths.root / LOCK_NAME, os.O_RDWR)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held.append(False)
            except BlockingIOError:
                held.append(True)
            finally:
                os.close(fd)
            return {}

        monkeypatch.setattr(build, "_build_all", inner)
        monkeypatch.setattr(build.platform, "machine", lambda: "x86_64")
        build.build_all(BuildSettings(cache_root=tmp_path, hosts=["x86-tdp"], jobs=1, allow_apt=False, is_root=False))
        assert held == [True]


CRASHING_TESTS = """
import os, signal
def test_a(): pass
def test_crash():
    if os.environ.get("KVMMM_TEST_DIE") == "host":  # the server (the "guest") goes with its worker
        os.kill(os.getppid(), signal.SIGKILL)
    if os.environ.get("KVMMM_TEST_DIE"):
        os._exit(3)
def test_z(): pass
"""


@pytest.mark.parametrize("die", ["host", "worker"])
def test_a_lab_host_that_dies_fails_alone(tmp_path: Path, die: str) -> None:
    """The lab's guest server, run here, as a socket gateway beside a popen one: when the host
    dies (server and worker), its test fails with a clear line and the popen host still runs
    all its tests, with no INTERNALERROR; when only the worker dies, xdist replaces it and the
    host's remaining test runs."""
    pytest.importorskip("xdist")
    from pytest_kvmmm.lab import overlay, qemu

    (tmp_path / "test_c.py").write_text(CRASHING_TESTS)
    (tmp_path / "pytest.ini").write_text("[pytest]\ntestpaths = test_c.py\n")
    port = qemu.ephemeral_port()
    env = {**os.environ, "KVMMM_TEST_DIE": die}
    server = subprocess.Popen([sys.executable, str(overlay.GUEST_DIR / "server.py"), str(port)], env=env,
                              stdout=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    try:
        assert server.stdout is not None and "ready" in server.stdout.readline()
        clean = {k: v for k, v in os.environ.items() if k != "KVMMM_TEST_DIE"}
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--dist", "each", "--tx", "popen",
             "--tx", f"socket=127.0.0.1:{port}//chdir={tmp_path}", "-rA"],
            cwd=tmp_path, env=clean, capture_output=True, text=True, timeout=240,
        )  # fmt: skip
    finally:
        try:
            os.killpg(server.pid, 9)
        except ProcessLookupError:
            pass
        server.wait(10)
    out = proc.stdout + proc.stderr
    assert "INTERNALERROR" not in out, out
    assert proc.returncode == 1, out
    assert out.count("PASSED test_c.py::test_z") == (1 if die == "host" else 2), out
    assert "FAILED test_c.py::test_crash" in out, out
    went_down = f"host of gateway gw1 (socket=127.0.0.1:{port}) went down"
    assert (went_down in out) is (die == "host"), out
    if die == "host":
        assert "its remaining tests are not run; the other hosts go on" in out


class TestGatewayProbe:
    def test_socket_address(self) -> None:
        from pytest_kvmmm.coordination.gateways import socket_address

        spec = type("Spec", (), {"socket": "127.0.0.1:47011"})()
        assert socket_address(spec) == ("127.0.0.1", 47011)
        assert socket_address(type("Spec", (), {"socket": None, "popen": True})()) is None
        assert socket_address(type("Spec", (), {"socket": "127.0.0.1:port"})()) is None

    def test_unreachable(self) -> None:
        from pytest_kvmmm.coordination.gateways import unreachable
        from pytest_kvmmm.lab import qemu

        with socket.socket() as listening:
            listening.bind(("127.0.0.1", 0))
            listening.listen(1)
            assert unreachable(listening.getsockname()) is None
        assert unreachable(("127.0.0.1", qemu.ephemeral_port())) == "Connection refused"


class TestHostsThatDoNotComeUp:
    def test_wait_ready_keeps_going_past_a_dead_host(self, tmp_path: Path) -> None:
        from pytest_kvmmm.lab import qemu

        good, bad = tmp_path / "good.log", tmp_path / "bad.log"
        good.write_text("boot\nkvmmm-lab: ready on port 8888\n")
        bad.write_text("[   11.9] ip (49) used greatest stack depth\n")
        dead = subprocess.Popen(["true"])
        dead.wait()
        me = qemu.proc_cmdline(os.getpid()) or []  # this process: alive and "ours"
        states = [qemu.HostState("lab-a", "x86-tdp", 1, os.getpid(), me, str(good), 0.0),
                  qemu.HostState("lab-b", "x86-idle", 2, dead.pid, ["x"], str(bad), 0.0)]  # fmt: skip
        failed = qemu.wait_ready(states, timeout=1.0, poll=0.05, keep_going=True)
        assert list(failed) == ["lab-b"] and "QEMU ended during boot" in failed["lab-b"]
        assert "ip (49)" in failed["lab-b"]
        with pytest.raises(LabError, match="lab-b: QEMU ended during boot"):
            qemu.wait_ready(states, timeout=1.0, poll=0.05)

    def test_wait_ready_times_out_per_host(self, tmp_path: Path) -> None:
        from pytest_kvmmm.lab import qemu

        slow = tmp_path / "slow.log"
        slow.write_text("Run /init as init process\n")
        me = qemu.proc_cmdline(os.getpid()) or []
        state = qemu.HostState("lab-slow", "x86-idle", 1, os.getpid(), me, str(slow), 0.0)
        failed = qemu.wait_ready([state], timeout=0.2, poll=0.05, keep_going=True)
        assert "lab-slow: not ready after 0.2 s; console ends with: Run /init as init process" == failed["lab-slow"]

    def test_the_ci_stage_fails_when_a_built_host_does_not_boot(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
    ) -> None:
        """Built but not booted is a failure, not SKIPPED (it was: exit 0 with no host run)."""
        from test_lab import load_ci_stage

        ci = load_ci_stage()

        def one_lost(args: object, batch: list[str], lost: list[str]) -> list[object]:
            lost.append(f"lab-{batch[0]}: not ready after 300 s; console ends with: ip (49)")
            raise LabError(lost[0])

        monkeypatch.setattr(ci.cli, "cmd_build", lambda args: 0)
        monkeypatch.setattr(ci.boot, "up", one_lost)
        assert ci.main(["--results", str(tmp_path), "--hosts", "x86-idle"]) == 1
        err = capsys.readouterr().err
        assert "FAILED: did not come up: lab-x86-idle: not ready after 300 s" in err
        assert "SKIPPED" not in err

    def test_kvmmm_lab_run_goes_on_without_a_lost_host_and_fails(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        from pytest_kvmmm.lab import cli, qemu, run

        up_host = qemu.HostState("lab-x86-tdp", "x86-tdp", 47011, 1, ["q"], "/c.log", 0.0)

        def up(args: object, batch: list[str], lost: list[str]) -> list[qemu.HostState]:
            lost.append("lab-x86-idle: not ready after 300 s")
            return [up_host]

        ran: list[list[str]] = []
        monkeypatch.setattr(run, "up", up)
        monkeypatch.setattr(run, "down", lambda rdir: None)
        monkeypatch.setattr(run, "run_pytest", lambda argv, cwd: ran.append(list(argv)) or 0)
        args = cli.parser().parse_args(["run", "--hosts", "x86-tdp,x86-idle", "--results", str(tmp_path / "r"),
                                        "--run-dir", str(tmp_path / "run")])  # fmt: skip
        status, _, states = run.run_lab(args)
        assert status == 1 and states == [up_host]
        assert len(ran) == 1 and "socket=127.0.0.1:47011" in ran[0]


class TestPathArguments:
    """`kvmmm-lab run -- tests/ ...`: xdist stopped such a run with an INTERNALERROR (`arg tests/
    not relative to an rsync root`); each path now reaches every host as an @file argument."""

    def test_paths_become_argfiles_in_place(self, tmp_path: Path) -> None:
        from pytest_kvmmm.lab.pathargs import via_argfiles

        root, share = tmp_path / "proj", tmp_path / "share"
        (root / "tests").mkdir(parents=True)
        (root / "tests" / "test_x.py").write_text("")
        share.mkdir()
        args = ["--pyargs", "pytest_kvmmm.suite", "tests/", "-k", "pre_fault", "tests/test_x.py::test_a", "nosuch/"]
        out = via_argfiles(args, root, share, "lab-1", "9.2.0")
        assert out[:2] == ["--pyargs", "pytest_kvmmm.suite"] and out[3:5] == ["-k", "pre_fault"] and out[6] == "nosuch/"
        assert out[2] == f"@{share / 'lab-1.arg2'}" and out[5] == f"@{share / 'lab-1.arg5'}"
        assert (share / "lab-1.arg2").read_text() == "tests/\n"
        assert (share / "lab-1.arg5").read_text() == "tests/test_x.py::test_a\n"
        assert via_argfiles(args, root, share, "lab-1", "9.2.0") == out  # a second run replaces them
        assert via_argfiles(["-k", "x"], root, None, "lab-1", "7.4.0") == ["-k", "x"]

    def test_a_link_in_the_way_is_not_written_through(self, tmp_path: Path) -> None:
        from pytest_kvmmm.lab.pathargs import via_argfiles

        (tmp_path / "tests").mkdir()
        victim = tmp_path / "victim"
        victim.write_text("keep\n")
        (tmp_path / "lab-1.arg0").symlink_to(victim)
        out = via_argfiles(["tests"], tmp_path, tmp_path, "lab-1", "8.2.0")
        assert victim.read_text() == "keep\n" and (tmp_path / "lab-1.arg0").read_text() == "tests\n"
        assert out == [f"@{tmp_path / 'lab-1.arg0'}"]

    @pytest.mark.parametrize(
        "share, version, says",
        [(None, "9.2.0", "need a results directory the hosts share"), ("s", "8.1.2", "need pytest 8.2 or later")],
    )
    def test_when_it_cannot_be_done_it_says_why(self, tmp_path: Path, share: str | None, version: str, says: str) -> None:
        from pytest_kvmmm.lab.pathargs import via_argfiles

        (tmp_path / "tests").mkdir()
        with pytest.raises(ValueError, match=says):
            via_argfiles(["tests/"], tmp_path, tmp_path if share else None, "lab-1", version)

    def test_pytest_reads_the_argfile_where_xdist_saw_no_path(self, tmp_path: Path) -> None:
        """The real thing, without a lab host: a socket gateway (the guest's server, run here,
        started in the project) gets `@FILE` and runs the test the file names."""
        if tuple(int(p) for p in pytest.__version__.split(".")[:2]) < (8, 2):
            pytest.skip(f"pytest {pytest.__version__} reads no @FILE arguments (8.2 and later do; kvmmm-lab says so)")
        from pytest_kvmmm.lab import overlay, qemu
        from pytest_kvmmm.lab.pathargs import via_argfiles

        proj, share = tmp_path / "proj", tmp_path / "share"
        (proj / "tests").mkdir(parents=True)
        (proj / "tests" / "test_mine.py").write_text("def test_mine():\n    pass\n")
        (proj / "pytest.ini").write_text("[pytest]\n")
        share.mkdir()
        port = qemu.ephemeral_port()
        server = subprocess.Popen([sys.executable, str(overlay.GUEST_DIR / "server.py"), str(port)], cwd=proj,
                                  stdout=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
        try:
            assert server.stdout is not None and "ready" in server.stdout.readline()
            args = via_argfiles(["tests/"], proj, share, "lab-1", "9.2.0")
            proc = subprocess.run(
                [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--dist", "each", "--tx", "popen",
                 "--tx", f"socket=127.0.0.1:{port}//chdir={proj}", "-rA", *args],
                cwd=proj, capture_output=True, text=True, timeout=240,
            )  # fmt: skip
        finally:
            os.killpg(server.pid, 9)
            server.wait(10)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0 and "INTERNALERROR" not in out, out
        assert out.count("PASSED tests/test_mine.py::test_mine") == 2, out


def test_every_catalogue_entry_must_pass_on_a_lab_host() -> None:
    """The CI lab stage fails on a plugin regression of any entry: each of the catalogue's
    entries is expected to pass on at least one lab host kind (the README's table)."""
    from test_lab import load_ci_stage

    from pytest_kvmmm.lab.hosts import HOST_KINDS
    from pytest_kvmmm.suite.catalogue import CATALOGUE

    ci = load_ci_stage()
    names = {k.hostname for k in HOST_KINDS.values()}
    assert {e.name for e in CATALOGUE} == set(ci.MUST_PASS)
    assert all(hosts and set(hosts) <= names for hosts in ci.MUST_PASS.values())
    assert "lab-x86-idle" in ci.MUST_PASS["access_tracking_perf_test"]


def test_kvmmm_lab_run_refuses_a_results_file_of_the_users_own(tmp_path: Path) -> None:
    """Its batches write lab-N.jsonl into --results, where the entry x host table reads them; a
    --kvm-results of the user's left the table empty (and would hold the last batch only)."""
    from pytest_kvmmm.lab import cli, run

    args = cli.parser().parse_args(["run", "--hosts", "x86-tdp", "--results", str(tmp_path / "r"),
                                    "--run-dir", str(tmp_path / "run"), "--", "--kvm-results=mine.jsonl"])  # fmt: skip
    with pytest.raises(LabError, match="--kvm-results: kvmmm-lab writes every batch's results into --results"):
        run.run_lab(args)
    assert not (tmp_path / "run").exists()  # refused before any host was booted
