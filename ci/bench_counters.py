#!/usr/bin/env python3
"""What does --kvm-counters cost, how much do counts move between identical runs, and do they see
larger pages?

    .venv/bin/python ci/bench_counters.py [--rounds 6] [--scale smoke] [-k EXPR] [--keep DIR]
                                          [--counters SETS [--counters SETS2 ...]]
    .venv/bin/python ci/bench_counters.py --analyse DIR     # the numbers again, from a --keep run

Round by round, case by case (by default the smoke page-table, dirty-log-perf and
demand-paging cases), it runs each case without ``--kvm-counters`` and with each ``--counters``
selection, one pytest run per case and arm, back to back, the order of the arms rotating from
round to round: on a host whose load moves every few seconds, only arms that run seconds apart
see the same host. It prints, all from that one run:

* overhead, per counting arm: the median over rounds of the summed wall time of every case
  that passed in all arms, counting over not; the median and quartiles of every case's own
  ratio (each pair ran back to back); the same for the binaries' own stage times;
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
import json
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
#: Counts of KVM's own events (the rest are the host's: tlb:tlb_flush follows the run's length).
KVM_OWN = ("kvm:", "kvmmmu:", "vm:")
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


def run_arm(scale: str, target: str, results: Path, counting: str | None) -> list[dict[str, Any]]:
    """One pytest run of ``target`` (a case's node id, or ``-k`` expression for the suite)."""
    select = [target] if "::" in target else ["--pyargs", "pytest_kvmmm.suite", "-k", target]
    argv = [sys.executable, "-m", "pytest", *select, "--kvm-scale", scale,
            f"--kvm-results={results}", "--kvm-kernel-log", "report", "-q", "-p", "no:cacheprovider"]
    if counting:
        argv.append(f"--kvm-counters={counting}")
    subprocess.run(argv, check=False, stdout=subprocess.DEVNULL, cwd=tempfile.gettempdir())
    return read_results(results) if results.exists() else []


def case_ids(scale: str, k: str) -> list[str]:
    """The selected cases as node ids that pytest takes from any directory (file path::name)."""
    import pytest_kvmmm.suite as suite

    where = Path(suite.__file__).parent
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "--pyargs", "pytest_kvmmm.suite", "-k", k, "--kvm-scale", scale, "--co", "-q",
         "-p", "no:cacheprovider"], capture_output=True, text=True, cwd=tempfile.gettempdir(), check=False,
    ).stdout
    # ids are relative to whatever rootdir pytest chose: keep the file's name, under the suite
    return [str(where / Path(line.strip()).name) for line in out.splitlines() if "::" in line]


def stage_seconds(rec: Mapping[str, Any]) -> float:
    return float(sum(v for k, v in (rec.get("metrics") or {}).items() if metric_unit(k) == "s" and "_total" not in k))


def overhead(rounds: Sequence[tuple[list[dict[str, Any]], list[dict[str, Any]]]], label: str = "") -> list[str]:
    passed = None
    for with_c, without in rounds:
        ids = {r["nodeid"] for r in with_c if r["status"] == "passed"} & {r["nodeid"] for r in without if r["status"] == "passed"}
        passed = ids if passed is None else passed & ids
    assert passed is not None
    if not passed:
        return [f"{label}no case passed in every round of both arms"]
    wall, stages, pairs = [], [], []
    for with_c, without in rounds:
        w = {r["nodeid"]: r for r in with_c if r["nodeid"] in passed}
        wo = {r["nodeid"]: r for r in without if r["nodeid"] in passed}
        wall.append(sum(r["duration_s"] for r in w.values()) / sum(r["duration_s"] for r in wo.values()))
        stages.append(sum(map(stage_seconds, w.values())) / sum(map(stage_seconds, wo.values())))
        pairs += [w[n]["duration_s"] / wo[n]["duration_s"] for n in passed if wo[n]["duration_s"] > 0]
    q = statistics.quantiles(pairs, n=4) if len(pairs) > 1 else [pairs[0]] * 3
    return [
        f"{label}cases passed in every round of both arms: {len(passed)}",
        f"{label}wall time, counting / not: median {statistics.median(wall):.3f} (rounds: {', '.join(f'{x:.3f}' for x in wall)})",
        f"{label}each case's back-to-back pair: median {statistics.median(pairs):.3f}, quartiles {q[0]:.3f}..{q[2]:.3f} "
        f"({len(pairs)} pairs)",
        f"{label}stage times, counting / not: median {statistics.median(stages):.3f} (rounds: {', '.join(f'{x:.3f}' for x in stages)})",
    ]


def per_case(rounds: Sequence[tuple[list[dict[str, Any]], list[dict[str, Any]]]], label: str = "") -> list[str]:
    """Each case: events counted per run, the median of its back-to-back time differences, and
    that difference per counted event (what one tracepoint hit costs, if the hits are the cost)."""
    diffs: dict[str, list[float]] = {}
    ratios: dict[str, list[float]] = {}
    hits: dict[str, list[float]] = {}
    for with_c, without in rounds:
        wo = {r["nodeid"]: r for r in without if r["status"] == "passed"}
        for r in with_c:
            other = wo.get(r["nodeid"])
            if r["status"] != "passed" or other is None or not isinstance(r.get("counters"), dict):
                continue
            diffs.setdefault(r["nodeid"], []).append(r["duration_s"] - other["duration_s"])
            ratios.setdefault(r["nodeid"], []).append(r["duration_s"] / other["duration_s"])
            hits.setdefault(r["nodeid"], []).append(sum((r["counters"].get("total") or {}).values()))
    lines = [f"{label}per case: hits per run, median time counting - not, per hit; median ratio"]
    for nodeid in sorted(diffs):
        d, n = statistics.median(diffs[nodeid]), statistics.median(hits[nodeid])
        per_hit = f"{d / n * 1e9:,.0f} ns/hit" if n else "-"
        lines.append(f"{label}  {nodeid.rsplit('::', 1)[-1]}: {n:,.0f} hits, {d * 1000:+,.0f} ms, {per_hit}; "
                     f"x{statistics.median(ratios[nodeid]):.3f} ({len(diffs[nodeid])} pairs)")
    return lines


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
    lines = []
    for kind, part in (("KVM's own events", [x for x in spreads if x[2].startswith(KVM_OWN)]),
                       ("host events", [x for x in spreads if not x[2].startswith(KVM_OWN)])):
        if not part:
            continue
        pcts = [s for s, _, _ in part]
        lines += [
            f"A/A spread of whole-run counts, {kind} ((max-min)/median, {len(part)} test x event series, {len(runs)} runs "
            f"each): median {statistics.median(pcts):.3f}%, 90th pct {pcts[int(0.9 * (len(pcts) - 1))]:.3f}%, max {pcts[-1]:.3f}%",
            "  widest: " + "; ".join(f"{t} {e} {s:.2f}%" for s, t, e in part[-4:][::-1]),
        ]
    lines.append(f"A/A count verdicts (first {half} rounds vs last {len(runs) - half}): {len(verdicts)}")
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


def arm_file(where: Path, i: int, arm: int) -> Path:
    """``--keep``'s names: ``-False`` without counting, ``-True`` the first counting arm, ``-armN`` others."""
    return where / f"{i}-{'False' if arm == 0 else 'True' if arm == 1 else f'arm{arm}'}.jsonl"


def measure(n: int, scale: str, k: str, keep: Path | None, sets: Sequence[str]) -> list[list[list[dict[str, Any]]]]:
    """rounds[i][arm]: the records of every case in round i; arm 0 counts nothing, arm j counts sets[j-1]."""
    arms: list[str | None] = [None, *sets]
    cases = case_ids(scale, k)
    if not cases:
        sys.exit(f"bench_counters: no case matches -k {k!r}")
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        where = keep or Path(tmp)
        where.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            got: list[list[dict[str, Any]]] = [[] for _ in arms]
            for c, case in enumerate(cases):
                shift = (i + c) % len(arms)
                for a in [*range(shift, len(arms)), *range(shift)]:
                    got[a] += run_arm(scale, case, Path(tmp) / f"one-{a}.jsonl", arms[a])
            for a, recs in enumerate(got):
                arm_file(where, i, a).write_text("".join(json.dumps(r) + "\n" for r in recs))
            rounds.append(got)
            print(f"round {i + 1}/{n} done", file=sys.stderr)
    return rounds


def load(where: Path) -> list[list[list[dict[str, Any]]]]:
    rounds = []
    for i in range(10_000):
        if not arm_file(where, i, 0).exists():
            break
        arms = []
        for a in range(10_000):
            f = arm_file(where, i, a)
            if not f.exists():
                break
            arms.append(read_results(f))
        rounds.append(arms)
    return rounds


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--scale", default="smoke")
    ap.add_argument("-k", default=DEFAULT_K, help=f"which suite cases (default: {DEFAULT_K!r}; '' for all)")
    ap.add_argument("--counters", action="append", help="a counting arm's selection (repeatable; default: default)")
    ap.add_argument("--keep", metavar="DIR", type=Path, help="keep the rounds' --kvm-results files in DIR")
    ap.add_argument("--analyse", metavar="DIR", type=Path, help="run nothing: analyse the files a --keep run left")
    args = ap.parse_args()
    sets = args.counters or ["default"]
    if args.analyse:
        rounds = load(args.analyse)
    else:
        ensure_tracefs()
        rounds = measure(args.rounds, args.scale, args.k, args.keep, sets)
    counted = [arms[1] for arms in rounds]
    if not any(isinstance(r.get("counters"), dict) for recs in counted for r in recs):
        sys.exit("bench_counters: the counting arm counted nothing (see pytest's header with --kvm-counters)")
    lines = []
    for a in range(1, len(rounds[0])):
        label = f"[{sets[a - 1] if a - 1 < len(sets) else f'arm{a}'}] "
        lines += overhead([(arms[a], arms[0]) for arms in rounds], label)
        lines += per_case([(arms[a], arms[0]) for arms in rounds], label)
    by_test = series_by_test(counted)
    print("\n".join([*lines, "", *aa_spread(by_test, counted), *thp_pairs(by_test, times_by_test(counted))]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
