"""runner.run: process groups, timeouts, bounded output, start errors."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from fakes import make_fake, process_gone
from pytest_kvmmm.engine import process as runner


def test_exit_code_and_streams(tmp_path: Path) -> None:
    fake = make_fake(tmp_path, "t", stdout="out\n", stderr="err\n", exit=254)
    res = runner.run([str(fake), "-b", "64M"], timeout=10)
    assert res.returncode == 254
    assert res.stdout == "out\n" and res.stderr == "err\n"
    assert res.argv == (str(fake), "-b", "64M")
    assert not res.timed_out and res.signal is None


def test_signal_is_negative_returncode(tmp_path: Path) -> None:
    res = runner.run([str(make_fake(tmp_path, "t", signal=signal.SIGSEGV))], timeout=10)
    assert res.returncode == -signal.SIGSEGV
    assert res.signal is signal.SIGSEGV


def test_timeout_kills_the_whole_group_and_keeps_partial_output(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    fake = make_fake(tmp_path, "t", stdout="started\n", hang=True, child_pidfile=pidfile)
    t0 = time.monotonic()
    res = runner.run([str(fake)], timeout=2)
    elapsed = time.monotonic() - t0
    assert res.timed_out
    assert res.stdout == "started\n"
    assert elapsed < 2 + 2, f"took {elapsed:.1f}s: the group kill must land within timeout + 2s"
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 2
    while not process_gone(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process_gone(child), "the selftest's child outlived the timeout"


def test_child_of_a_passing_binary_does_not_outlive_it(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    res = runner.run([str(make_fake(tmp_path, "t", child_pidfile=pidfile))], timeout=10)
    assert res.returncode == 0 and not res.timed_out
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 2
    while not process_gone(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process_gone(child)


def test_garbage_bytes_are_decoded_not_raised(tmp_path: Path) -> None:
    fake = make_fake(tmp_path, "t", raw_stdout=b"\xff\xfe\x00garbage\x80\n")
    res = runner.run([str(fake)], timeout=10)
    assert res.returncode == 0
    assert "garbage" in res.stdout and "\ufffd" in res.stdout


def test_huge_output_keeps_head_and_tail(tmp_path: Path) -> None:
    fake = make_fake(tmp_path, "t", stdout="HEAD\n" + "x" * 300_000 + "\nTAIL\n")
    res = runner.run([str(fake)], timeout=10, output_limit=64 * 1024)
    assert res.truncated
    assert res.stdout.startswith("HEAD") and res.stdout.rstrip().endswith("TAIL")
    assert "dropped" in res.stdout and len(res.stdout) < 70 * 1024


def test_missing_and_non_executable_binaries_are_start_errors(tmp_path: Path) -> None:
    res = runner.run([str(tmp_path / "nope")], timeout=5)
    assert res.returncode is None and res.start_error and "No such file" in res.start_error
    plain = tmp_path / "plain"
    plain.write_text("not a program")
    plain.chmod(0o644)
    res = runner.run([str(plain)], timeout=5)
    assert res.start_error and "Permission denied" in res.start_error


def test_exec_format_error_is_explained(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus"
    bogus.write_bytes(b"\x7fELF\x02\x01\x01" + b"\x00" * 64)
    bogus.chmod(0o755)
    res = runner.run([str(bogus)], timeout=5)
    assert res.start_error is not None
    assert "not an executable this machine can run (wrong architecture or a broken file)" in res.start_error


def test_closed_stdio_does_not_end_the_wait_early(tmp_path: Path) -> None:
    script = tmp_path / "closer"
    script.write_text(
        f"#!{os.sys.executable}\nimport os, time\nos.close(1); os.close(2)\ntime.sleep(0.3)\nraise SystemExit(3)\n"
    )
    script.chmod(0o755)
    res = runner.run([str(script)], timeout=10)
    assert res.returncode == 3 and not res.timed_out


def test_the_selftest_gets_a_clean_signal_mask(tmp_path: Path) -> None:
    before = signal.pthread_sigmask(signal.SIG_BLOCK, set())
    res = runner.run(["grep", "SigBlk", "/proc/self/status"], timeout=10)
    assert res.returncode == 0 and res.stdout.split() == ["SigBlk:", "0000000000000000"]
    assert signal.pthread_sigmask(signal.SIG_BLOCK, set()) == before


def test_ctrl_c_while_the_selftest_starts_kills_it(monkeypatch: pytest.MonkeyPatch) -> None:
    # The process has another thread, as pytest processes do (pytest-rerunfailures' server
    # thread, execnet's in an xdist worker): the kernel gives the Ctrl-C to it, as the main
    # thread blocks it, and Python raises it on the main thread at its next bytecode, here
    # inside Popen (the sleep), unless run() holds it back there too (it left the selftest
    # running in 8 starts of 20, and failed this test under load).
    started: list[subprocess.Popen[bytes]] = []
    real_popen = subprocess.Popen
    stop = threading.Event()
    other = threading.Thread(target=stop.wait, daemon=True)

    def popen_then_ctrl_c(*args: Any, **kw: Any) -> subprocess.Popen[bytes]:
        proc = real_popen(*args, **kw)
        started.append(proc)
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C before run() holds the process
        time.sleep(0.2)
        return proc

    other.start()
    monkeypatch.setattr(runner.subprocess, "Popen", popen_then_ctrl_c)
    try:
        with pytest.raises(KeyboardInterrupt):
            runner.run(["sleep", "600"], timeout=30)
        assert started and started[0].returncode is not None, "the started selftest must be killed and reaped"
        assert started[0].returncode == -signal.SIGKILL
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler, "Ctrl-C's handler is given back"
    finally:
        stop.set()
        for proc in started:
            if proc.returncode is None:
                proc.kill()
                proc.wait()


def test_held_signals_come_at_release_to_their_own_handler() -> None:
    from pytest_kvmmm.engine.held_signals import HeldSignals

    got: list[int] = []

    def handler(signum: int, frame: object) -> None:
        got.append(signum)

    old = signal.signal(signal.SIGTERM, handler)
    try:
        held = HeldSignals().hold()
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        assert got == [], "held while the child starts"
        held.release()
        assert got == [signal.SIGTERM], "delivered once at release, to the handler that was there"
        assert signal.getsignal(signal.SIGTERM) is handler
        held.release()
        assert got == [signal.SIGTERM], "release is idempotent"
    finally:
        signal.signal(signal.SIGTERM, old)
