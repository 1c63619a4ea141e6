"""Hostile selftest output, shared by ``ci/bench_parse.py`` and ``tests/test_hostile_output.py``.

Each case is about ``size`` characters per stream, shaped after the real output in
``tests/golden/`` and made pathological for the patterns that read it: long runs of blank
lines, a megabyte line of spaces after every prefix a parser looks for, assertion banners
over and over, the real interleaved vCPU blocks, addr2line noise, bytes that are not text,
metric lines with a megabyte field, unterminated escape sequences. ``PARSERS`` names every
entry point that reads selftest output; ``within`` runs one in a child it can kill, since
a regular expression stuck in C cannot be interrupted more gently.
"""

from __future__ import annotations

import functools
import multiprocessing
import random
import signal
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from types import FrameType
from typing import Any

from pytest_kvmmm.engine import assertions, guest_modes, metrics, outcome, output_checks
from pytest_kvmmm.engine.process import ProcessResult

try:
    from pytest_kvmmm.engine import textsafe
except ImportError:  # the code before textsafe existed, for the benchmark's "before" numbers
    textsafe = None  # type: ignore[assignment]
try:
    from pytest_kvmmm.engine.counters.stages import StageTracker
    from pytest_kvmmm.engine.process import MAX_TAPPED_LINE
except ImportError:  # the code before --kvm-counters
    StageTracker = None  # type: ignore[assignment,misc]

GOLDEN = Path(__file__).parent / "golden"
Case = tuple[str, str]  # stdout, stderr
MIB = 1 << 20


def _fill(unit: str, size: int) -> str:
    return unit * max(size // max(len(unit), 1), 1)


def _golden(name: str) -> str:
    return (GOLDEN / name).read_text(errors="replace")


def _near_misses(pad: int) -> str:
    """Every prefix a parser looks for, then ``pad`` blanks and a character that breaks the match."""
    heads = (
        ("1..0 # SKIP", "x"), ("x", "skipping tes"), ("         0:    PA-bits:", "x"),
        ("Testing guest mode: PA-bits:", "x"), ("Log mode 'a' not supported, skipping test", "x"),
        ("Memslot count too high for this test", ""), ("WARNING: ", ""), ("Skipping tests for ", ""),
        ("Testing Log Mode 'a'", "x"), ("Mark memory idle", ": x"),
    )  # fmt: skip
    return "".join(f"{head}{' ' * pad}{tail}\n" for head, tail in heads)


def _metric_misses(size: int) -> str:
    field, pad = "9" * (size // 8), " " * (size // 8)
    lines = (
        f"KVM_CREATE_MAPPINGS: total execution time: {field}.000000001s",
        f"Populate memory time: {field}.000000001s",
        f"Iteration 1 dirty memory time: {field}",
        f"Mark memory idle{pad}: 0.1s",
        f"Total guest execution time:{pad}1.000000000s",
        f"run1 = {pad}1.000000000s, reset = 0.1s",
        f"Testing {'x' * (size // 8)} performance with 1 runs, x seconds each",
        f"Iteration{pad}1: dirty: 1 clean: x",
    )
    return "".join(line + "\n" for line in lines)


@functools.lru_cache(maxsize=2)
def cases(size: int = MIB) -> dict[str, Case]:
    """The pathological outputs, each about ``size`` characters per stream."""
    interleaved = _golden("max_guest_memory_test.no_gbpages.stderr")
    stack = _golden("kvm_page_table_test.hugetlb_2mb_empty_pool.stderr").splitlines(keepends=True)
    frames = "".join(line for line in stack if "0x" in line or "inlined" in line)
    noise = (
        "addr2line: DWARF error: could not find variable specification at offset 0x1f2e\n"
        "    12\t0x00007f0378a7d249: ?? ??:0\n"
        "sh: 1: addr2line: not found\n"
    )
    rng = random.Random(13)
    raw = bytes(rng.getrandbits(8) for _ in range(min(size, 1 << 16)))
    binary = _fill((raw + b"\0" * 64).decode("utf-8", errors="replace"), size)
    misses = _near_misses(size // 16)
    metric = _metric_misses(size)
    escapes = _fill("\x1b]0;title" + "\x1b[" + "1;" * 64 + "# SKIP\x9b" + "9" * 32, size)
    return {
        "blank_lines": (_fill("\n", size // 2) + _fill(" \t \n", size // 2),) * 2,
        "space_line": (" " * size + "\n" + misses,) * 2,
        "assert_headers": ("", _fill(assertions.BANNER + "\n", size)),
        "vcpu_interleave": (_fill(interleaved, size),) * 2,
        "addr2line_noise": ("", assertions.BANNER + "\n  a.c:1: x\n" + _fill(frames + noise, size) + "  msg\n"),
        "binary": (binary, binary),
        "metric_misses": (_fill(metric, size),) * 2,
        "skip_lines": (_fill("ok 1 # SKIPPED x\n  # SKIP_\n", size), _fill("x, skipping testy\n", size)),
        "escapes": (escapes, escapes),
    }


def _classify(rc: int | None, timed_out: bool = False) -> Callable[[Case], object]:
    def run(case: Case) -> object:
        return outcome.classify(ProcessResult(("/x/selftest",), rc, case[0], case[1], 0.0, timed_out), 1.0)

    return run


def _stages(binary: str) -> Callable[[Case], object]:
    """--kvm-counters: each stdout line as the runner hands it over (cut at MAX_TAPPED_LINE)."""

    def run(case: Case) -> object:
        tracker = StageTracker(binary)
        return [s for line in case[0].split("\n") if (s := tracker.stage_of(line[:MAX_TAPPED_LINE]))]

    return run


def _parsers() -> dict[str, Callable[[Case], object]]:
    out: dict[str, Callable[[Case], object]] = {
        "outcome.classify[exit 4: skip reason]": _classify(outcome.KSFT_SKIP),
        "outcome.classify[exit 254: assertion summary]": _classify(254),
        "outcome.classify[exit 1: output tail]": _classify(1),
        "outcome.classify[timeout: partial output]": _classify(None, timed_out=True),
        "outcome.classify[SIGSEGV: crash]": _classify(-11),
        "guest_modes.parse_mode_help": lambda c: guest_modes.parse_mode_help(c[0] + "\n" + c[1]),
        "guest_modes._problem": lambda c: guest_modes._problem("x", c[0], c[1], 1),
    }
    if StageTracker is not None:
        out["counters.StageTracker[kvm_page_table_test]"] = _stages("kvm_page_table_test")
        out["counters.StageTracker[access_tracking_perf_test]"] = _stages("access_tracking_perf_test")
    if textsafe is not None:
        out["textsafe.line"] = lambda c: (textsafe.line(c[0]), textsafe.line(c[1]))
        out["textsafe.block"] = lambda c: (textsafe.block(c[0]), textsafe.block(c[1], keep="head"))
    for name in ("memslot_perf_test", "dirty_log_test", *output_checks._NOTES):
        out[f"output_checks[{name}]"] = lambda c, n=name: output_checks.output_notes(n, c[0], c[1])
    seen: set[int] = set()
    for name, parser in metrics.PARSERS.items():
        if id(parser) not in seen:
            seen.add(id(parser))
            out[f"metrics[{name}]"] = lambda c, n=name: metrics.parse_metrics(n, c[0])
    return out


#: Every entry point that reads selftest output, by name.
PARSERS = _parsers()


class _CpuLimit(Exception):
    pass


def _over_cpu_limit(signum: int, frame: FrameType | None) -> None:
    raise _CpuLimit  # the regular expression engine checks for signals: this ends a runaway match


def _child(name: str, size: int, only: str | None, cpu_limit: float | None, conn: Connection) -> None:
    parser = PARSERS[name]
    if cpu_limit is not None:
        signal.signal(signal.SIGPROF, _over_cpu_limit)
        signal.setitimer(signal.ITIMER_PROF, cpu_limit)
    for case, streams in cases(size).items():
        if only is not None and case != only:
            continue
        conn.send(("start", case))
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            result = parser(streams)
        except _CpuLimit:
            conn.send(("cpu_limit", case))
            return
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        conn.send(("done", case, wall, cpu, repr(result)[:4000] if only else ""))
    conn.close()


def measure(
    name: str, size: int, timeout: float, only: str | None = None, cpu_limit: float | None = None
) -> dict[str, Any]:
    """Seconds per case of parser ``name``, in a forked child killed after ``timeout`` seconds
    of wall time or stopped after ``cpu_limit`` seconds of its CPU time: ``{"cases": {case:
    wall s}, "cpu": {case: CPU s}, "timed_out": bool, "stuck_on": case, "result": repr of the
    last result (with ``only``)}``. CPU time is what the parser costs; wall time also counts
    whatever else the host runs, so a bound that must hold on a busy host is a CPU limit."""
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(name, size, only, cpu_limit, child))
    proc.start()
    child.close()
    per_case: dict[str, float] = {}
    cpu: dict[str, float] = {}
    stuck: str | None = None
    result = ""
    over_cpu: str | None = None
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0 and parent.poll(left):
        try:
            msg = parent.recv()
        except EOFError:
            break
        if msg[0] == "start":
            stuck = msg[1]
        elif msg[0] == "cpu_limit":
            over_cpu, stuck = msg[1], None
            break
        else:
            per_case[msg[1]], cpu[msg[1]], result, stuck = msg[2], msg[3], msg[4], None
    timed_out = stuck is not None and proc.is_alive()
    if proc.is_alive():
        proc.kill()
    proc.join()
    parent.close()
    return {"parser": name, "cases": per_case, "cpu": cpu, "timed_out": timed_out,
            "stuck_on": stuck if timed_out else None, "over_cpu_limit": over_cpu, "result": result,
            "seconds": None if timed_out else sum(per_case.values()),
            "cpu_seconds": None if timed_out else sum(cpu.values())}
