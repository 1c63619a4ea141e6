"""Hostile selftest output: every parser finishes in bounded time, and what is shown of it
(terminal, --kvm-results, JUnit, Allure) is short, free of terminal control sequences, and
names binary output instead of showing it.

The time bound is generous (``BOUND_S`` seconds of the parser's CPU time for megabytes that
take well under one; see ``ci/bench_parse.py`` for the numbers), and counts CPU, not wall
time, so a busy shared host does not make it flaky: it is there to catch a parser whose time
grows faster than its input, which before took minutes on one of these cases. Tests that
call a parser in this process are bounded too (``_bounded``, wall time, far above what they
need): the regular expression engine checks for signals, so a timer signal ends a runaway
match with an error instead of a hung suite.
"""

from __future__ import annotations

import json
import signal
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pytest

import hostile
from fakes import golden, make_fake, records
from pytest_kvmmm.engine import assertions, guest_modes, output_checks, textsafe
from pytest_kvmmm.engine.outcome import TAIL_LINES, Status, classify, skip_reason
from pytest_kvmmm.engine.process import ProcessResult

BOUND_S = 5.0
CSI_RED, CSI_RESET, OSC_TITLE, BEL = "\x1b[31;1m", "\x1b[0m", "\x1b]0;pwned", "\x07"
#: What no shown text may contain: ESC, 8-bit CSI, BEL, NUL, backspace, carriage return.
FORBIDDEN = ("\x1b", "\x9b", "\x07", "\x00", "\x08", "\r")


def proc(rc: int | None, stdout: str = "", stderr: str = "", **kw: object) -> ProcessResult:
    return ProcessResult(("/x/kvm_page_table_test",), rc, stdout, stderr, 0.1, **kw)  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def _bounded() -> Iterator[None]:
    """Fail a test still running after ``12 * BOUND_S`` (a parser in this process gone quadratic)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum: int, frame: FrameType | None) -> None:
        raise TimeoutError(f"still running after {12 * BOUND_S:g} s: some parser is not linear in its input")

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, 12 * BOUND_S)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def shown_ok(text: str, max_lines: int, width: int = textsafe.MAX_WIDTH) -> None:
    """Clean, at most ``max_lines`` lines (and a note), each at most ``width`` characters of
    output plus the plugin's own prefix ("kvm_page_table_test exit 254: ") and length note."""
    assert not any(c in text for c in FORBIDDEN), repr(text[:300])
    lines = text.split("\n")
    assert len(lines) <= max_lines + 1, len(lines)
    assert all(len(ln) <= width + 100 for ln in lines), max(len(ln) for ln in lines)


# --- bounded time ---------------------------------------------------------------------------


@pytest.mark.parametrize("parser", sorted(hostile.PARSERS))
def test_every_parser_reads_megabytes_of_hostile_output_in_bounded_time(parser: str) -> None:
    hostile.cases(hostile.MIB)  # made once, before the fork: the child measures only the parser
    row = hostile.measure(parser, hostile.MIB, timeout=30 * BOUND_S, cpu_limit=BOUND_S)
    assert not row["timed_out"], f"{parser} still running after {30 * BOUND_S} s on case {row['stuck_on']!r}"
    assert row["over_cpu_limit"] is None, f"{parser} used {BOUND_S} s of CPU on case {row['over_cpu_limit']!r}"
    assert set(row["cases"]) == set(hostile.cases(hostile.MIB)), "the child died before the end"


# --- textsafe -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, clean",
    [
        (f"{CSI_RED}red{CSI_RESET} text", "red text"),
        (f"{OSC_TITLE}{BEL}after title", "after title"),
        ("\x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\", "link"),  # OSC 8 hyperlink, ST-terminated
        ("\x1b]0;never terminated", ""),  # an unterminated OSC swallows the rest, never shows it
        ("\x9b2Jcleared", "cleared"),  # 8-bit CSI
        ("\x1bcreset\x1b(Bcharset", "resetcharset"),
        ("tab\tand\nnewline kept", "tab\tand\nnewline kept"),
        ("cr\r\nlf and a\rredraw", "cr\nlf and a\nredraw"),
        ("bell\x07 nul\x00 bs\x08 del\x7f c1\x85", "bell nul bs del c1"),
        ("bidi \u202eevil\u202c \u2066iso\u2069", "bidi evil iso"),
    ],
)
def test_clean_strips_escape_sequences_and_controls(raw: str, clean: str) -> None:
    assert textsafe.clean(raw) == clean


def test_line_is_one_bounded_line_and_says_how_long_it_was() -> None:
    assert textsafe.line("  a\n\n b  \n") == "a | b"
    long = textsafe.line("x" * 1_000_000)
    assert long.startswith("x" * textsafe.MAX_WIDTH) and long.endswith("[... 1000000 characters in all]")
    assert len(long) < textsafe.MAX_WIDTH + 40
    assert textsafe.line("a" + " " * 1_000_000 + "b") == "a b"  # runs of blanks fold


def test_block_keeps_the_tail_or_the_head_and_says_what_it_left_out() -> None:
    text = "".join(f"line {i}\n" for i in range(1000))
    tail = textsafe.block(text, 5)
    assert tail.split("\n") == ["[... 995 earlier lines left out ...]", *(f"line {i}" for i in range(995, 1000))]
    head = textsafe.block(text, 3, keep="head")
    assert head.split("\n") == ["line 0", "line 1", "line 2", "[... 997 further lines left out ...]"]


@pytest.mark.parametrize(
    "text, binary",
    [
        ("plain text\n", False),
        ("caf\u00e9 \u2603 utf-8 text\n", False),
        ("one\x00NUL", True),
        ("\ufffd" * 50 + "x" * 50, True),  # half undecodable bytes
        ("\ufffd" + "x" * 99, False),  # one stray byte in text
        ("", False),
    ],
)
def test_binary_is_a_nul_or_mostly_non_printables(text: str, binary: bool) -> None:
    assert textsafe.is_binary(text) is binary


def test_binary_is_named_with_its_size_not_shown() -> None:
    raw = bytes(range(256)) * 4
    text = raw.decode("utf-8", errors="replace")
    assert textsafe.line(text) == f"binary output, {len(raw)} bytes"
    assert textsafe.block(text) == f"binary output, {len(raw)} bytes"


def test_lines_with_finds_whole_lines_in_order_and_last_first() -> None:
    text = "a KEY 1\nnothing\nKEY 2 and KEY again\nOTHER 3\nKEY 4"
    assert list(textsafe.lines_with(text, "KEY")) == ["a KEY 1", "KEY 2 and KEY again", "KEY 4"]
    assert list(textsafe.lines_with(text, "OTHER", "KEY")) == ["a KEY 1", "KEY 2 and KEY again", "OTHER 3", "KEY 4"]
    assert list(textsafe.lines_with(text, "KEY", reverse=True)) == ["KEY 4", "KEY 2 and KEY again", "a KEY 1"]
    assert list(textsafe.lines_with("", "KEY")) == []


# --- reasons and details built from hostile output ------------------------------------------


def test_a_skip_reason_with_escapes_and_a_megabyte_is_one_clean_bounded_line() -> None:
    out = classify(proc(4, f"1..0 # SKIP - {CSI_RED}Requirement{OSC_TITLE}{BEL} not met: " + "y" * 1_000_000 + "\n"))
    assert out.status is Status.SKIPPED
    assert out.reason.startswith("Requirement not met: yyy") and out.reason.endswith("characters in all]")
    shown_ok(out.reason, 1)


def test_skip_lines_that_only_look_like_skips_are_not_reasons() -> None:
    assert skip_reason("ok 1 # SKIPPED x\n  # SKIP_IT\nx, skipping testy\n", "") is None
    assert skip_reason("ok 3 name # SKIP reason here\n", "") == "reason here"
    assert skip_reason("#SKIP:- terse\n", "") == "terse"
    assert skip_reason("1..0 # SKIP\n", "") == "skipped (KSFT_SKIP) without a reason"


def test_a_failure_tail_of_long_lines_and_escapes_is_bounded_and_clean() -> None:
    stdout = "".join(f"{CSI_RED}line {i} " + "z" * 5000 + "\n" for i in range(200))
    out = classify(proc(1, stdout))
    assert out.reason.startswith("kvm_page_table_test exit 1: line 199 zzz")
    shown_ok(out.reason, 1)
    shown_ok(out.details, TAIL_LINES)
    assert out.details.startswith("[... ") and "line 199" in out.details


def test_a_timeout_with_binary_stdout_names_it_and_keeps_stderr_text() -> None:
    raw = bytes(range(256)) * 1000
    out = classify(proc(-9, raw.decode("utf-8", errors="replace"), "vCPU 0: stuck\n", timed_out=True), 2)
    assert out.status is Status.TIMEOUT
    assert out.details == f"partial output:\n[binary output, {len(raw)} bytes]\nvCPU 0: stuck"


INTERLEAVED_NOISE = """\
==== Test Assertion Failure ====
  lib/kvm_util.c:1000: region->mmap_start != MAP_FAILED
  pid=31110 tid=31117 errno=12 - Cannot allocate memory
     1\t0x00000000004054ae: vm_mem_add at kvm_util.c:1000
     2\t (inlined by) run_test at kvm_page_table_test.c:350
  mmap() failed, rc: -1 errno: 12 (Cannot allocate memory)
==== Test Assertion Failure ====
  lib/x86_64/processor.c:567: Unconditional guest failure
  pid=31110 tid=31118 errno=4 - Interrupted system call
addr2line: DWARF error: could not find variable specification at offset 0x1f2e
     1\t0x0000000000410261: assert_on_unhandled_exception at processor.c:611
     2\t0x00007fea849491f4: ?? ??:0
sh: 1: addr2line: not found
"""


def test_interleaved_vcpu_blocks_give_a_coherent_summary_without_addr2line_noise() -> None:
    # The second thread died (the first one's exit) before its message: the block to show is
    # the first, whose message is its own, not the second's header with addr2line's complaint.
    out = classify(proc(254, "", INTERLEAVED_NOISE))
    assert out.reason == (
        "kvm_page_table_test exit 254: lib/kvm_util.c:1000: region->mmap_start != MAP_FAILED: "
        "mmap() failed, rc: -1 errno: 12 (Cannot allocate memory)"
    )
    assert out.details.startswith(assertions.BANNER + "\n  lib/kvm_util.c:1000")
    assert "addr2line" not in out.details and "tid=31117" in out.details
    assert out.details.endswith("[1 other assertion block of other threads; see the full output]")


def test_a_block_of_only_noise_and_frames_summarises_its_header() -> None:
    noise = assertions.BANNER + "\n  a.c:7: ok\n  pid=1 tid=1 errno=0 - Success\n" + "sh: 1: addr2line: not found\n" * 3
    assert classify(proc(254, "", noise)).reason == "kvm_page_table_test exit 254: a.c:7: ok"


def test_real_interleaved_golden_blocks_keep_their_summary() -> None:
    out = classify(proc(254, "", golden("max_guest_memory_test.no_gbpages.stderr")))
    assert out.reason.endswith("lib/x86_64/processor.c:567: Unconditional guest failure: "
                               "Unhandled exception '0xe' at guest RIP '0x402d48'")


def test_thousands_of_banners_and_a_megabyte_stack_are_bounded() -> None:
    text = (assertions.BANNER + "\n") * 50_000 + assertions.BANNER + "\n  a.c:1: x\n" + "     1\t0x1: f at a.c:1\n" * 50_000 + "  msg\n"
    out = classify(proc(254, "", text))
    assert out.reason == "kvm_page_table_test exit 254: a.c:1: x: msg"
    shown_ok(out.details, assertions.MAX_FRAMES + assertions.MAX_MESSAGE + 6)


def test_output_check_verdicts_and_notes_are_clean_and_bounded() -> None:
    warn = f"WARNING: {CSI_RED}idle pages" + " " * 1_000_000 + "not cleared\n"
    notes = output_checks.output_notes("access_tracking_perf_test", warn * 3, "")
    assert notes == ("WARNING: idle pages not cleared",)
    many = "".join(f"Skipping tests for vm_type {i}\n" for i in range(10_000))
    assert len(output_checks.output_notes("pre_fault_memory_test", many, "")) == output_checks.MAX_NOTES
    verdict = output_checks.check_output("memslot_perf_test", f"No full loops done{OSC_TITLE}{BEL} - too short\n", "")
    assert verdict is not None and verdict.reason == "No full loops done - too short"


def test_help_problem_quotes_a_clean_skip_line() -> None:
    why = guest_modes._problem("t", f"1..0 # SKIP {CSI_RED}no /dev/kvm" + "!" * 10_000 + "\n", "", 4)
    assert "\x1b" not in why and len(why) < 400


def test_a_mode_table_row_drowned_in_spaces_is_still_no_row() -> None:
    row = "         9:    PA-bits:ANY, VA-bits:48,  4K pages" + " " * 1_000_000 + "x\n"
    assert guest_modes.parse_mode_help(row) == {}
    real = "         9:    PA-bits:ANY, VA-bits:48,  4K pages (supported)\r\n"
    assert guest_modes.parse_mode_help(real)["pxxv48_4k"].supported


# --- end to end: the terminal, --kvm-results and JUnit ---------------------------------------


HOSTILE_STDERR = (
    f"{OSC_TITLE}{BEL}\x1b[2J" + "=" * 300_000 + "\n"
    + assertions.BANNER + f"\n  evil.c:1: {CSI_RED}false\n  pid=1 tid=1 errno=0 - Success\n"
    + "sh: 1: addr2line: not found\n  " + "m" * 100_000 + "\n"
)


def test_what_the_terminal_results_and_junit_show_is_clean_and_short(pytester: pytest.Pytester, tmp_path: Path) -> None:
    d = tmp_path / "b"
    make_fake(d, "evil", stderr=HOSTILE_STDERR, exit=254)
    make_fake(d, "evil_skip", stdout=f"1..0 # SKIP {CSI_RED}no{OSC_TITLE}{BEL} " + "s" * 100_000 + "\n", exit=4)
    pytester.makepyfile("""
        import pytest

        @pytest.mark.kvm_selftest("evil")
        def test_evil():
            pass

        @pytest.mark.kvm_selftest("evil_skip")
        def test_evil_skip():
            pass
    """)
    res = pytester.runpytest(f"--kvm-selftests={d}", "--kvm-results", "r.jsonl", "--junitxml", "j.xml", "-rs")
    res.assert_outcomes(failed=1, skipped=1)
    terminal = res.stdout.str()
    assert not any(c in terminal for c in FORBIDDEN)
    assert "m" * 1000 not in terminal and "=" * 1000 not in terminal
    recs = records(pytester.path / "r.jsonl")
    assert str(recs["test_evil"]["reason"]).startswith("evil exit 254: evil.c:1: false: mmm")
    for rec in recs.values():
        shown_ok(str(rec["reason"]), 1)
    junit = (pytester.path / "j.xml").read_text()
    failure = ET.fromstring(junit).find(".//failure")
    assert failure is not None
    for text in (failure.get("message", ""), failure.text or ""):
        assert not any(c in text for c in FORBIDDEN)
        assert "m" * 1000 not in text
    assert len(junit) < 20_000
    assert json.dumps(recs["test_evil_skip"]["reason"]).startswith('"no sss')


def test_allure_shows_the_clean_reason_and_still_attaches_the_full_output() -> None:
    from fakes import describe_run
    from pytest_kvmmm.engine.result import SelftestResult

    out = classify(proc(254, "", HOSTILE_STDERR))
    res = SelftestResult("evil", ("/x/evil",), out.status, out.reason, out.details, binary="/x/evil",
                         returncode=254, stderr=HOSTILE_STDERR)
    a = describe_run([res], None, scale="smoke", host="vm", test_name="test_evil")
    bodies = {x.name: x.body for x in a.attachments}
    shown_ok(bodies["failure reason"].rstrip("\n"), 3 + assertions.MAX_FRAMES + assertions.MAX_MESSAGE)
    assert bodies["stderr"] == HOSTILE_STDERR  # the full output, as the selftest wrote it
