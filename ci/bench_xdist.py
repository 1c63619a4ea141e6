#!/usr/bin/env python3
"""How well does the smoke suite use pytest-xdist on this host, and do perf tests run alone?

    .venv/bin/python ci/bench_xdist.py [--rounds 3] [-m "pagetable or memslot"]

For each round it runs the smoke suite with -n 0 and with -n 2, reading every selftest's
start and end from --kvm-results. It prints:
  - wall time of each whole pytest run (xdist's worker start-up included);
  - the functional part (tests without the perf marker): with -n 0 the sum of its selftest
    durations (they run one after another, perf tests between them), with -n 2 the span from
    its first selftest start to its last end (they run first, in parallel), and the ratio
    (the goal is <= 0.6);
  - overlaps: any other selftest running while a perf test ran (the goal is none).
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
from pytest_kvmmm.suite.catalogue import CATALOGUE

PERF_TESTS = {e.test_name for e in CATALOGUE if "perf" in e.markers}


def run(n: int, marker: str, results: Path, dist: str) -> tuple[float, list[dict[str, object]]]:
    t0 = time.monotonic()
    subprocess.run(
        [sys.executable, "-m", "pytest", "--pyargs", "pytest_kvmmm.suite", "-m", marker, "--kvm-scale", "smoke",
         "-n", str(n), *(["--dist", dist] if n else []), f"--kvm-results={results}", "-q",
         "-p", "no:cacheprovider"],
        check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tempfile.gettempdir(),
    )
    wall = time.monotonic() - t0
    return wall, read_results(results)


def is_perf(rec: dict[str, object]) -> bool:
    return str(rec["nodeid"]).split("::")[-1].split("[")[0] in PERF_TESTS


def span(recs: list[dict[str, object]]) -> float:
    ran = [r for r in recs if r.get("started_at")]
    return max(float(r["ended_at"]) for r in ran) - min(float(r["started_at"]) for r in ran) if ran else 0.0  # type: ignore[arg-type]


def overlaps(recs: list[dict[str, object]]) -> list[tuple[str, str]]:
    ran = [r for r in recs if r.get("started_at")]
    out = []
    for a in ran:
        if is_perf(a):
            for b in ran:
                if b is not a and a["started_at"] < b["ended_at"] and b["started_at"] < a["ended_at"]:  # type: ignore[operator]
                    out.append((str(a["nodeid"]), str(b["nodeid"])))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("-m", dest="marker", default="pagetable or memslot")
    ap.add_argument("--dist", default="load", help="xdist distribution mode for -n 2 (default: load)")
    args = ap.parse_args()
    walls: dict[int, list[float]] = {0: [], 2: []}
    functional: dict[int, list[float]] = {0: [], 2: []}
    bad: list[tuple[str, str]] = []
    perf_runs = 0
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for n in (0, 2):
                wall, recs = run(n, args.marker, Path(tmp) / f"n{n}.jsonl", args.dist)
                walls[n].append(wall)
                mine = [r for r in recs if not is_perf(r)]
                functional[n].append(span(mine) if n else sum(float(r["duration_s"]) for r in mine))  # type: ignore[arg-type]
                if n == 2:
                    bad += overlaps(recs)
                    perf_runs += sum(1 for r in recs if is_perf(r) and r.get("started_at"))
    med = {n: statistics.median(v) for n, v in functional.items()}
    print(f"xdist --dist {args.dist}")
    print(f"whole run, wall   : -n 0 {statistics.median(walls[0]):.1f}s, -n 2 {statistics.median(walls[2]):.1f}s")
    print(f"functional part   : -n 0 {med[0]:.1f}s, -n 2 {med[2]:.1f}s, ratio {med[2] / med[0]:.2f} (goal <= 0.6)")
    print(f"perf tests at -n 2: {perf_runs} runs, {len(bad)} overlapped another selftest")
    for a, b in bad[:10]:
        print(f"  overlap: {a} with {b}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
