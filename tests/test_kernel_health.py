"""kernel_health: classifying kernel log lines, taints, and the watch around real runs."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

from pytest_kvmmm.engine.kernel_health import (
    KernelLine,
    KernelWatch,
    classify_lines,
    parse_kmsg_record,
    taint_flags,
)
from pytest_kvmmm.host.kmsg import read_kmsg_records

PVM_LINE = "kvm-pvm: INTERNAL_ERROR in batch emul: rip=0xfff0 cpl=0 cr3=0x0"


def lines(*texts: str) -> list[KernelLine]:
    return [KernelLine(i, 4, t) for i, t in enumerate(texts)]


def test_parse_kmsg_record() -> None:
    line = parse_kmsg_record(f"3,1254,4308724192,-;{PVM_LINE}\n SUBSYSTEM=kvm\n")
    assert line == KernelLine(1254, 3, PVM_LINE)
    assert parse_kmsg_record("garbage without a separator") is None
    assert parse_kmsg_record("x,y;text") is None


@pytest.mark.parametrize(
    "text, kind",
    [
        ("WARNING: CPU: 1 PID: 4242 at arch/x86/kvm/mmu/tdp_mmu.c:1234 tdp_mmu_zap_root+0x1/0x2 [kvm]", "WARN"),
        ("------------[ cut here ]------------", "WARN"),
        ("BUG: unable to handle page fault for address: ffff888000000000", "BUG"),
        ("kernel BUG at mm/huge_memory.c:2345!", "BUG"),
        ("Oops: 0002 [#1] PREEMPT SMP NOPTI", "Oops"),
        ("watchdog: BUG: soft lockup - CPU#1 stuck for 22s! [kvm_page_table_:4242]", "BUG"),
        ("rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:", "RCU stall"),
        ("INFO: task kvm_page_table_:4242 blocked for more than 120 seconds.", "hung task"),
        (PVM_LINE, "KVM internal error"),
    ],
)
def test_complaints(text: str, kind: str) -> None:
    health = classify_lines(lines("kvm: a harmless line", text))
    assert health.complaints == ((kind, text),)
    assert health.bad and kind in health.summary()


def test_plain_lines_and_known_noise_do_not_complain() -> None:
    health = classify_lines(
        lines("kvm-pvm: triple fault delivering vec=8 err=0 cpl=0 rip=403abb", PVM_LINE),
        noise=[re.compile(r"INTERNAL_ERROR in batch emul: rip=0xfff0")],
    )
    assert not health.bad and health.noise == (PVM_LINE,)


def test_kmsg_reader_skips_overwritten_records_and_stops_on_eagain_eof_and_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    def reads(*results: bytes | OSError) -> list[str]:
        pending = list(results)

        def read(fd: int, n: int) -> bytes:
            assert pending, "read past the end: the reader did not stop"
            result = pending.pop(0)
            if isinstance(result, OSError):
                raise result
            return result

        monkeypatch.setattr(os, "read", read)
        got = list(read_kmsg_records(99))
        assert not pending, "the reader stopped too early"
        return got

    rec = f"4,7,100,-;{PVM_LINE}\n".encode()
    assert reads(rec, BrokenPipeError(), rec, BlockingIOError()) == [rec.decode(), rec.decode()]
    assert reads(rec, b"") == [rec.decode()]
    assert reads(rec, OSError(5, "Input/output error")) == [rec.decode()]
    assert reads(b"\xff;x", BlockingIOError()) == ["\ufffd;x"]


def test_new_taint_is_reported_with_its_letters(tmp_path: Path) -> None:
    tainted = tmp_path / "tainted"
    tainted.write_text("0\n")
    watch = KernelWatch(kmsg=tmp_path / "no-kmsg", tainted=tainted)
    assert not watch.active and "cannot read" in (watch.reason or "")
    assert taint_flags(1 << 9) == "W" and taint_flags(0) == "-"


def test_unreadable_log_turns_the_watch_off_with_one_note(
    pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile("def test_x(kvm_host):\n    pass\n")  # a test of the host: the plugin watches
    monkeypatch.setenv("KVMMM_KMSG", str(tmp_path / "nope"))
    res = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    res.assert_outcomes(passed=1)
    res.stdout.fnmatch_lines([f"kvmmm: kernel log watch off: cannot read {tmp_path / 'nope'}: No such file or directory*"])
    assert res.stdout.str().count("kernel log watch off") == 1


ROOT_KMSG = pytest.mark.skipif(
    os.geteuid() != 0 or not os.access("/dev/kmsg", os.W_OK), reason="writing to /dev/kmsg needs root"
)


def _kmsg_writer(directory: Path, text: str) -> Path:
    """A fake selftest that passes after writing ``text`` into the kernel log, as a buggy KVM would
    (``{pid}`` becomes its own PID: a WARN names the task that hit it)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "kvm_page_table_test"
    path.write_text(
        f"#!{sys.executable}\nimport os\n"
        f"open('/dev/kmsg', 'w').write('<4>' + {text!r}.replace('{{pid}}', str(os.getpid())) + '\\n')\n"
        "print('KVM_CREATE_MAPPINGS: total execution time: 0.100000000s')\n"
    )
    path.chmod(0o755)
    return path


@ROOT_KMSG
def test_a_passing_binary_fails_when_the_kernel_warns(pytester: pytest.Pytester, tmp_path: Path) -> None:
    warn = "pytest-kvmmm selftest: WARNING: CPU: 0 PID: {pid} at fake/kvm_mmu.c:42 injected_by_test+0x0/0x0"
    _kmsg_writer(tmp_path / "b", warn)
    warn = warn.replace("{pid}", "*")
    pytester.makepyfile("""
        import pytest

        @pytest.mark.kvm_selftest("kvm_page_table_test")
        def test_pt():
            pass
    """)
    res = pytester.runpytest_subprocess(f"--kvm-selftests={tmp_path / 'b'}", "--kvm-results", "r.jsonl", "-p", "no:cacheprovider")
    res.assert_outcomes(failed=1)
    res.stdout.fnmatch_lines(["*kvm_page_table_test passed, but the kernel logged WARN during the run*", f"*{warn}*"])
    rec = [ln for ln in (pytester.path / "r.jsonl").read_text().splitlines()][0]
    assert re.search(r"WARNING: CPU: 0 PID: \d+ at fake/kvm_mmu.c:42", rec)
    # report mode: the same run passes, the line becomes a note
    res = pytester.runpytest_subprocess(f"--kvm-selftests={tmp_path / 'b'}", "--kvm-kernel-log", "report", "-p", "no:cacheprovider")
    res.assert_outcomes(passed=1)
    res.stdout.fnmatch_lines([f"*note: kernel: {warn}*"])
