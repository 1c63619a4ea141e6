"""kernel_blame: a kernel complaint fails only the test whose selftest caused it.

Unit tests on the dump seen on this host (dirty_log_test's dirty-ring WARN), then whole
sessions against a fake kernel log (``KVMMM_KMSG``) and a private host-wide ledger
(``KVMMM_LEDGER_DIR``), where another session is a real process holding its place.
"""

from __future__ import annotations

import multiprocessing
import re
import sys
import time
from pathlib import Path

import pytest

from pytest_kvmmm.coordination.hostwide import HostLedger, private_dir
from pytest_kvmmm.engine.kernel_blame import blame, named, owner
from pytest_kvmmm.engine.kernel_health import KernelLine, classify_lines, split_records

PVM_LINE = "kvm-pvm: INTERNAL_ERROR in batch emul: rip=0xfff0 cpl=0 cr3=0x0"
#: As logged here at 170 s (dmesg), by a dirty_log_test vCPU thread.
WARN_DUMP = (
    "------------[ cut here ]------------",
    "WARNING: CPU: 0 PID: 11749 at arch/x86/kvm/../../../virt/kvm/dirty_ring.c:225 kvm_dirty_ring_push+0xe2/0xf0",
    "CPU: 0 UID: 0 PID: 11749 Comm: dirty_log_test Not tainted 6.18.44-fc-v669 #1 PREEMPT(none) ",
    "RIP: 0010:kvm_dirty_ring_push+0xe2/0xf0",
    "---[ end trace 0000000000000000 ]---",
)
OOPS_DUMP = (
    "BUG: unable to handle page fault for address: ffff888000000000",
    "#PF: supervisor write access in kernel mode",
    "PGD 0 P4D 0",
    "Oops: 0002 [#1] PREEMPT SMP NOPTI",
    "CPU: 1 UID: 0 PID: 4242 Comm: kvm_page_table_ Tainted: G        W          6.12.0 #1",
)
W = 1 << 9


def lines(*texts: str) -> list[KernelLine]:
    return [KernelLine(i, 4, t) for i, t in enumerate(texts)]


def test_the_task_a_line_names() -> None:
    assert named(WARN_DUMP[1]).pid == 11749  # type: ignore[union-attr]
    assert named(WARN_DUMP[2]) == named(WARN_DUMP[2]) and named(WARN_DUMP[2]).comm == "dirty_log_test"  # type: ignore[union-attr]
    lockup = named("watchdog: BUG: soft lockup - CPU#1 stuck for 22s! [kvm_page_table_:4242]")
    assert lockup is not None and (lockup.pid, lockup.comm) == (4242, "kvm_page_table_")
    hung = named("INFO: task dirty_log_perf_:77 blocked for more than 120 seconds.")
    assert hung is not None and (hung.pid, hung.comm) == (77, "dirty_log_perf_")
    assert named(PVM_LINE) is None


def test_a_dump_belongs_to_the_task_it_names_further_down() -> None:
    dump = lines(*WARN_DUMP)
    assert owner(dump, 0, "WARN").pid == 11749  # type: ignore[union-attr]  # "cut here" -> the WARNING line
    oops = lines(*OOPS_DUMP)
    assert owner(oops, 0, "BUG") == owner(oops, 3, "Oops") and owner(oops, 0, "BUG").pid == 4242  # type: ignore[union-attr]
    # a KVM internal error is no dump: it never borrows the PID of a dump that follows it
    assert owner(lines(PVM_LINE, *WARN_DUMP), 0, "KVM internal error") is None


def test_own_warn_fails_another_pids_warn_is_only_seen() -> None:
    health = classify_lines(lines(*WARN_DUMP))
    mine = blame(health, {11749}, "dirty_log_test", alone=False)
    assert mine.mine.bad and len(mine.mine.complaints) == 2 and not mine.meanwhile
    other = blame(health, {500, 501}, "dirty_log_test", alone=False)
    assert not other.mine.bad and other.meanwhile == WARN_DUMP[:2]
    alone_other = blame(health, {500}, "kvm_page_table_test", alone=True)
    assert not alone_other.mine.bad, "alone, but the dump names another program: not ours"


def test_a_thread_not_seen_is_ours_by_name_only_when_alone() -> None:
    health = classify_lines(lines(*WARN_DUMP))
    assert blame(health, {500}, "dirty_log_test", alone=True).mine.bad
    assert not blame(health, {500}, "dirty_log_test", alone=False).mine.bad


def test_lines_and_taints_that_name_no_task_fail_only_a_test_that_ran_alone() -> None:
    health = classify_lines(lines(PVM_LINE))
    health = type(health)(health.lines, health.complaints, W, health.noise)
    alone = blame(health, set(), "x", alone=True)
    assert alone.mine.bad and alone.mine.new_taint == W and "KVM internal error" in alone.mine.summary()
    shared = blame(health, set(), "x", alone=False)
    assert not shared.mine.bad and shared.meanwhile == (PVM_LINE,) and shared.taint_meanwhile == W


def test_a_taint_that_came_with_another_tasks_warn_is_theirs() -> None:
    health = classify_lines(lines(*WARN_DUMP))
    health = type(health)(health.lines, health.complaints, W, health.noise)
    judged = blame(health, {1}, "kvm_page_table_test", alone=True)
    assert not judged.mine.bad and judged.taint_meanwhile == W


def test_expected_lines_never_fail() -> None:
    health = classify_lines(lines(PVM_LINE))
    judged = blame(health, set(), "set_memory_region_test", alone=True,
                   expected=[re.compile(r"kvm-pvm: INTERNAL_ERROR in batch emul")])
    assert not judged.mine.bad and judged.expected == (PVM_LINE,)


def test_a_log_file_holds_many_records_per_read() -> None:
    chunk = f"4,1,10,-;{WARN_DUMP[0]}\n SUBSYSTEM=x\n4,2,11,-;{WARN_DUMP[1]}\n"
    assert split_records(chunk) == [f"4,1,10,-;{WARN_DUMP[0]}\n SUBSYSTEM=x", f"4,2,11,-;{WARN_DUMP[1]}"]


# --- whole sessions against a fake kernel log ------------------------------------------------

MP = multiprocessing.get_context("fork")


def _writer(directory: Path, name: str, kmsg: Path, texts: list[str], exit: int = 0) -> None:
    """A fake selftest that writes ``texts`` to the fake kernel log (``{pid}`` is its own PID)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(
        f"#!{sys.executable}\nimport os, sys\n"
        f"with open({str(kmsg)!r}, 'a') as f:\n"
        f"    for i, t in enumerate({texts!r}):\n"
        "        f.write(f'4,{i},0,-;' + t.replace('{pid}', str(os.getpid())) + '\\n')\n"
        f"sys.exit({exit})\n"
    )
    path.chmod(0o755)


def _session(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str) -> Path:
    kmsg, ledger = tmp_path / "kmsg", tmp_path / "ledger"
    kmsg.write_text("")
    private_dir(ledger)
    monkeypatch.setenv("KVMMM_KMSG", str(kmsg))
    monkeypatch.setenv("KVMMM_LEDGER_DIR", str(ledger))
    pytester.makepyfile(f"""
        import pytest

        @pytest.mark.kvm_selftest({name!r})
        def test_it():
            pass
    """)
    return kmsg


def _run(pytester: pytest.Pytester, bins: Path) -> pytest.RunResult:
    return pytester.runpytest_subprocess(f"--kvm-selftests={bins}", "-rA", "-p", "no:cacheprovider")


def test_another_pids_warn_in_the_log_does_not_fail_the_test(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    kmsg = _session(pytester, monkeypatch, tmp_path, "kvm_page_table_test")
    _writer(tmp_path / "b", "kvm_page_table_test", kmsg, list(WARN_DUMP))
    res = _run(pytester, tmp_path / "b")
    res.assert_outcomes(passed=1)
    res.stdout.fnmatch_lines([f"*kernel (seen on the host meanwhile): {WARN_DUMP[1]}*"])


def test_a_warn_naming_the_selftests_own_pid_fails_it(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    kmsg = _session(pytester, monkeypatch, tmp_path, "dirty_log_test")
    own = [t.replace("11749", "{pid}") for t in WARN_DUMP]
    _writer(tmp_path / "b", "dirty_log_test", kmsg, own, exit=254)
    res = _run(pytester, tmp_path / "b")
    res.assert_outcomes(failed=1)
    res.stdout.fnmatch_lines(["*kernel log during the run:*", "*WARNING: CPU: 0 PID: * at arch/x86/kvm/*dirty_ring.c:225*"])


def _other_session(ledger: Path, started: Path) -> None:
    with HostLedger(ledger, Path("/"), "another-session").selftest("theirs"):
        started.touch()
        time.sleep(600)


def test_a_line_naming_no_task_fails_only_a_test_alone_on_the_host(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    kmsg = _session(pytester, monkeypatch, tmp_path, "kvm_page_table_test")
    _writer(tmp_path / "b", "kvm_page_table_test", kmsg, [PVM_LINE])
    res = _run(pytester, tmp_path / "b")
    res.assert_outcomes(failed=1)
    res.stdout.fnmatch_lines(["*kvm_page_table_test passed, but the kernel logged KVM internal error during the run*"])
    other = MP.Process(target=_other_session, args=(tmp_path / "ledger", tmp_path / "started"))
    other.start()
    try:
        deadline = time.monotonic() + 10
        while not (tmp_path / "started").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        res = _run(pytester, tmp_path / "b")
    finally:
        other.kill()
        other.join()
    res.assert_outcomes(passed=1)
    res.stdout.fnmatch_lines([f"*kernel (seen on the host meanwhile): {PVM_LINE}*"])


def test_set_memory_region_test_provokes_its_internal_error_on_purpose(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    kmsg = _session(pytester, monkeypatch, tmp_path, "set_memory_region_test")
    for made in pytester.path.glob("test_*.py"):
        made.unlink()
    _writer(tmp_path / "b", "set_memory_region_test", kmsg, [PVM_LINE])
    res = pytester.runpytest_subprocess("--pyargs", "pytest_kvmmm.suite", "-k", "set_memory_region",
                                        f"--kvm-selftests={tmp_path / 'b'}", "-rA", "-p", "no:cacheprovider")
    out = res.stdout.str()
    if "KVM" in out and "skipped" in out.splitlines()[-1] and "passed" not in out.splitlines()[-1]:
        pytest.skip("no usable KVM here: the suite's case skips before running")
    res.assert_outcomes(passed=1)
    res.stdout.fnmatch_lines([f"*kernel (expected from set_memory_region_test): {PVM_LINE}*"])
