"""Generate a real Allure report of the smoke suite on this host and check what a KVM lab sees in it.

Three real runs of ``pytest --pyargs pytest_kvmmm.suite -m pagetable --kvm-scale smoke``:

1. this host, from a ``kvmmm-snapshot`` of it, page-table tests only, into ``results-1/``;
   ``report-1/`` is generated from it (the "previous report" whose history the next one shows);
2. this host again, the whole smoke suite, into ``results/``, with ``report-1/history`` copied in;
3. ``lab-arm64``, facts from a fake arm64 root (``tests/fakes.make_host_root`` with the KVM
   answers of ``tests/snapshots/kvm/arm64_ttrem2.json``), into the same ``results/``. Only the
   facts are arm64: the binaries still run here. Its snapshot claims 512 free 2 MiB hugepages
   that this host does not have, so its hugetlb cases really run and really fail with ENOMEM,
   which is what the "Host resource shortage" category must catch in real output.

Then ``allure generate`` (Allure 2, Java) and checks, on the report's own data and in headless
Chromium: every result is its own test (two hosts never fold into retries), labels,
parameters with the host, attachments, stage steps, history from run 1, the categories Allure
computed (cross-checked against ``allure_files.categorize``), and the environment naming both
hosts. And Allure 3 (npm ``allure@3``, Node.js, no Java) from the same results with the plugin's
``allurerc.mjs`` (ci/allure3_check.py). ``--allure 3`` checks Allure 3 alone (no Java needed),
``--allure 2`` Allure 2 alone. Screenshots go to the output directory. Exit status 1 when a
check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from allure3_check import check_allure3  # noqa: E402
from allure_lib import ARM_HOST, Checks, Context, browse, read_json, results_of, run, say  # noqa: E402

from fakes import make_host_root  # noqa: E402
from pytest_kvmmm.provision.cache import default_cache_root  # noqa: E402
from pytest_kvmmm.reports.allure_files import CATEGORIES, categorize, parse_properties  # noqa: E402

SUITE = ["--pyargs", "pytest_kvmmm.suite", "-m", "pagetable", "--kvm-scale", "smoke", "-p", "no:cacheprovider", "-q"]


def pytest_run(results: Path, snapshot: Path, extra: Sequence[str] = (), clean: bool = False) -> int:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO / "tests"), os.environ.get("PYTHONPATH")])))
    cmd = [sys.executable, "-m", "pytest", *SUITE, f"--alluredir={results}", f"--kvm-host-snapshot={snapshot}", *extra]
    if clean:
        cmd.append("--clean-alluredir")
    proc = run(cmd, cwd=REPO, env=env)
    tail = [ln for ln in proc.stdout.splitlines() if ln.strip()][-1:] or [proc.stderr.strip()[-300:]]
    say(f"  exit {proc.returncode}: {tail[0]}")
    return proc.returncode


def param(result: dict[str, Any], name: str) -> str | None:
    return next((p["value"] for p in result.get("parameters", []) if p["name"] == name), None)


def key(result: dict[str, Any]) -> str:
    """A test, whichever host ran it: the function and its case."""
    return f"{result['fullName']}[{param(result, 'kvm_case')}]"


def leaves(tree: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for child in tree.get("children", []):
        if "children" in child:
            yield from leaves(child)
        else:
            yield child


def check_allure2(ctx: Context, allure: Path) -> dict[str, Any]:
    """Allure 2 (Java) from the results: the report's own data, then its pages in headless Chromium."""
    check, out, timings = ctx.check, ctx.out, ctx.timings
    results_1, report_1, results, report = ctx.results_1, ctx.report_1, ctx.results, ctx.report
    both, live_host, host_name = ctx.both, ctx.live_host, ctx.host_name
    t = time.monotonic()
    proc = run([allure, "generate", results_1, "-o", report_1, "--clean"])
    check("allure generate report-1", proc.returncode == 0, proc.stderr.strip()[-300:])
    shutil.rmtree(results / "history", ignore_errors=True)
    shutil.copytree(report_1 / "history", results / "history")
    proc = run([allure, "generate", results, "-o", report, "--clean"])
    check("allure generate report (with report-1's history)", proc.returncode == 0, proc.stderr.strip()[-300:])
    timings["allure generate (two reports)"] = time.monotonic() - t
    version = run([allure, "--version"]).stdout.strip()

    cases = [read_json(p) for p in sorted((report / "data" / "test-cases").glob("*.json"))]
    shown = list(leaves(read_json(report / "data" / "suites.json")))
    check("every result is its own test in the report (none folded into retries)",
          len(shown) == len(both) and not any(c.get("retriesCount") for c in cases), f"{len(shown)} shown, {len(both)} results")
    suites = {c["name"] for c in read_json(report / "data" / "suites.json")["children"]}
    check("Suites tab: one parent suite per host", suites == {live_host.strip("'") if live_host else "", ARM_HOST}, str(sorted(suites)))
    epics = read_json(report / "data" / "behaviors.json")["children"]
    features = {f["name"] for e in epics for f in e.get("children", [])}
    check("Behaviors: epic KVM MMU, a feature per binary",
          [e["name"] for e in epics] == ["KVM MMU"] and {"kvm_page_table_test", "dirty_log_test", "dirty_log_perf_test"} <= features,
          f"{len(features)} features")

    def case_named(prefix: str, host: str) -> dict[str, Any] | None:
        return next((c for c in cases if c["name"].startswith(prefix) and c["name"].endswith(f" on {host}")), None)

    pt = case_named("kvm_page_table_test: anonymous,", host_name)
    check("page-table test titled from its case", pt is not None, pt["name"] if pt else "missing")
    if pt is not None:
        labels = {(lb["name"], lb["value"]) for lb in pt["labels"]}
        want = {("epic", "KVM MMU"), ("feature", "kvm_page_table_test"), ("story", "anonymous"), ("parentSuite", host_name),
                ("severity", "critical"), ("tag", "pagetable"), ("tag", "perf")}
        check("labels: epic, feature, story, parentSuite, severity, tags", want <= labels, str(sorted(want - labels)))
        params = {p["name"]: p["value"] for p in pt["parameters"]}
        check("parameters: host, scale, guest mode, backing, vCPUs, memory",
              params.get("host") == f"'{host_name}'" and params.get("scale") == "'smoke'" and params.get("vCPUs") == "2"
              and {"guest mode", "backing source", "memory per vCPU", "memory total"} <= set(params), str(params))
        stage = pt["testStage"]
        names = [a["name"] for a in stage["attachments"]]
        check("attachments: command, stdout, stderr, metrics.json", names == ["command", "stdout", "stderr", "metrics.json"], str(names))
        stdout = next((a for a in stage["attachments"] if a["name"] == "stdout"), None)
        text = (report / "data" / "attachments" / stdout["source"]).read_text() if stdout else ""
        check("stdout attachment is the binary's output", "KVM_CREATE_MAPPINGS: total execution time" in text)
        steps = [s["name"].split(":")[0] for run_step in stage["steps"] for s in run_step.get("steps", [])]
        check("steps: the three KVM_*_MAPPINGS stages", steps == ["KVM_CREATE_MAPPINGS", "KVM_UPDATE_MAPPINGS", "KVM_ADJUST_MAPPINGS"], str(steps))
        history = pt.get("extra", {}).get("history", {}).get("items", [])
        check("history: the rerun shows run 1's result", len(history) >= 1, f"{len(history)} earlier result(s)")
    arm_pt = case_named("kvm_page_table_test: anonymous,", ARM_HOST)
    check(f"{ARM_HOST}: the same test, separate, without history",
          arm_pt is not None and not arm_pt.get("extra", {}).get("history", {}).get("items"), arm_pt["name"] if arm_pt else "missing")
    check("every test has its host parameter", all(any(p["name"] == "host" for p in c["parameters"]) for c in cases))

    # categories: what Allure (Java regexes) decided == what allure_files.categorize predicts
    decided: Counter[str] = Counter()
    mismatches = []
    for c in cases:
        got = sorted(x["name"] for x in c.get("extra", {}).get("categories", []))
        if c["status"] == "passed":
            continue
        want = categorize(c["status"], c.get("statusMessage") or "") or (
            ["Product defects"] if c["status"] == "failed" else ["Test defects"] if c["status"] == "broken" else []
        )
        decided.update(got)
        if got != sorted(want):
            mismatches.append(f"{c['name']}: allure {got}, python {want}")
    check("categories: Allure's match equals categorize(), one per result", not mismatches, "; ".join(mismatches[:3]))
    say("  categories: " + ", ".join(f"{n} {k}" for n, k in decided.most_common()))
    check("categories: host resource shortage from real ENOMEM output", decided["Host resource shortage"] > 0)
    tab = {x["name"] for x in read_json(report / "data" / "categories.json")["children"]}
    ours = {c.name for c in CATEGORIES}
    check("Categories tab shows only ours (no unclassified failure)", tab <= ours, str(sorted(tab - ours)))

    env = {e["name"]: e["values"][0] for e in read_json(report / "widgets" / "environment.json")}
    check("environment names both hosts", env.get("hosts") == ", ".join(sorted([host_name, ARM_HOST])), str(env.get("hosts")))
    check("environment: this host's kernel, the arm64 host's TTRem",
          env.get(f"{host_name}.kernel") == platform.release() and env.get(f"{ARM_HOST}.ttrem") == "2"
          and env.get(f"{ARM_HOST}.arch") == "aarch64", "")
    props = parse_properties((results / "environment.properties").read_text(encoding="latin-1"))
    check("environment.properties: selftests build per host", all(props.get(f"{h}.selftests") for h in (host_name, ARM_HOST)))

    # --- in the browser ----------------------------------------------------------------------
    t = time.monotonic()
    # the failure page: preferably a page-table run that died (it shows the stage it never finished)
    failed_arm = sorted(
        (c for c in cases if c["status"] == "failed" and c["name"].endswith(f" on {ARM_HOST}")),
        key=lambda c: not c["name"].startswith("kvm_page_table_test"),
    )[:1]
    pages: list[dict[str, Any]] = [
        {"name": "overview", "screenshot": str(out / "overview.png")},
        {"name": "categories", "hash": "categories", "screenshot": str(out / "categories.png")},
        {"name": "behaviors", "hash": "behaviors", "click": ["KVM MMU"]},
        {"name": "suites", "hash": "suites"},
    ]
    if pt is not None:
        run_name = pt["testStage"]["steps"][0]["name"]
        pages += [
            {"name": "test", "hash": f"testresult/{pt['uid']}", "click": [run_name, "metrics.json"], "screenshot": str(out / "test-page.png"),
             "height": 1300},
            {"name": "history", "hash": f"testresult/{pt['uid']}/history", "screenshot": str(out / "test-history.png")},
        ]
    for failed in failed_arm:
        steps = [s["name"] for s in failed["testStage"]["steps"]]
        pages.append({"name": "failure", "hash": f"testresult/{failed['uid']}", "click": [*steps[:1], "failure reason"],
                      "screenshot": str(out / "test-failure.png"), "height": 1900})
    seen, proc = browse(ctx, report, pages, "")
    timings["headless chromium"] = time.monotonic() - t
    check("the report opens in headless Chromium", proc.returncode == 0, proc.stderr.strip()[-400:])
    if seen:
        check("overview: both hosts, environment, our categories",
              all(s in seen["overview"] for s in (host_name, ARM_HOST, "Environment", "hosts", "Host resource shortage")))
        check("categories page lists the categories", all(n in seen["categories"] for n in decided if n in ours), ", ".join(decided))
        check("behaviors page: KVM MMU and the binaries", all(s in seen["behaviors"] for s in ("KVM MMU", "kvm_page_table_test", "dirty_log_test")))
        check("suites page: a suite per host", host_name in seen["suites"] and ARM_HOST in seen["suites"])
    if seen and pt is not None:
        page = seen["test"]
        check("test page: title, host parameter, stages, attachments",
              all(s in page for s in (pt["name"], f"host: '{host_name}'", "KVM_CREATE_MAPPINGS", "KVM_ADJUST_MAPPINGS", "command", "stdout", "stderr", "metrics.json")))
        check("test page: metrics.json opened", '"KVM_CREATE_MAPPINGS":' in page.replace(" ", ""))
        check("history tab lists the earlier run", "passed" in seen["history"].lower() or "Passed" in seen["history"])
    if seen and failed_arm:
        page = seen["failure"]
        check("failure page: its category, the failure reason, the binary's assertion",
              all(s in page for s in ("Categories: ", "failure reason", "==== Test Assertion Failure ====")), failed_arm[0]["name"])
    return {"version": version, "report": str(report), "categories": dict(decided)}

def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "ci" / "artifacts" / "allure", help="artifacts directory (default: %(default)s)")
    parser.add_argument("--tools", type=Path, default=default_cache_root() / "tools" / "allure",
                        help="npm prefix with allure-commandline and playwright-core (default: %(default)s)")
    parser.add_argument("--allure", choices=("2", "3"), action="append",
                        help="the Allure to check, repeatable (default: both): 2 (allure-commandline, Java) in TOOLS, "
                             "3 (npm allure@3, Node.js only) in TOOLS/allure3")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    parser.add_argument("--reuse", action="store_true", help="reuse the results of an earlier check (only regenerate and check)")
    args = parser.parse_args(argv)
    t0 = time.monotonic()
    out: Path = args.out.resolve()
    versions = set(args.allure or ("2", "3"))
    allure = args.tools / "node_modules" / ".bin" / "allure"
    allure3 = args.tools / "allure3" / "node_modules" / ".bin" / "allure"
    playwright = args.tools / "node_modules" / "playwright-core"
    tools = [allure] * ("2" in versions) + [allure3] * ("3" in versions) + [playwright, Path(args.chromium)]
    for tool in tools:
        if not tool.exists():
            say(f"missing {tool}: run ci/allure_report.sh, which installs it")
            return 2
    check = Checks()
    results_1, report_1, results, report = out / "results-1", out / "report-1", out / "results", out / "report"
    snap_live, snap_arm = out / "snapshots" / "live", out / "snapshots" / ARM_HOST
    timings: dict[str, float] = {}

    # --- the runs ----------------------------------------------------------------------
    if not args.reuse:
        for d in (results_1, report_1, results, report, out / "snapshots"):
            shutil.rmtree(d, ignore_errors=True)
        (out / "snapshots").mkdir(parents=True)
        snapshot_tool = Path(sys.executable).with_name("kvmmm-snapshot")
        proc = run([snapshot_tool if snapshot_tool.exists() else "kvmmm-snapshot", snap_live])
        check("kvmmm-snapshot of this host", proc.returncode == 0, proc.stderr.strip()[-200:])
        make_host_root(
            snap_arm, machine="aarch64", release="6.16.0-lab", kvm="arm64_ttrem2", kvm_modules={}, hostname=ARM_HOST,
            cpus="0-7", pools={2048: {"nr": 512, "free": 512}, 1048576: {"nr": 0, "free": 0}},
            cpuinfo="processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics\n",
        )
        t = time.monotonic()
        rc = pytest_run(results_1, snap_live, ["-k", "test_kvm_page_table"], clean=True)
        check("run 1: this host, page-table tests", rc in (0, 1) and results_of(results_1), f"exit {rc}")
        timings["run 1 (page table, this host)"] = time.monotonic() - t
        t = time.monotonic()
        rc = pytest_run(results, snap_live, clean=True)
        check("run 2: this host, smoke suite", rc in (0, 1), f"exit {rc} (1: some test failed, e.g. dirty_ring)")
        timings["run 2 (smoke suite, this host)"] = time.monotonic() - t
        t = time.monotonic()
        rc = pytest_run(results, snap_arm)
        check(f"run 3: {ARM_HOST} snapshot, same directory", rc in (0, 1), f"exit {rc}")
        timings[f"run 3 (smoke suite, {ARM_HOST})"] = time.monotonic() - t

    # --- identities, before any report ---------------------------------------------------------
    first, both = results_of(results_1), results_of(results)
    hosts = {param(r, "host") for r in both}
    check("results of both hosts in one directory", hosts == {"'vm'", f"'{ARM_HOST}'"} or len(hosts) == 2, str(sorted(h or "" for h in hosts)))
    live_host = next((param(r, "host") for r in first), None)
    by_host: dict[str | None, dict[str, dict[str, Any]]] = {}
    for r in both:
        by_host.setdefault(param(r, "host"), {})[key(r)] = r
    live, arm = by_host.get(live_host, {}), by_host.get(f"'{ARM_HOST}'", {})
    check("the same tests on both hosts", set(live) == set(arm) and len(live) >= 20, f"{len(live)} and {len(arm)} tests")
    rerun_same = [key(r) for r in first if live.get(key(r), {}).get("historyId") == r["historyId"]]
    check("rerun on the same host: same historyId", len(rerun_same) == len(first) > 0, f"{len(rerun_same)}/{len(first)} page-table tests")
    shared = {r["historyId"] for r in live.values()} & {r["historyId"] for r in arm.values()}
    check("two hosts: no historyId shared", not shared, f"{len(shared)} shared")
    same_case_id = sum(live[k]["testCaseId"] == arm[k]["testCaseId"] for k in live if k in arm)
    check("testCaseId is the test function's, on both hosts (md5 of fullName)", same_case_id == len(live), f"{same_case_id} equal")

    host_name = (live_host or "'vm'").strip("'")
    ctx = Context(check, out, timings, args.chromium, playwright, results_1, report_1, results, report, both, live_host, host_name)
    summary: dict[str, Any] = {"chromium": run([args.chromium, "--version"]).stdout.strip(), "results": len(both)}
    if "2" in versions:
        summary["allure 2"] = check_allure2(ctx, allure)
    if "3" in versions:
        t = time.monotonic()
        summary["allure 3"] = check_allure3(ctx, allure3)
        timings["allure 3 (generate, data, headless chromium)"] = time.monotonic() - t
    total = time.monotonic() - t0
    summary.update({
        "timings_s": {k: round(v, 1) for k, v in timings.items()}, "total_s": round(total, 1),
        "failed_checks": check.failed, "screenshots": sorted(p.name for p in out.glob("*.png")),
    })
    (out / "check.json").write_text(json.dumps(summary, indent=2) + "\n")
    for name in ("allure 2", "allure 3"):
        if name in summary:
            say(f"{name}: {summary[name]['version']}; report: {summary[name]['report']}/index.html")
    say(f"{len(both)} results; screenshots: {', '.join(summary['screenshots'])}")
    say("timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()) + f"; total {total:.1f}s")
    say(f"{check.passed} checks passed, {len(check.failed)} failed" + (f": {', '.join(check.failed)}" if check.failed else ""))
    return 1 if check.failed else 0


if __name__ == "__main__":
    sys.exit(main())
