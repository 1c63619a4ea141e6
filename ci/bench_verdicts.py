#!/usr/bin/env python3
"""Do the before/after verdicts cry wolf, and do they catch a real difference? Measured on this host.

    python ci/bench_verdicts.py [--pairs 10] [--ab-runs 5] [--repeat N] [--threshold 10]

Every run is the real smoke page-table suite (anonymous, anonymous_thp, shmem: 3 tests x 3
metrics), with the default repeat count unless --repeat is given:

  A/A      --pairs + 1 runs of the same binaries, one after the other, each saved and run with
           --kvm-compare <the run before> --kvm-fail-regression THRESHOLD: --pairs comparisons.
           A false regression is a test that fails; the metrics with a "regressed" (or
           "improved") verdict are counted too. Goal: none.
  A/B hog  --ab-runs times: a run beside one busy-loop process per CPU (started and killed
           here), compared with the last quiet A run: the tests that fail (goal: all) and the
           metrics flagged "regressed".
  A/B 2M   --ab-runs times: anonymous_hugetlb_2mb against anonymous, KVM_CREATE_MAPPINGS
           (the work differs): the hugetlb run as before, the anonymous one as after; flagged
           "regressed" every time is the goal. Needs root for a 2 MiB hugetlb pool: the pool is
           grown for the run and restored in a finally; without root this part is skipped.

Prints each comparison's verdicts and a summary; --json FILE keeps the numbers.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from pytest_kvmmm.baseline import store
from pytest_kvmmm.baseline.compare import Comparison, compare
from pytest_kvmmm.baseline.stats import Verdict
from pytest_kvmmm.baseline.table import terminal_lines
from pytest_kvmmm.pytest.baseline import DEFAULT_REPEAT
from pytest_kvmmm.reports.results import read_results

SUITE = ("--pyargs", "pytest_kvmmm.suite", "-m", "pagetable", "--kvm-scale", "smoke", "-p", "no:cacheprovider", "-q")
PAGE_TABLE = "kvm_page_table and (anonymous or shmem) and not hugetlb"
HUGETLB = "kvm_page_table and anonymous_hugetlb_2mb"
NR_HUGEPAGES = Path("/proc/sys/vm/nr_hugepages")
POOL_PAGES = 64  # 64M of guest memory at smoke scale is 32 pages; the rest is slack


def pytest_run(directory: Path, select: str, *args: str, repeat: int | None) -> tuple[float, list[dict[str, object]]]:
    """One pytest run of the suite; its wall time and its --kvm-results records."""
    results = directory / "results.jsonl"
    argv = [sys.executable, "-m", "pytest", *SUITE, "-k", select, f"--kvm-results={results}", *args]
    if repeat is not None:
        argv += ["--kvm-repeat", str(repeat)]
    env = {**os.environ, store.BASELINES_ENV: str(directory)}
    t0 = time.monotonic()
    subprocess.run(argv, cwd=directory, env=env, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.monotonic() - t0
    records = read_results(results) if results.exists() else []
    return wall, records


def saved(directory: Path, name: str) -> store.Baseline:
    return store.load(store.find(name, directory))


def verdicts(comparison: Comparison) -> dict[str, list[str]]:
    """``{"regressed": ["anonymous KVM_CREATE_MAPPINGS -53.1%", ...], "improved": [...]}``."""
    out: dict[str, list[str]] = {"regressed": [], "improved": []}
    for row in comparison.rows:
        c = row.change
        if c.verdict in (Verdict.REGRESSED, Verdict.IMPROVED):
            case = row.nodeid.rsplit("[", 1)[-1].rstrip("]")
            out[c.verdict.value].append(f"{case} {c.metric} {c.change:+.1f}%")
    return out


@contextmanager
def cpu_hogs() -> Iterator[None]:
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 1)]
    try:
        time.sleep(0.5)
        yield
    finally:
        for hog in hogs:
            hog.kill()
        for hog in hogs:
            hog.wait()


@contextmanager
def hugetlb_pool(pages: int) -> Iterator[bool]:
    """Grow the default (2 MiB on x86) hugetlb pool to ``pages`` free pages; restore it after. Root only."""
    if os.geteuid() != 0:
        yield False
        return
    before = int(NR_HUGEPAGES.read_text())
    try:
        NR_HUGEPAGES.write_text(str(before + pages))
        yield int(NR_HUGEPAGES.read_text()) >= before + pages
    finally:
        NR_HUGEPAGES.write_text(str(before))


def as_anonymous(run: store.Baseline) -> store.Baseline:
    """The hugetlb run with its test renamed to the anonymous case, so the two compare."""
    hosts = {
        host: dataclasses.replace(h, tests={n.replace("anonymous_hugetlb_2mb", "anonymous"): t for n, t in h.tests.items()})
        for host, h in run.hosts.items()
    }
    return dataclasses.replace(run, hosts=hosts)


def only_create(run: store.Baseline, case: str) -> store.Baseline:
    hosts = {
        host: dataclasses.replace(h, tests={
            n: dataclasses.replace(t, samples={"KVM_CREATE_MAPPINGS": t.samples.get("KVM_CREATE_MAPPINGS", ())})
            for n, t in h.tests.items() if n.endswith(f"[{case}]")
        })
        for host, h in run.hosts.items()
    }
    return dataclasses.replace(run, hosts=hosts)


def failed(records: Sequence[dict[str, object]]) -> list[str]:
    return [str(r["nodeid"]).rsplit("[", 1)[-1].rstrip("]") for r in records if r.get("outcome") == "failed"]


@dataclasses.dataclass
class Outcome:
    """One comparison: the tests --kvm-fail-regression failed, and the metrics with a verdict."""

    tests: int
    failed: list[str]
    metrics: int
    regressed: list[str]
    improved: list[str]
    wall_s: float

    @classmethod
    def of(cls, records: Sequence[dict[str, object]], comparison: Comparison, wall: float) -> Outcome:
        v = verdicts(comparison)
        return cls(len(records), failed(records), len(comparison.rows), v["regressed"], v["improved"], round(wall, 1))

    def line(self) -> str:
        return (f"failed {len(self.failed)} of {self.tests} tests {self.failed or ''}; regressed {len(self.regressed)} of "
                f"{self.metrics} metrics {self.regressed or ''}; improved {self.improved or 'none'} ({self.wall_s:.0f}s)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=10, help="A/A comparisons (default 10)")
    ap.add_argument("--ab-runs", type=int, default=5, help="A/B comparisons of each kind (default 5)")
    ap.add_argument("--repeat", type=int, default=None, help=f"--kvm-repeat (default: the plugin's default at smoke scale, {DEFAULT_REPEAT['smoke']})")
    ap.add_argument("--threshold", type=float, default=10.0, help="--kvm-fail-regression (default 10)")
    ap.add_argument("--json", type=Path, help="write the numbers to this file")
    ap.add_argument("--show", action="store_true", help="print every comparison's table")
    args = ap.parse_args()
    fail = ("--kvm-fail-regression", f"{args.threshold:g}")
    repeat = args.repeat or DEFAULT_REPEAT["smoke"]
    started = time.monotonic()
    aa: list[Outcome] = []
    hog: list[Outcome] = []
    huge: list[dict[str, object]] = []

    def show(c: Comparison) -> None:
        if args.show:
            print("\n".join("    " + line for line in terminal_lines(c, legend=False)))

    with tempfile.TemporaryDirectory(prefix="bench-verdicts-") as tmp:
        d = Path(tmp)
        print(f"A/A: {args.pairs + 1} runs, each compared with the one before; repeat {repeat}, "
              f"threshold {args.threshold:g}%; load average {os.getloadavg()[0]:.2f}")
        pytest_run(d, PAGE_TABLE, "--kvm-save", "a0", repeat=args.repeat)
        for i in range(1, args.pairs + 1):
            wall, recs = pytest_run(d, PAGE_TABLE, "--kvm-save", f"a{i}", "--kvm-compare", f"a{i - 1}", *fail,
                                    repeat=args.repeat)
            c = compare(saved(d, f"a{i - 1}"), saved(d, f"a{i}"))
            aa.append(Outcome.of(recs, c, wall))
            print(f"  a{i - 1} -> a{i}: {aa[-1].line()}")
            show(c)
        quiet = f"a{args.pairs}"

        print(f"A/B, a busy loop per CPU ({os.cpu_count()}) beside the after run: {args.ab_runs} comparisons")
        for i in range(args.ab_runs):
            before = quiet
            with cpu_hogs():
                wall, recs = pytest_run(d, PAGE_TABLE, "--kvm-save", f"hog{i}", "--kvm-compare", before, *fail,
                                        repeat=args.repeat)
            c = compare(saved(d, before), saved(d, f"hog{i}"))
            hog.append(Outcome.of(recs, c, wall))
            print(f"  run {i + 1}: {hog[-1].line()}")
            show(c)

        with hugetlb_pool(POOL_PAGES) as ready:
            if not ready:
                print(f"A/B anonymous_hugetlb_2mb vs anonymous: skipped (needs root and {POOL_PAGES} free 2 MiB pages)")
            else:
                print(f"A/B anonymous_hugetlb_2mb (before) vs anonymous (after), KVM_CREATE_MAPPINGS: {args.ab_runs} comparisons")
            for i in range(args.ab_runs if ready else 0):
                wall, recs = pytest_run(d, HUGETLB, "--kvm-save", f"huge{i}", repeat=args.repeat)
                c = compare(only_create(as_anonymous(saved(d, f"huge{i}")), "anonymous"),
                            only_create(saved(d, quiet), "anonymous"))
                if not c.rows:
                    print(f"  run {i + 1}: no comparison ({recs and recs[0].get('reason')})")
                    huge.append({"verdict": None, "reason": recs and recs[0].get("reason")})
                    continue
                m = c.rows[0].change
                huge.append({"verdict": m.verdict.value, "change": round(m.change, 2), "before": m.before.median,
                             "after": m.after.median, "wall_s": round(wall, 1)})
                print(f"  run {i + 1}: {m.before.median:.4f}s -> {m.after.median:.4f}s {m.change:+.1f}% {m.verdict.value}")
                show(c)
    wall_s = time.monotonic() - started

    print("\nsummary")
    print(f"  A/A: {sum(len(o.failed) for o in aa)} tests failed as regressions in {sum(o.tests for o in aa)} test "
          f"comparisons ({sum(1 for o in aa if o.failed)} of {len(aa)} comparisons had one); metrics 'regressed' "
          f"{sum(len(o.regressed) for o in aa)} and 'improved' {sum(len(o.improved) for o in aa)} of {sum(o.metrics for o in aa)}")
    print(f"  A/B hog: {sum(len(o.failed) for o in hog)} of {sum(o.tests for o in hog)} tests failed "
          f"({sum(1 for o in hog if o.failed and len(o.failed) == o.tests)} of {len(hog)} runs with every test failed); "
          f"metrics 'regressed' {sum(len(o.regressed) for o in hog)} of {sum(o.metrics for o in hog)}")
    if huge:
        print(f"  A/B 2M vs anonymous KVM_CREATE_MAPPINGS: 'regressed' {sum(1 for h in huge if h['verdict'] == 'regressed')} "
              f"of {len(huge)}")
    print(f"  wall time {wall_s:.0f}s; load average now {os.getloadavg()[0]:.2f}")
    if args.json:
        report = {"repeat": repeat, "threshold": args.threshold, "wall_s": round(wall_s, 1),
                  "aa": [dataclasses.asdict(o) for o in aa], "hog": [dataclasses.asdict(o) for o in hog], "hugetlb": huge}
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
