#!/usr/bin/env python3
"""How long does each parser of selftest output take on hostile output? Measured on this host.

    python ci/bench_parse.py [--mb 1] [--timeout 60] [--json FILE]

Every parser of a selftest's output (outcome classification with its skip reasons and
assertion summaries, the exit-0 output checks and notes, the guest-mode ``-h`` table, the
metrics of every binary, the sanitising of shown text; ``hostile.PARSERS``) is fed the same pathological cases, each about ``--mb`` MiB on
stdout and as much on stderr (the runner keeps at most 1 MiB per stream, so 1 is the
realistic worst case):

  blank_lines      nothing but newlines (and lines of blanks): long runs of blank lines
  space_line       one line of spaces, then near-misses of every line the parsers look for
                   followed by a line of spaces (``1..0 # SKIP`` + spaces, a ``-h`` table row
                   whose text runs into spaces, ``x`` + spaces + ``skipping tes`` ...)
  assert_headers   ``==== Test Assertion Failure ====`` over and over
  vcpu_interleave  the real interleaved assertion blocks of tests/golden (two vCPU threads),
                   repeated with their stacks
  addr2line_noise  deep ``addr2line`` stacks and its error lines (``?? ??:0``, DWARF errors)
  binary           random bytes with NULs, decoded as the runner decodes them
  metric_misses    metric lines of every binary with a megabyte-long field
  skip_lines       lines that hold ``# SKIP`` or ``skipping test`` but are no skip line
  escapes          unterminated OSC and CSI sequences, 8-bit CSI

Each parser runs all cases in a forked child with a per-parser timeout: a parser that takes
longer is reported as ``>N s`` with the case it was stuck on (a regular expression in C
cannot be interrupted more gently). Prints CPU seconds per parser (what it costs; the host
is shared) with the wall time and its worst case; ``--json`` keeps every case.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import hostile  # noqa: E402  (the cases and the parsers, shared with tests/test_hostile_output.py)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=1.0, help="MiB per stream per case (default 1)")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds per parser before it is reported as >N s")
    ap.add_argument("--only", default="", help="run only parsers whose name contains this")
    ap.add_argument("--json", type=Path, help="write the numbers here")
    args = ap.parse_args(argv)
    size = int(args.mb * (1 << 20))
    total_bytes = sum(len(a) + len(b) for a, b in hostile.cases(size).values())
    print(f"{len(hostile.cases(size))} cases, {total_bytes / (1 << 20):.1f} MiB of output per parser, "
          f"timeout {args.timeout:g} s per parser, Python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    rows = []
    for name in hostile.PARSERS:
        if args.only not in name:
            continue
        row = hostile.measure(name, size, args.timeout)
        rows.append(row)
        cpu = row["cpu"]
        worst = max(cpu.items(), key=lambda kv: kv[1], default=("-", 0.0))
        if row["timed_out"]:
            print(f"  {name:<46} >{args.timeout:g} s wall (stuck on {row['stuck_on']}; "
                  f"{len(cpu)} cases before it: {sum(cpu.values()):.3f} s CPU)", flush=True)
        else:
            print(f"  {name:<46} {row['cpu_seconds']:7.3f} s CPU {row['seconds']:7.3f} s wall "
                  f"(worst {worst[0]}: {worst[1]:.3f} s CPU)", flush=True)
    done = [r for r in rows if not r["timed_out"]]
    late = len(rows) - len(done)
    print(f"total: {sum(r['cpu_seconds'] for r in done):.3f} s CPU, {sum(r['seconds'] for r in done):.3f} s wall "
          f"over {len(done)} parsers" + (f"; {late} parsers over {args.timeout:g} s" if late else "")
          + f"; load average {os.getloadavg()[0]:.1f}")
    if args.json:
        args.json.write_text(json.dumps({"mib_per_stream": args.mb, "timeout_s": args.timeout, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
