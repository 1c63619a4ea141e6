#!/usr/bin/env python3
"""What does --kvm-counters cost, how much do counts move between identical runs, and do they see
larger pages?

    .venv/bin/python ci/bench_counters.py [--rounds 6] [--scale smoke] [-k EXPR] [--keep DIR]
    .venv/bin/python ci/bench_counters.py --analyse DIR     # the numbers again, from a --keep run

Round by round it runs the smoke suite's cases (by default the page-table, dirty-log-perf and
demand-paging ones) twice, with and without ``--kvm-counters`` (the order alternates), and
prints, all from that one run:

* overhead: per round, the summed wall time of every case that passed in both arms, with
  counting over without; and the same ratio for the binaries' own stage times;
* A/A spread of the counts over the counting rounds: (max - min) / median per test and event
  (events counting 100 or more), and the count verdicts between the first and the second half
  of the rounds (there should be none);
* ``anonymous`` against ``anonymous_thp`` (same binary, same arguments otherwise): the count
  verdicts, and a cover-letter table with times and counts side by side.

tracefs: when it is not mounted and this runs as root, the script runs itself again in a
private mount namespace (``unshare --mount``) and mounts tracefs there, so the host is left as
it was. The kernel log is watched in report mode (other users' WARNs must not fail a round).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pytest_kvmmm.baseline.counts import CountVerdict, count_changes
from pytest_kvmmm.coordination.host_changes import mount_fs
from pytest_kvmmm.engine.counters.model import Counters, split_series
from pytest_kvmmm.engine.counters.sets import FAULT_EVENTS
from pytest_kvmmm.engine.counters.tracefs import TRACEFS_DIRS, find_tracefs
from pytest_kvmmm.engine.metrics import metric_unit
from pytest_kvmmm.reports.results import read_results

INNER = "KVMMM_BENCH_COUNTERS_NS"
DEFAULT_K = "kvm_page_table or dirty_log_perf or demand_paging"

Series = dict[str, list[float]]


def ensure_tracefs() -> None:
    """tracefs for this process and its children, without touching the host's mounts."""
    if find_tracefs(Path("/")).path is not None:
        return
    if os.environ.get(INNER):
        why = mount_fs("tracefs", Path(TRACEFS_DIRS[0]))
        if why:
            sys.exit(f"bench_counters: {why}")
        return
    unshare = shutil.which("unshare")
    if os.geteuid() != 0 or unshare is None:
        sys.exit("bench_counters: tracefs is not mounted; run as root (with util-linux's unshare) or mount it")
    os.environ[INNER] = "1"
    os.execv(unshare, [unshare, "--mount", "--propagation", "private", sys.executable, *sys.argv])


def run_arm(scale: str, k: str, results: Path, counting: str | None) -> list[dict[str, Any]]:
    argv = [sys.executable, "-m", "pytest", "--pyargs", "pytest_kvmmm.suite", "-k", k, "--kvm-scale", scale,
            "--kvm-results", str(results), "--kvm-kernel-log", "report", "-q", "-p", "no:cacheprovider"]
    if counting:
        argv.append(f"--kvm-counters={counting}")
    subprocess.run(argv, check=False, stdout=subprocess.DEVNULL, cwd=tempfile.gettempdir())
    return read_results(results)


def stage_seconds(rec: Mapping[str, Any]) -> float:
    return sum(v for k, v in (rec.get("metrics") or {}).items() if metric_unit(k) == "s" and "_total" not in k)


def overhead(rounds: Sequence[tuple[list[dict[str, Any]], list[dict[str, Any]]]]) -> list[str]:
    passed = None
    for with_c, without in rounds:
        ids = {r["nodeid"] for r in with_c if r["status"] == "passed"} & {r["nodeid"] for r in without if r["status"] == "passed"}
        passed = ids if passed is None else passed & ids
    assert passed is not None
    wall, stages = [], []
    for with_c, without in rounds:
        w = {r["nodeid"]: r for r in with_c if r["nodeid"] in passed}
        wo = {r["nodeid"]: r for r in without if r["nodeid"] in passed}
        wall.append(sum(r["duration_s"] for r in w.values()) / sum(r["duration_s"] for r in wo.values()))
        stages.append(sum(map(stage_seconds, w.values())) / sum(map(stage_seconds, wo.values())))
    return [
        f"cases passed in every round of both arms: {len(passed)}",
        f"wall time, counting / not: median {statistics.median(wall):.3f} (rounds: {', '.join(f'{x:.3f}' for x in wall)})",
        f"stage times, counting / not: median {statistics.median(stages):.3f} (rounds: {', '.join(f'{x:.3f}' for x in stages)})",
    ]


def series_by_test(runs: Sequence[list[dict[str, Any]]]) -> dict[str, Series]:
    out: dict[str, Series] = {}
    for recs in runs:
        for rec in recs:
            if rec["status"] == "passed" and isinstance(rec.get("counters"), dict):
                for key, values in Counters.from_json(rec["counters"]).series().items():
                    out.setdefault(rec["nodeid"], {}).setdefault(key, []).extend(values)
    return out


def aa_spread(by_test: Mapping[str, Series], runs: Sequence[list[dict[str, Any]]]) -> list[str]:
    spreads = []
    for nodeid, series in by_test.items():
        for key, values in series.items():
            med = statistics.median(values)
            if split_series(key)[0] is None and med >= 100 and len(values) > 1:
                spreads.append(((max(values) - min(values)) / med * 100, nodeid.rsplit("::", 1)[-1], key))
    spreads.sort()
    half = len(runs) // 2
    first, second = series_by_test(runs[:half]), series_by_test(runs[half:])
    verdicts = [
        (n, c.name, c.verdict.value, c.change) for n in first if n in second
        for c in count_changes(first[n], second[n]) if c.verdict in (CountVerdict.FEWER, CountVerdict.MORE)
    ]
    pcts = [s for s, _, _ in spreads]
    lines = [
        f"A/A spread of whole-run counts ((max-min)/median, {len(spreads)} test x event series, {len(runs)} runs each): "
        f"median {statistics.median(pcts):.3f}%, 90th pct {pcts[int(0.9 * (len(pcts) - 1))]:.3f}%, max {pcts[-1]:.3f}%",
        "widest: " + "; ".join(f"{t} {e} {s:.2f}%" for s, t, e in spreads[-5:][::-1]),
        f"A/A count verdicts (first {half} rounds vs last {len(runs) - half}): {len(verdicts)}",
    ]
    lines += [f"  {n.rsplit('::', 1)[-1]} {name}: {verdict} {change:+.2f}%" for n, name, verdict, change in verdicts[:10]]
    return lines


def thp_pairs(by_test: Mapping[str, Series], times: Mapping[str, Series]) -> list[str]:
    lines: list[str] = []
    for nodeid in sorted(by_test):
        if "[anonymous]" not in nodeid:
            continue
        other = nodeid.replace("[anonymous]", "[anonymous_thp]")
        if other not in by_test:
            continue
        rows = count_changes(by_test[nodeid], by_test[other])
        fault = next((e for e in FAULT_EVENTS if by_test[nodeid].get(e) and any(by_test[nodeid][e])), None)
        lines += ["", f"{nodeid.rsplit('::', 1)[-1]} -> [anonymous_thp]:"]
        lines += [f"  {c.name}: {c.before.median:,.0f} -> {c.after.median:,.0f} {c.change:+.1f}% {c.verdict.value}"
                  for c in rows if c.verdict is not CountVerdict.NO_CHANGE][:14]
        if fault:
            lines += cover_letter(nodeid, other, fault, by_test, times)
    return lines


def cover_letter(before: str, after: str, fault: str, counts: Mapping[str, Series], times: Mapping[str, Series]) -> list[str]:
    stages = [k for k in times.get(before, {}) if metric_unit(k) == "s" and "/" not in k and k in times.get(after, {})]
    med = statistics.median
    out = ["", f"| stage | anonymous | anonymous_thp | time change | {fault} anonymous | anonymous_thp | count change |",
           "|:--|--:|--:|--:|--:|--:|--:|"]
    for stage in stages:
        tb, ta = med(times[before][stage]), med(times[after][stage])
        key = f"{stage}/{fault}"
        cb, ca = counts[before].get(key), counts[after].get(key)
        count_cells = f"{med(cb):,.0f} | {med(ca):,.0f} | {(med(ca) - med(cb)) / med(cb) * 100:+.1f}%" if cb and ca and med(cb) else "- | - | -"
        out.append(f"| {stage} | {tb:.4f}s | {ta:.4f}s | {(ta - tb) / tb * 100:+.1f}% | {count_cells} |")
    return out


def times_by_test(runs: Sequence[list[dict[str, Any]]]) -> dict[str, Series]:
    out: dict[str, Series] = {}
    for recs in runs:
        for rec in recs:
            if rec["status"] == "passed":
                for k, v in (rec.get("samples") or {}).items():
                    out.setdefault(rec["nodeid"], {}).setdefault(k, []).extend(v)
    return out


def measure(n: int, scale: str, k: str, keep: Path | None, sets: str) -> list[tuple[list[dict[str, Any]], list[dict[str, Any]]]]:
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        where = keep or Path(tmp)
        where.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            order = (True, False) if i % 2 == 0 else (False, True)
            got = {c: run_arm(scale, k, where / f"{i}-{c}.jsonl", sets if c else None) for c in order}
            rounds.append((got[True], got[False]))
            print(f"round {i + 1}/{n} done", file=sys.stderr)
    return rounds


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--scale", default="smoke")
    ap.add_argument("-k", default=DEFAULT_K, help=f"which suite cases (default: {DEFAULT_K!r}; '' for all)")
    ap.add_argument("--counters", default="default", help="what the counting arm counts (default: default)")
    ap.add_argument("--keep", metavar="DIR", type=Path, help="keep the rounds' --kvm-results files in DIR")
    ap.add_argument("--analyse", metavar="DIR", type=Path, help="run nothing: analyse the files a --keep run left")
    args = ap.parse_args()
    if args.analyse:
        rounds = [(read_results(t), read_results(t.with_name(t.name.replace("-True", "-False"))))
                  for t in sorted(args.analyse.glob("*-True.jsonl"))]
    else:
        ensure_tracefs()
        rounds = measure(args.rounds, args.scale, args.k, args.keep, args.counters)
    counted = [w for w, _ in rounds]
    if not any(isinstance(r.get("counters"), dict) for recs in counted for r in recs):
        sys.exit("bench_counters: the counting arm counted nothing (see pytest's header with --kvm-counters)")
    by_test = series_by_test(counted)
    print("\n".join([*overhead(rounds), "", *aa_spread(by_test, counted), *thp_pairs(by_test, times_by_test(counted))]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
