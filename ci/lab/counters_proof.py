#!/usr/bin/env python3
"""The lab check of ``--kvm-counters`` on arm64: the CMO host against a ``max`` host.

    ci/lab/counters_proof.py [--out DIR] [--repeat N]        # boot each host in turn, run, check
    ci/lab/counters_proof.py --analyse CMO.jsonl MAX.jsonl     # check and print two results files

Runs ``kvm_page_table_test`` (``anonymous`` and ``anonymous_thp``, guest mode ``p40v48_4k``, the
``lab`` scale: 16M, one vCPU) with ``--kvm-counters=default,tlb,vm`` on ``arm64-cmo`` (cortex-a72:
nVHE, no FWB, no IDC/DIC, no hardware access flag) and then on ``arm64-4k`` (``-cpu max``:
VHE, FWB, IDC, hardware access flag and dirty state, no DIC), one host at a time. What the facts
say, and what this checks:

- **The fault classes appear on both**, per stage: ``KVM_CREATE_MAPPINGS`` maps the 4,096 pages
  of 16M by translation faults; ``KVM_UPDATE_MAPPINGS`` takes one permission fault per page
  (dirty logging write-protects every page): exactly 4,096 in the whole run.
- **The number and kind of stage-2 faults are the same** on both hosts (the whole run's, within
  2 %, anonymous memory): how many faults a guest takes depends on its accesses and the stage-2 granule. What
  the CMO host's facts change is the work inside a fault: without FWB, KVM cleans each page (or
  block) it maps to the point of coherency (``clean_dcache_guest_page``), and invalidates the
  I-cache for an executable mapping without DIC (neither host has DIC, so both map data faults
  non-executable and take the same exec faults). nVHE adds a world switch to each exit, not an
  exit. No tracepoint counts cache maintenance, and TCG does not model caches, so neither the
  counts nor the times can show the CMO itself: the times differ by QEMU's cost of emulating
  each CPU model (``max`` emulates pointer authentication, SVE ...), not by KVM.
- **No access-flag faults** in the page-table cases on either (nothing ages their memory), and
  **under aging, access-flag faults only on the CMO host**: a ``dirty_log_perf_test`` of 40
  iterations runs alone and then while DAMON monitors it (Debian's kernel has no page_idle).
  The ``max`` host has the hardware access flag (KVM sets ``VTCR_EL2.HA``): stage 2 never
  takes one. The cortex-a72 takes one at the next access to each page made old.

A host that cannot be built or booted here skips with its reason (exit 0).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent
HOSTS = ("arm64-cmo", "arm64-4k")
MODE = "p40v48_4k"
PAGES = (16 << 20) // 4096
CLASSES = ("translation", "permission", "access_flag")
GF = "kvm:kvm_guest_fault"
SAME_PCT = 2.0
SELECTION = ["--pyargs", "pytest_kvmmm.suite", "--kvm-scale", "lab", "--kvm-guest-modes", MODE, "-k",
             "test_kvm_page_table and (anonymous or anonymous_thp) and not hugetlb", "--kvm-counters=default,tlb,vm",
             "--kvm-timeout", "420", "-p", "no:cacheprovider"]  # fmt: skip


def say(text: str) -> None:
    print(f"[counters-proof] {text}", file=sys.stderr, flush=True)


def up(kind: str, run_dir: Path, share: Path) -> str | None:
    """Boot one host; its ``socket=`` gateway, or None (skipped, with the reason said)."""
    proc = subprocess.run([str(BIN / "kvmmm-lab"), "up", "--hosts", kind, "--run-dir", str(run_dir), "--port-base", "0",
                           "--results", str(share)], capture_output=True, text=True, check=False)  # fmt: skip
    sys.stderr.write(proc.stderr[-3000:])
    match = re.search(r"--tx (socket=\S+)", proc.stdout + proc.stderr)
    if proc.returncode != 0 or not match:
        say(f"SKIPPED {kind}: the host did not boot (kvmmm-lab up exit {proc.returncode})")
        return None
    return match.group(1)


def run_host(kind: str, out: Path, repeat: int) -> tuple[Path, dict[str, Any]] | None:
    """One host: boot, the page-table cases through pytest, the aging run, down. Its results
    file and the aging counts, or None (skipped, reason said)."""
    where = out / kind
    where.mkdir(parents=True, exist_ok=True)
    results = where / "r.jsonl"
    results.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory() as run_dir:
        gateway = up(kind, Path(run_dir), where)
        if gateway is None:
            return None
        try:
            argv = [sys.executable, "-m", "pytest", "--dist", "each", "--tx", gateway, *SELECTION,
                    "--kvm-repeat", str(repeat), f"--kvm-results={results}"]  # fmt: skip
            say("$ " + " ".join(argv))
            subprocess.run(argv, check=False, cwd=where)
            aging = aged(gateway)
        finally:
            subprocess.run([str(BIN / "kvmmm-lab"), "down", "--run-dir", run_dir], check=False)
    return (results, aging) if results.exists() else None


#: Runs in the lab guest (root, a throwaway VM): dirty_log_perf_test counted twice, alone and
#: while DAMON monitors it. DAMON's virtual-address monitoring makes sampled pages old through
#: ``ptep_clear_young_notify``: the MMU notifier clears the access flag in stage 2 as well
#: (``kvm_age_gfn``), and the guest's next access to that page takes an access-flag fault
#: unless the CPU sets the flag itself (FEAT_HAFDBS; KVM sets VTCR_EL2.HA when it can).
AGING_SOURCE = """
import glob, json, platform, subprocess, time
from pathlib import Path
from pytest_kvmmm.engine.counters import CounterSession, parse_selection
found = sorted(glob.glob("/root/.cache/pytest-kvmmm/selftests/*/dirty_log_perf_test"))
admin = Path("/sys/kernel/mm/damon/admin/kdamonds")
def put(path, value):
    (admin / path).write_text(str(value) + "\\n")
out = {"binary": found[-1] if found else None, "damon": admin.is_dir()}
session = CounterSession.create(parse_selection("faults"), platform.machine())
out["note"] = session.note
for aging in (False, True):
    if not found or (aging and not admin.is_dir()) or not session.active:
        break
    run = session.start("dirty_log_perf_test")
    proc = subprocess.Popen([found[-1], "-b", "16M", "-v", "1", "-i", "40"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if aging:
        put("nr_kdamonds", 1)
        put("0/contexts/nr_contexts", 1)
        put("0/contexts/0/operations", "vaddr")
        put("0/contexts/0/targets/nr_targets", 1)
        put("0/contexts/0/targets/0/pid_target", proc.pid)
        attrs = "0/contexts/0/monitoring_attrs/"  # sample often, over many regions: ages pages fast
        put(attrs + "intervals/sample_us", 1000)
        put(attrs + "intervals/aggr_us", 20000)
        put(attrs + "intervals/update_us", 100000)
        put(attrs + "nr_regions/min", 200)
        put(attrs + "nr_regions/max", 2000)
        put("0/state", "on")
    text = proc.communicate(timeout=900)[0].decode(errors="replace")
    if aging:
        for _ in range(50):  # kdamond stops by itself when its target exits: "off" is then EPERM
            try:
                put("0/state", "off")
            except OSError:
                pass
            try:
                put("nr_kdamonds", 0)
                break
            except OSError:  # EBUSY while it is still stopping
                time.sleep(0.2)
    counts = run.finish() if run is not None else None
    out["aging" if aging else "alone"] = {"rc": proc.returncode, "tail": text[-300:],
                                          "total": dict(counts.total) if counts else None}
channel.send(json.dumps(out))
"""


def aged(gateway: str) -> dict[str, Any]:
    import execnet

    gw = execnet.makegateway(gateway)
    try:
        channel = gw.remote_exec(AGING_SOURCE)
        result: dict[str, Any] = json.loads(channel.receive(1800))
        return result
    except (execnet.RemoteError, EOFError, OSError) as exc:  # the page-table results still count
        say(f"the aging run failed: {str(exc).strip().splitlines()[-1] if str(exc).strip() else exc!r}")
        return {"note": f"the aging run failed: {exc!r}"[:500]}
    finally:
        gw.exit()


def stage_counts(rec: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """Stage (mode prefix dropped) -> event -> median count; ``total`` for the whole run."""
    counters = rec.get("counters") or {}
    out = {"total": dict(counters.get("total") or {})}
    stages = counters.get("stages") or {}
    for stage in counters.get("stage_order") or stages:  # the results file sorts keys
        out[stage.rsplit("/", 1)[-1]] = dict(stages.get(stage) or {})
    return out


def by_backing(path: Path) -> dict[str, Mapping[str, Any]]:
    out = {}
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        backing = rec["nodeid"].rsplit("[", 1)[-1].split("-")[0].rstrip("]")
        out[backing] = rec
    return out


def problems(cmo: Mapping[str, Mapping[str, Any]], mx: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The whole run's counts are exact; a stage's are read when its line arrives, by when the
    next stage has begun (a few of UPDATE's permission faults land in CREATE): stages get 5 %."""
    found = []
    for host, recs in (("arm64-cmo", cmo), ("arm64-4k", mx)):
        rec = recs.get("anonymous")
        if rec is None or rec.get("status") != "passed" or not rec.get("counters"):
            found.append(f"{host}: kvm_page_table_test[anonymous] did not pass with counts")
            continue
        s = stage_counts(rec)
        total, create, update = s["total"], s.get("KVM_CREATE_MAPPINGS", {}), s.get("KVM_UPDATE_MAPPINGS", {})
        if total.get(f"{GF}[translation]", 0) < PAGES or total.get(f"{GF}[permission]", 0) != PAGES:
            found.append(f"{host}: the run took {total.get(f'{GF}[translation]')} translation and "
                         f"{total.get(f'{GF}[permission]')} permission faults, not >= {PAGES} and {PAGES}")
        if create.get(f"{GF}[translation]", 0) < PAGES * 0.95 or update.get(f"{GF}[permission]", 0) < PAGES * 0.95:
            found.append(f"{host}: KVM_CREATE_MAPPINGS' translation faults {create.get(f'{GF}[translation]')} or "
                         f"KVM_UPDATE_MAPPINGS' permission faults {update.get(f'{GF}[permission]')} are not ~{PAGES}")
        for backing, r in recs.items():
            af = stage_counts(r)["total"].get(f"{GF}[access_flag]", 0)
            if af:
                found.append(f"{host} {backing}: {af} access-flag faults, where nothing ages guest memory")
    if found:
        return found
    a, b = stage_counts(cmo["anonymous"])["total"], stage_counts(mx["anonymous"])["total"]
    for cls in ("translation", "permission"):
        x, y = a.get(f"{GF}[{cls}]", 0), b.get(f"{GF}[{cls}]", 0)
        if abs(x - y) > max(x, y) * SAME_PCT / 100 and abs(x - y) > 16:
            found.append(f"anonymous: {cls} faults {x:,.0f} on arm64-cmo, {y:,.0f} on arm64-4k (the facts say equal)")
    return found


def table(cmo: Mapping[str, Mapping[str, Any]], mx: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """A cover-letter table: per backing and stage, each host's time and counts side by side."""
    events = [f"{GF}[{c}]" for c in CLASSES] + ["kvm:kvm_exit", "kvm:kvm_set_way_flush", "vm:exits", "vm:remote_tlb_flush"]
    head = "| backing | stage | time cmo | time max | " + " | ".join(f"{e.split(':', 1)[1]} cmo | max" for e in events) + " |"
    lines = [head, "|" + ":--|" * 2 + "--:|" * (2 + 2 * len(events))]
    for backing in sorted(set(cmo) & set(mx)):
        sa, sb = stage_counts(cmo[backing]), stage_counts(mx[backing])
        ta, tb = cmo[backing].get("metrics") or {}, mx[backing].get("metrics") or {}
        for stage in [s for s in sa if s in sb]:
            times = [next((v for k, v in t.items() if k.rsplit("/", 1)[-1] == stage), None) for t in (ta, tb)]
            cells = [f"{t:.3f}s" if isinstance(t, (int, float)) else "" for t in times]
            cells += [f"{s.get(e, 0):,.0f}" for e in events for s in (sa[stage], sb[stage])]
            lines.append(f"| {backing} | {stage} | " + " | ".join(cells) + " |")
    return lines


AF = f"{GF}[access_flag]"


def aging_problems(cmo: Mapping[str, Any], mx: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """(lines to show, problems): access-flag faults under DAMON's aging only where the CPU does
    not set the flag itself."""
    lines, found = [], []
    for host, got in (("arm64-cmo", cmo), ("arm64-4k", mx)):
        for arm in ("alone", "aging"):
            total = (got.get(arm) or {}).get("total")
            if total is None:
                found.append(f"{host} {arm}: no counts ({got.get('note') or got.get(arm)})")
                continue
            lines.append(f"{host} dirty_log_perf_test {arm}: " + ", ".join(f"{k.split(':', 1)[1]} {v:,}" for k, v in total.items() if v))
    if found:
        return lines, found
    # kdamond makes the pages old in its own context, which counting per process does not see
    # (kvm_age_hva stays 0): the CMO host's access-flag faults are the evidence that it aged.
    for host, got in (("arm64-cmo", cmo), ("arm64-4k", mx)):
        if got["alone"]["total"].get(AF):
            found.append(f"{host}: {got['alone']['total'][AF]} access-flag faults with nothing aging guest memory")
    if not cmo["aging"]["total"].get(AF):
        found.append("arm64-cmo (no hardware access flag): no access-flag fault while DAMON aged guest memory")
    if mx["aging"]["total"].get(AF):
        found.append(f"arm64-4k (hardware access flag, VTCR_EL2.HA): {mx['aging']['total'][AF]} access-flag faults")
    return lines, found


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("results/counters-proof"))
    ap.add_argument("--repeat", type=int, default=1, help="runs per case (counts are the same in every run)")
    ap.add_argument("--analyse", nargs=2, type=Path, metavar=("CMO_DIR", "MAX_DIR"),
                    help="check the r.jsonl and aging.json two runs left, run nothing")
    args = ap.parse_args(argv)
    dirs = list(args.analyse) if args.analyse else [args.out.resolve() / kind for kind in HOSTS]
    if not args.analyse:
        for kind, where in zip(HOSTS, dirs):
            got = run_host(kind, args.out.resolve(), args.repeat)
            if got is None:
                return 0
            (where / "aging.json").write_text(json.dumps(got[1], indent=1))
    cmo, mx = (by_backing(d / "r.jsonl") for d in dirs)
    print("\n".join(table(cmo, mx)))
    found = problems(cmo, mx)
    ages = [json.loads((d / "aging.json").read_text()) for d in dirs if (d / "aging.json").exists()]
    if len(ages) == 2:
        lines, more = aging_problems(*ages)
        print("\n".join(["", *lines]))
        found += more
    for p in found:
        say(f"FAILED: {p}")
    if not found:
        say("passed: fault classes on both hosts, the same faults per stage; access-flag faults under aging "
            "only without the hardware access flag")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
