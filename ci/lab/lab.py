#!/usr/bin/env python3
r"""The kvmmm lab: emulated arm64 KVM hosts (QEMU TCG) driven with this host from one pytest run.

    ci/lab/lab.py build      # images: Debian's arm64 6.12 kernels (4K and 16K pages), a busybox +
                             # python3 userspace with the plugin's dependencies, the arm64 selftests
                             # (kvmmm-build --arch arm64); each part cached (34 s cold with apt's and
                             # pip's caches warm, 2.8 s cached; see the README)
    ci/lab/lab.py up         # boot lab-arm64-4k and lab-arm64-16k; prints their --tx and facts
    python -m pytest -m pagetable --kvm-scale lab --dist each --tx popen \
        --tx socket=127.0.0.1:47011 --tx socket=127.0.0.1:47012 \
        --kvm-guest-modes arch:aarch64,pxxv48_4k --kvm-backing-srcs anonymous \
        -k "not test_dirty_log or test_dirty_log_perf or 64k or pxx" \
        --kvm-results=results/lab/lab.jsonl --alluredir=results/lab/allure
    ci/lab/lab.py down       # stop them, by pid
    ci/lab/lab.py run [-- PYTEST ARGS]   # up, that pytest, down; hosts stopped on Ctrl-C too
    ci/lab/lab.py ci         # the CI stage: build, run, check; exit 0 with SKIPPED when the lab
                             # cannot be had (no QEMU, no Debian arm64 packages, no network)
    ci/lab/lab.py status

``ci/lab.sh CMD`` sets up (``ci/setup.sh``) and runs this with ``.venv/bin/python``; run directly,
use a Python that has pytest-kvmmm installed. pytest runs in the repository root. How it works: the modules in ``ci/lab/kvmmm_lab/``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

LAB_DIR = Path(__file__).resolve().parent
REPO = LAB_DIR.parent.parent
# This checkout's plugin, as the guests (a copy of it) and pytest (run in REPO) use, even when
# another checkout is installed in the environment.
sys.path[:0] = [str(LAB_DIR), str(REPO)]

from kvmmm_lab import image, overlay, qemu, recipe  # noqa: E402
from kvmmm_lab.image import LabError, LabUnavailable  # noqa: E402

from pytest_kvmmm import results  # noqa: E402

DEFAULT_SHARE = REPO / "results" / "lab"
#: Every arm64 guest mode and x86's: each host runs the modes it supports and skips the others.
MODES = ("--kvm-guest-modes", "arch:aarch64,pxxv48_4k", "--kvm-backing-srcs", "anonymous")
#: dirty_log_test always dirties 1 GiB of guest memory: under TCG about a minute per 4K-page
#: mode, 8 s per 64K-page mode. The lab runs it in the 64K modes only (and x86's).
LAB_K = "not test_dirty_log or test_dirty_log_perf or 64k or pxx"


def default_pytest_args() -> list[str]:
    """The lab run: the page-table suite at the ``lab`` scale (16M, one vCPU), every guest mode."""
    return ["-m", "pagetable", "--kvm-scale", "lab", *MODES, "-k", LAB_K]


def cache_root() -> Path:
    from pytest_kvmmm.provision.cache import default_cache_root

    return Path(os.path.abspath(default_cache_root()))


def err(text: str) -> None:
    sys.stderr.write(f"[lab] {text}\n")
    sys.stderr.flush()


# --- build ------------------------------------------------------------------------------------

def cmd_build(args: argparse.Namespace) -> int:
    settings = image.BuildSettings(
        cache_root=cache_root(), flavours=args.flavours, jobs=args.jobs, allow_apt=not args.no_apt,
        is_root=os.geteuid() == 0, force=args.force, progress=sys.stderr,
    )  # fmt: skip
    image.build_all(settings)
    return 0


# --- up / down / status -------------------------------------------------------------------------

def run_dir(args: argparse.Namespace) -> Path:
    return Path(args.run_dir) if args.run_dir else image.LabPaths(cache_root() / "lab").runs


def share_dir(args: argparse.Namespace) -> Path | None:
    """The directory shared with the guests (``--share``, made absolute); None for ``--share ''``."""
    return Path(os.path.abspath(args.share)) if args.share else None


def up(args: argparse.Namespace) -> list[qemu.HostState]:
    """Boot the hosts, wait for their servers, ask each for its facts; stop them on any failure."""
    paths = image.LabPaths(cache_root() / "lab")
    rdir = run_dir(args)
    running = [h for h in qemu.load_state(rdir) if qemu.is_ours(h)]
    if running:
        raise LabError(f"a lab is already up in {rdir} ({', '.join(h.name for h in running)}): `lab.py down` first")
    records = [image.load_image(paths, f) for f in args.flavours]
    short = memory_shortfall(len(records), args.mem, _mem_available())
    if short:
        raise LabUnavailable(short)
    share = share_dir(args)
    if share is not None:
        share.mkdir(parents=True, exist_ok=True)
    ports = qemu.choose_ports(len(records), args.port_base)
    rdir.mkdir(parents=True, exist_ok=True)
    dist = overlay.dist_info()
    states: list[qemu.HostState] = []
    start = time.monotonic()
    try:
        for record, port in zip(records, ports):
            name = record["hostname"]
            hdir = rdir / name
            hdir.mkdir(exist_ok=True)
            config = overlay.GuestConfig(
                hostname=name, repo=PurePosixPath(REPO), modules=tuple(record["modules"]),
                share=None if share is None else PurePosixPath(share),
            )  # fmt: skip
            overlay.write_overlay(hdir / "overlay.cpio", config, REPO, dist)
            qemu.concat([*map(Path, record["parts"]), hdir / "overlay.cpio"], hdir / "initrd")
            spec = qemu.HostSpec(name, record["flavour"], Path(record["kernel"]), hdir / "initrd", port,
                                 hdir / "console.log", mem=args.mem, smp=args.smp, share=share,
                                 cpu=record.get("cpu", "max"))  # fmt: skip
            states.append(qemu.launch(spec))
            qemu.save_state(rdir, states)
        err(f"booting {', '.join(f'{s.name} (pid {s.pid}, 127.0.0.1:{s.port})' for s in states)}")
        qemu.wait_ready(states, args.timeout)
        err(f"ready after {time.monotonic() - start:.1f} s; asking each host for its facts")
        for s in states:
            s.facts = qemu.remote_facts(s.port)
            err(qemu.summary(s.facts))
        qemu.save_state(rdir, states)
    except BaseException:
        for name, what in qemu.stop(states).items():
            err(f"{name}: {what}")
        raise
    return states


def _mem_available() -> int | None:
    from pytest_kvmmm.host.sysfs import parse_meminfo

    try:
        return parse_meminfo(Path("/proc/meminfo").read_text()).get("MemAvailable")
    except OSError:
        return None


def memory_shortfall(hosts: int, mem: str, available: int | None, margin: int = 1 << 30) -> str | None:
    """Why this machine cannot hold ``hosts`` guests of ``mem`` each (QEMU takes the memory as the
    guests touch it, so a short machine would die mid-run); None when it can or cannot tell."""
    from pytest_kvmmm.backing import parse_size

    need = hosts * parse_size(mem) + margin
    if available is None or available >= need:
        return None
    gib = 1 << 30
    return (f"{hosts} lab hosts of {mem} need {need / gib:.1f} GiB of free memory, this machine has "
            f"{available / gib:.1f} GiB available (fewer hosts: --flavours 4k; smaller: --mem 2G)")


def tx_args(states: Sequence[qemu.HostState]) -> list[str]:
    return [arg for s in states for arg in ("--tx", s.tx)]


def cmd_up(args: argparse.Namespace) -> int:
    states = up(args)
    print(" ".join(tx_args(states)))
    err(f"stop them with: {sys.argv[0]} down{f' --run-dir {args.run_dir}' if args.run_dir else ''}")
    return 0


def down(rdir: Path) -> None:
    hosts = qemu.load_state(rdir)
    if not hosts:
        err(f"no lab hosts recorded in {rdir}")
        return
    for name, what in qemu.stop(hosts).items():
        err(f"{name}: {what}")
    for h in hosts:  # 100 MB each, made again at every boot; the console logs stay for post-mortems
        for made in ("initrd", "overlay.cpio"):
            (Path(h.console).parent / made).unlink(missing_ok=True)
    (rdir / qemu.STATE).unlink(missing_ok=True)


def cmd_down(args: argparse.Namespace) -> int:
    down(run_dir(args))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    hosts = qemu.load_state(run_dir(args))
    if not hosts:
        print("no lab hosts")
        return 1
    for h in hosts:
        state = "up" if qemu.is_ours(h) else "not running"
        print(f"{h.name}: {state}, pid {h.pid}, --tx {h.tx}, console {h.console}")
    return 0 if all(qemu.is_ours(h) for h in hosts) else 1


# --- run: up, pytest, down --------------------------------------------------------------------

def has_option(argv: Sequence[str], name: str) -> bool:
    return any(a == name or a.startswith(name + "=") for a in argv)


def pytest_argv(tx: Sequence[str], user: Sequence[str], share: Path | None) -> list[str]:
    """The controller's command: this host (popen) and every lab host, each running the whole
    suite (``--dist each``). Paths are passed as ``--opt=value``: xdist rewrites bare existing
    paths in the arguments relative to its rsync roots, and fails on any outside them."""
    argv = [sys.executable, "-m", "pytest", "--dist", "each", "--tx", "popen", *tx]
    argv += list(user or default_pytest_args())
    if share is not None and not has_option(argv, "--kvm-results"):
        argv.append(f"--kvm-results={share / 'lab.jsonl'}")
    if share is not None and not has_option(argv, "--alluredir"):
        argv.append(f"--alluredir={share / 'allure'}")
    return argv


def outcome_counts(records: Sequence[dict[str, Any]]) -> dict[str, Counter[str]]:
    counts: dict[str, Counter[str]] = {}
    for r in records:
        counts.setdefault(str(r.get("host")), Counter())[str(r.get("outcome"))] += 1
    return counts


def read_results(path: Path) -> list[dict[str, Any]]:
    """The plugin's results file, or no records when it is missing or unreadable."""
    try:
        return results.read_results(path)
    except (OSError, ValueError):
        return []


def run_lab(args: argparse.Namespace) -> tuple[int, float, list[qemu.HostState]]:
    """Up, pytest, down (also on Ctrl-C). Returns pytest's exit status, its wall time, the hosts."""
    share = share_dir(args)
    if share is not None:
        for stale in ("lab.jsonl", "allure"):
            target = share / stale
            shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)
    rdir = run_dir(args)
    states = up(args)
    status = 1
    start = time.monotonic()
    try:
        argv = pytest_argv(tx_args(states), args.pytest_args, share)
        err("$ " + " ".join(argv))
        proc = subprocess.Popen(argv, cwd=REPO)
        try:
            status = proc.wait()
        except KeyboardInterrupt:
            stop_pytest(proc)
            raise
    finally:
        wall = time.monotonic() - start
        down(rdir)
    return status, wall, states


def stop_pytest(proc: subprocess.Popen[bytes], grace: float = 20.0) -> None:
    """Ctrl-C for pytest (xdist then ends its workers), then SIGTERM, then SIGKILL."""
    for sig, wait in ((signal.SIGINT, grace), (signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
        if proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue


def report(records: Sequence[dict[str, Any]], wall: float) -> None:
    err(f"pytest wall time {wall:.1f} s")
    for host, counts in sorted(outcome_counts(records).items()):
        err(f"{host}: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))


def cmd_run(args: argparse.Namespace) -> int:
    status, wall, _ = run_lab(args)
    share = share_dir(args)
    if share is not None:
        report(read_results(share / "lab.jsonl"), wall)
    return status


# --- ci: the CI stage -------------------------------------------------------------------------

#: A guest mode in a test id: ``test_kvm_page_table[anonymous-p48v48_16k]`` -> p48v48_16k.
MODE_IN_ID = re.compile(r"[\[-](p(?:\d+|xx)v\d+_\d+k)[\]-]")
X86_MODE = "pxxv48_4k"


def mode_of(nodeid: str) -> str | None:
    m = MODE_IN_ID.search(nodeid)
    return m.group(1) if m else None


def lab_checks(records: Sequence[dict[str, Any]], states: Sequence[qemu.HostState]) -> list[str]:
    """What a lab run must show beyond pytest's own verdict (issue 9), each problem as one line:
    three hosts that ran the same tests; each arm64 host's facts from its own probe (TTRem read
    from its vCPU, KVM in VHE mode, its page size); the arm64 modes run on the arm64 hosts and
    are skipped on x86, the x86 mode the other way round; the 4K and 16K hosts run different
    sets of guest modes."""
    problems = []
    hosts = {str(r.get("host")) for r in records}
    expected = {s.name for s in states}
    if len(hosts) != len(expected) + 1 or not expected <= hosts:
        problems.append(f"results name hosts {sorted(hosts)}, expected this host and {sorted(expected)}")
    per_host = outcome_counts(records)
    totals = {sum(c.values()) for c in per_host.values()}
    if len(totals) > 1:
        problems.append(f"hosts ran different numbers of tests: {dict((h, sum(c.values())) for h, c in per_host.items())}")
    passed_modes: dict[str, set[str]] = {}
    for r in records:
        mode = mode_of(str(r.get("nodeid", "")))
        if mode is None:
            continue
        host = str(r.get("host"))
        if r.get("outcome") == "passed":
            passed_modes.setdefault(host, set()).add(mode)
        arm_host = host in expected
        if r.get("outcome") == "passed" and arm_host == (mode == X86_MODE):
            problems.append(f"{host}: {r.get('nodeid')} passed, but {mode} is not a guest mode of that architecture")
    for s in states:
        facts = next((r.get("host_facts") for r in reversed(records) if r.get("host") == s.name), None) or {}
        kvm = s.facts.get("kvm") or {}
        if kvm.get("ttrem") is None or facts.get("ttrem") in (None, "?"):
            problems.append(f"{s.name}: no TTRem level from the vCPU's ID_AA64MMFR2_EL1 (facts {kvm.get('ttrem')}, results {facts.get('ttrem')})")
        if kvm.get("arm64_mode") != "vhe":
            problems.append(f"{s.name}: KVM mode {kvm.get('arm64_mode')}, expected vhe")
        page = f"{recipe.FLAVOURS[s.flavour].page_kib}K" if s.flavour in recipe.FLAVOURS else None
        if page is not None and facts.get("page_size") != page:
            problems.append(f"{s.name}: results say page size {facts.get('page_size')}, expected {page}")
        if not per_host.get(s.name, Counter()).get("passed"):
            problems.append(f"{s.name}: no test passed")
        if not passed_modes.get(s.name):
            problems.append(f"{s.name}: no arm64 guest mode passed")
    arm_sets = {frozenset(passed_modes.get(s.name, ())) for s in states}
    if len(states) > 1 and len(arm_sets) == 1:
        problems.append(f"the arm64 hosts ran the same guest modes ({sorted(next(iter(arm_sets)))}); "
                        "the 4K and 16K hosts should differ")
    return problems


def cmd_ci(args: argparse.Namespace) -> int:
    """Build (cached) and run the three-host smoke lab; skipped, exit 0, when the lab cannot be had."""
    start = time.monotonic()
    try:
        cmd_build(args)
    except LabUnavailable as exc:
        err(f"SKIPPED: the arm64 lab cannot be built here: {exc}")
        return 0
    err(f"build (cached parts reused) took {time.monotonic() - start:.1f} s")
    try:
        status, wall, states = run_lab(args)
    except LabUnavailable as exc:  # QEMU gone, too little memory: nothing was run
        err(f"SKIPPED: the arm64 lab cannot run here: {exc}")
        return 0
    share = share_dir(args)
    records = [] if share is None else read_results(share / "lab.jsonl")
    report(records, wall)
    problems = ["lab.py ci needs --share: it checks the results file"] if share is None else lab_checks(records, states)
    if status not in (0, 1):
        problems.append(f"pytest exited {status} (not a test verdict: usage, internal error or interrupt)")
    for p in problems:
        err(f"FAILED: {p}")
    if status == 1:
        err("some selftests failed (see above); the lab itself worked")
    err(f"lab stage took {time.monotonic() - start:.1f} s")
    return 1 if problems else 0


# --- arguments --------------------------------------------------------------------------------

def flavours(value: str) -> list[str]:
    names = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [n for n in names if n not in recipe.FLAVOURS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown flavour(s) {unknown or value!r}; known: {', '.join(recipe.FLAVOURS)}")
    return names


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="lab.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--flavours", type=flavours, default=list(recipe.DEFAULT_FLAVOURS),
                       help="lab hosts by page size (default: 4k,16k)")

    def build_opts(p: argparse.ArgumentParser) -> None:
        p.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 1, help="make jobs for the selftests")
        p.add_argument("--no-apt", action="store_true", help="never apt-get install anything")
        p.add_argument("--force", action="store_true", help="rebuild every part")

    def up_opts(p: argparse.ArgumentParser) -> None:
        p.add_argument("--port-base", type=int, default=qemu.DEFAULT_PORT_BASE,
                       help="hosts listen on 127.0.0.1:BASE+1.. (default %(default)s; 0: free ports)")
        p.add_argument("--mem", default="3G", help="guest memory per host (default %(default)s)")
        p.add_argument("--smp", type=int, default=2, help="vCPUs per host (default %(default)s)")
        p.add_argument("--share", default=str(DEFAULT_SHARE),
                       help="host directory mounted at the same path in every guest, for results and "
                       "Allure files (default %(default)s; '' for none)")
        p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the hosts to boot")

    def run_dir_opt(p: argparse.ArgumentParser) -> None:
        p.add_argument("--run-dir", help="where the hosts' state, consoles and initrds live "
                       "(default ~/.cache/pytest-kvmmm/lab/run)")

    p = sub.add_parser("build", help="build the images (cached)")
    common(p)
    build_opts(p)
    p.set_defaults(func=cmd_build)
    for name, func, helptext in (("up", cmd_up, "boot the hosts"), ("run", cmd_run, "up, pytest, down"),
                                 ("ci", cmd_ci, "the CI stage")):  # fmt: skip
        p = sub.add_parser(name, help=helptext)
        common(p)
        up_opts(p)
        run_dir_opt(p)
        if name == "ci":
            build_opts(p)
        if name in ("run", "ci"):
            p.add_argument("pytest_args", nargs="*", help="pytest arguments, after -- (default: the page-table "
                           "suite at the lab scale in every guest mode; see default_pytest_args)")
        p.set_defaults(func=func)
    for name, func in (("down", cmd_down), ("status", cmd_status)):
        p = sub.add_parser(name, help=f"{name} of the hosts")
        run_dir_opt(p)
        p.set_defaults(func=func)
    return parser.parse_args(argv)


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # Ctrl-C and SIGTERM stop the hosts we started, also when started as a background job
    # (which ignores SIGINT): every path out of up/run goes through qemu.stop().
    old_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    old_term = signal.signal(signal.SIGTERM, _interrupted)
    try:
        return int(args.func(args))
    except LabUnavailable as exc:
        err(f"unavailable: {exc}")
        return 2
    except LabError as exc:
        err(f"error: {exc}")
        return 1
    except KeyboardInterrupt:
        err("interrupted; lab hosts stopped")
        return 130
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)


if __name__ == "__main__":
    sys.exit(main())
