#!/usr/bin/env python3
"""The CI lab stage: ``kvmmm-lab`` (pytest_kvmmm/lab/) plus the checks only CI makes.

    ci/lab/lab.py [--hosts KINDS]   # build (cached), run every host kind, check, print the table

It boots the host kinds in two batches (at most three guests at once), runs the suite at the
``lab`` scale on this host and all of them, then the KVM parameter permutations on the x86
TDP host (module parameters set for real, one by a module reload), and fails when:

- an entry that must pass on a lab host (MUST_PASS) did not: a regression in the plugin, not
  only a broken lab;
- a host's facts are not its kind's (``HostKind.expect``: TDP MMU, FWB, page_idle, nVHE ...);
- a permutation did not run for real (each value must reach the selftest on x86-tdp);
- pytest itself broke (usage, internal error).

A host kind whose tools cannot be had here (no QEMU, no Debian packages of its arch) is
skipped with its reason; when none can be, the stage is SKIPPED and exits 0.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pytest_kvmmm.lab import boot, cli, run, table
from pytest_kvmmm.lab.hosts import HOST_KINDS
from pytest_kvmmm.lab.image import LabError, LabUnavailable

REPO = Path(__file__).resolve().parent.parent.parent
#: entry -> the lab hosts it must pass on (what the lab was built to prove; see the README's table).
MUST_PASS: Mapping[str, tuple[str, ...]] = {
    "kvm_page_table_test": ("lab-arm64-4k", "lab-arm64-16k", "lab-arm64-cmo", "lab-x86-tdp", "lab-x86-idle"),
    "dirty_log_perf_test": ("lab-arm64-4k", "lab-x86-tdp"),
    "dirty_log_test": ("lab-arm64-4k", "lab-arm64-cmo"),
    "dirty_log_page_splitting_test": ("lab-x86-tdp", "lab-x86-idle"),
    "nx_huge_pages_test": ("lab-x86-tdp",),  # under kvm.nx_huge_pages=Y (the "nx" permutation)
    "access_tracking_perf_test": ("lab-x86-idle",),
    # two vCPUs on the x86 hosts: 6.12 asserts CPUs * 3/4 > 0 before it reads -c
    "max_guest_memory_test": ("lab-x86-tdp", "lab-x86-idle"),
    "demand_paging_test": ("lab-arm64-cmo", "lab-x86-tdp"),
    "memslot_perf_test": ("lab-x86-tdp",),
    "memslot_modification_stress_test": ("lab-arm64-cmo", "lab-x86-tdp"),
    "pre_fault_memory_test": ("lab-x86-tdp", "lab-x86-idle"),
    "set_memory_region_test": ("lab-x86-tdp",),  # all 32764 memslots: 32-138 s under TCG
}
#: Boots: the x86 hosts and the CMO host with this host, then the two VHE arm64 hosts.
BATCHES = (("x86-tdp", "x86-idle", "arm64-cmo"), ("arm64-4k", "arm64-16k"))
#: The permutations, on x86-tdp: (label, -k, --kvm-param-values...). The first axis is the one
#: checked; nx_huge_pages_test needs the recovery settings its wrapper script makes; tdp_mmu is
#: read-only, so it is set by reloading kvm and kvm_amd.
PERMUTATIONS = (
    ("split", "test_dirty_log_page_splitting", ("kvm.eager_page_split=Y,N",)),
    ("nx", "test_nx_huge_pages", ("kvm.nx_huge_pages=Y", "kvm.nx_huge_pages_recovery_ratio=1",
                                  "kvm.nx_huge_pages_recovery_period_ms=100")),
    ("tdp-mmu", "test_kvm_page_table", ("kvm.tdp_mmu=N,Y",)),
)


def err(text: str) -> None:
    sys.stderr.write(f"[lab-ci] {text}\n")
    sys.stderr.flush()


def build(args: argparse.Namespace) -> list[str]:
    """Build each kind (cached); returns the kinds that could be built, saying why others not."""
    ok = []
    for kind in args.hosts:
        start = time.monotonic()
        try:
            cli.cmd_build(argparse.Namespace(**{**vars(args), "hosts": [kind]}))
            ok.append(kind)
            err(f"build {kind}: {time.monotonic() - start:.1f} s")
        except LabUnavailable as exc:
            err(f"SKIPPED host {kind}: cannot be built here: {exc}")
    return ok


def _decided_under(r: Mapping[str, Any], value: str) -> bool:
    """The case ran its selftest under the value, or its requirements, re-read after the value
    was set, skipped it saying the parameter is that value (page splitting under
    eager_page_split=N): either way the value was set for real, not refused as read-only."""
    if r.get("outcome") in ("passed", "failed") and r.get("returncode") is not None:
        return True
    return r.get("outcome") == "skipped" and f"it is {value}" in str(r.get("reason") or "")


def permutation_checks(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """Each permutation value was set for real on x86-tdp and decided its case, and the reload
    really changed tdp_mmu."""
    problems = []
    on = [r for r in records if r.get("host") == "lab-x86-tdp"]
    for _, _, axes in PERMUTATIONS:
        name, _, vals = axes[0].partition("=")
        for v in vals.split(","):
            pid = f"{name.split('.')[-1]}={v}"
            if not any(pid in str(r.get("nodeid")) and _decided_under(r, v) for r in on):
                problems.append(f"lab-x86-tdp: no case under {pid} was decided with the value set")
    shadow = [r for r in on if "tdp_mmu=N" in str(r.get("nodeid")) and r.get("outcome") == "passed"]
    if shadow and all((r.get("host_facts") or {}).get("tdp_mmu") != "no" for r in shadow):
        problems.append("lab-x86-tdp: cases under tdp_mmu=N passed, but the host facts never said tdp_mmu no")
    return problems


def must_pass_problems(records: Sequence[Mapping[str, Any]], hosts: Sequence[str]) -> list[str]:
    cells = table.entry_table(records)
    problems = []
    for entry, where in MUST_PASS.items():
        for host in where:
            if host not in hosts:
                continue
            cell = cells.get(entry, {}).get(host)
            if cell is None or cell.outcome != "passed":
                got = "not run" if cell is None else f"{cell.outcome}: {cell.reason[:200]}"
                problems.append(f"{entry} must pass on {host}, {got}")
    return problems


def export_problems(share: Path, hosts: Sequence[str]) -> list[str]:
    """The dashboards' files of every pytest run validate (JUnit against the Jenkins/GitLab model,
    KCIDB against kcidb-io's schema), and each suite run has a testcase, facts and SQUAD
    submission per host that ran in it."""
    import json
    import xml.etree.ElementTree as ET

    junits = sorted(share.glob("lab*.junit.xml"))
    if not junits:  # no host came up (said elsewhere), or the runs wrote no export
        return [f"no lab*.junit.xml in {share} from the hosts that ran ({', '.join(sorted(hosts))})"] if hosts else []
    import kcidb_io  # type: ignore[import-untyped]  # the [test] extra's, imported only with files to check
    import xmlschema

    schema = xmlschema.XMLSchema(str(REPO / "tests" / "schemas" / "junit-jenkins.xsd"))
    problems = []
    for junit in junits:
        errors = [str(e).splitlines()[0] for e in schema.iter_errors(str(junit))]
        if errors:
            problems.append(f"{junit.name} is not valid JUnit: {errors[0]}")
            continue
        label = junit.name.removesuffix(".junit.xml")
        kcidb = share / f"{label}.kcidb.json"
        try:
            kcidb_io.schema.LATEST.validate(json.loads(kcidb.read_text()))
        except Exception as exc:  # a missing file, bad JSON or a schema error: all say the export is wrong
            problems.append(f"{kcidb.name} is not valid KCIDB: {str(exc).splitlines()[0]}")
        if "-" in label.removeprefix("lab-"):
            continue  # a permutation run: one host, no per-host testcases
        by_host: dict[str, dict[str, str]] = {}
        for case in ET.parse(junit).getroot().iter("testcase"):
            props = {p.get("name", ""): p.get("value", "") for p in case.iter("property")}
            if props.get("kvm.host"):
                by_host.setdefault(props["kvm.host"], {}).update(props)
                if not str(case.get("classname", "")).startswith(props["kvm.host"].replace(".", "_") + "."):
                    problems.append(f"{junit.name}: a testcase of {props['kvm.host']} is not named after its host")
                    break
        for host in sorted(set(by_host) & set(hosts)):
            if "kvm.fact.arch" not in by_host[host]:
                problems.append(f"{junit.name}: {host}'s testcases carry no host facts")
            if not (share / f"{label}.squad" / host / "tests.json").is_file():
                problems.append(f"{label}.squad has no submission for {host}")
        if not any(k.startswith("kvm.metric.") for props in by_host.values() for k in props):
            problems.append(f"{junit.name}: no testcase carries a metric")
    return problems


def run_batches(args: argparse.Namespace, kinds: Sequence[str]) -> tuple[list[str], list[str]]:
    """Every batch: up, the suite (+ permutations when x86-tdp is up), down. Returns the hosts
    that ran and the problems of pytest itself."""
    share = boot.results_dir(args)
    assert share is not None
    run.remove_stale(share)
    ran, problems = [], []
    for n, batch in enumerate(b for b in ([k for k in b if k in kinds] for b in BATCHES) if b):
        lost: list[str] = []  # a host of the batch that did not come up fails the stage; the others run
        t0 = time.monotonic()
        try:
            states = boot.up(args, batch, lost)
        except LabUnavailable as exc:
            err(f"SKIPPED hosts {', '.join(batch)}: {exc}")
            continue
        except LabError as exc:  # this batch's hosts did not come up: the other batches still run
            problems.append(f"hosts {', '.join(batch)} did not come up: {exc}")
            continue
        finally:
            problems += [f"did not come up: {why}" for why in lost]
        err(f"batch {n + 1} ({', '.join(s.name for s in states)}) up in {time.monotonic() - t0:.1f} s")
        ran += [s.name for s in states]
        try:
            tx = boot.tx_args(states)
            runs = [(f"lab-{n + 1}", tx, run.default_pytest_args(), n == 0)]
            x86 = [s for s in states if s.kind == "x86-tdp"]
            for label, k, axes in PERMUTATIONS if x86 else ():
                values = [arg for axis in axes for arg in ("--kvm-param-values", axis)]
                runs.append((f"lab-{n + 1}-{label}", boot.tx_args(x86), ["--pyargs", "pytest_kvmmm.suite", "--kvm-scale",
                             "lab", "--kvm-backing-srcs", "anonymous", "-k", k, *values], False))  # fmt: skip
            for label, hosts_tx, pytest_args, local in runs:
                t0 = time.monotonic()
                status = run.run_pytest(run.pytest_argv(hosts_tx, pytest_args, share, label, local), REPO)
                err(f"{label}: pytest exited {status} after {time.monotonic() - t0:.1f} s")
                if status not in (0, 1):
                    problems.append(f"pytest ({label}) exited {status}: not a test verdict")
        finally:
            boot.down(boot.run_dir(args))
    return ran, problems


def main(argv: Sequence[str] | None = None) -> int:
    ap = cli.parser()
    args = ap.parse_args(["run", *(argv if argv is not None else sys.argv[1:])])
    for opt, default in (("jobs", 2), ("no_apt", False), ("force", False), ("kernel_tree", None), ("kernel_image", None)):
        setattr(args, opt, getattr(args, opt, default))
    start = time.monotonic()
    try:
        kinds = build(args)
        if not kinds:
            err("SKIPPED: no lab host kind can be built here")
            return 0
        built = time.monotonic() - start
        ran, problems = run_batches(args, kinds)
    except LabError as exc:
        err(f"FAILED: {exc}")
        return 1
    except KeyboardInterrupt:
        err("interrupted; lab hosts stopped")
        return 130
    if not ran and not problems:
        err("SKIPPED: no lab host could boot here")
        return 0
    share = boot.results_dir(args)
    assert share is not None
    records = run.read_all_results(share)
    lines = table.render(records)
    (share / "table.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    expect = {HOST_KINDS[k].hostname: dict(HOST_KINDS[k].expect) for k in kinds if HOST_KINDS[k].hostname in ran}
    problems += table.expectation_problems(records, expect)
    problems += must_pass_problems(records, ran)
    if "lab-x86-tdp" in ran:
        problems += permutation_checks(records)
    problems += export_problems(share, [*ran, *{str(r.get("host")) for r in records}])
    for p in problems:
        err(f"FAILED: {p}")
    err(f"builds (cached parts reused) {built:.1f} s; lab stage {time.monotonic() - start:.1f} s")
    return 1 if problems else 0


if __name__ == "__main__":
    # Ctrl-C and SIGTERM stop the hosts, also when started in the background (which ignores
    # SIGINT: stage.sh's `timeout --signal=INT` could not end it, nor a lab stage killed by CI).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, cli._interrupted)
    sys.exit(main())
