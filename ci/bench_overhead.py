#!/usr/bin/env python3
"""How much does pytest-kvmmm add over a plain loop running the same selftests?

    .venv/bin/python ci/bench_overhead.py [--rounds 3] [--scale smoke]

Round by round, it runs (a) the smoke page-table suite through pytest and (b) the same binaries with
the same arguments, one after the other, as a shell loop would (argv taken from the suite's
own --kvm-results, so both run exactly the same commands). Cases the suite skipped before
running the binary are left out of the loop too. It prints the wall times and the
overhead. Interleaving the two in each round keeps host noise from favouring either.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pytest_kvmmm.reports.results import read_results


def run_suite(scale: str, results: Path) -> float:
    t0 = time.monotonic()
    subprocess.run(
        [sys.executable, "-m", "pytest", "--pyargs", "pytest_kvmmm.suite", "-m", "pagetable",
         "--kvm-scale", scale, f"--kvm-results={results}", "-q", "-p", "no:cacheprovider"],
        check=False, stdout=subprocess.DEVNULL, cwd=tempfile.gettempdir(),
    )
    return time.monotonic() - t0


def run_loop(commands: list[list[str]]) -> float:
    t0 = time.monotonic()
    for argv in commands:
        subprocess.run(argv, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.monotonic() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--scale", default="smoke")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = Path(tmp) / "r.jsonl"
        suite, loop = [], []
        for _ in range(args.rounds):
            suite.append(run_suite(args.scale, results))
            recs = read_results(results)
            commands = [r["argv"] for r in recs if r["returncode"] is not None]
            loop.append(run_loop(commands))
    s, lp = statistics.median(suite), statistics.median(loop)
    print(f"cases run: {len(commands)} of {len(recs)} ({len(recs) - len(commands)} skipped before running)")
    print(f"pytest suite : median {s:.2f}s  ({', '.join(f'{x:.2f}' for x in suite)})")
    print(f"plain loop   : median {lp:.2f}s  ({', '.join(f'{x:.2f}' for x in loop)})")
    print(f"overhead     : {s - lp:+.2f}s ({(s / lp - 1) * 100:+.0f}%), pytest start-up included")
    return 0


if __name__ == "__main__":
    sys.exit(main())
