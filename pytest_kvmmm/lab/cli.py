r"""kvmmm-lab: emulated KVM hosts (QEMU TCG) driven with this host from one pytest run.

    kvmmm-lab build [--hosts KINDS]   # images: kernels (Debian's, or built to order), a busybox +
                                      # python3 userspace with the plugin's dependencies, the KVM
                                      # selftests of each arch (kvmmm-build); each part cached
    kvmmm-lab up [--hosts KINDS]      # boot them; prints their --tx and facts
    kvmmm-lab run [--hosts KINDS] [-- PYTEST ARGS]   # up, pytest (this host + the lab hosts,
                                      # --dist each), the entry x host table, down
    kvmmm-lab status | down

Host kinds (``--hosts``, default all; at most three boot at once by default): see
``kvmmm-lab build --help`` and ``pytest_kvmmm/lab/hosts.py``. pytest runs in the current
directory (``--rootdir``), which the guests get a copy of at the same path, with the plugin as
installed here. Results go to ``--results`` (default ``./results/lab``), shared with the guests.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from .. import __version__
from . import overlay, qemu, table
from .build import build_all, load_image
from .hosts import DEFAULT_HOSTS, HOST_KINDS, parse_hosts
from .image import BuildSettings, LabError, LabPaths, LabUnavailable
from .kbuild import parse_kernel_images

#: Every arm64 guest mode and x86's: each host runs the modes it supports and skips the others.
MODES = ("--kvm-guest-modes", "arch:aarch64,pxxv48_4k", "--kvm-backing-srcs", "anonymous")
#: dirty_log_test always dirties 1 GiB of guest memory: under TCG a minute or more per 4K-page
#: mode, 35-70 s per 64K-page mode on a loaded machine. The lab runs it in one mode every
#: arm64 host has, p40v48_64k.
LAB_K = "not test_dirty_log or test_dirty_log_perf or test_dirty_log_page_splitting or p40v48_64k"
#: The most hosts booted at once by default: each takes 3 GiB and a share of the CPUs.
MAX_AT_ONCE = 3


#: max_guest_memory_test touches its smallest slot, 1 GiB, 4K page by 4K page, three times:
#: minutes under TCG on a loaded machine.
LAB_TIMEOUT = ("--kvm-timeout", "420")


def default_pytest_args() -> list[str]:
    """The lab run: every catalogue entry at the ``lab`` scale (16M, one vCPU), every guest mode."""
    return ["--pyargs", "pytest_kvmmm.suite", "--kvm-scale", "lab", *MODES, *LAB_TIMEOUT, "-k", LAB_K]


def cache_root() -> Path:
    from ..provision.cache import default_cache_root

    return Path(os.path.abspath(default_cache_root()))


def lab_paths() -> LabPaths:
    return LabPaths(cache_root() / "lab")


def err(text: str) -> None:
    sys.stderr.write(f"[lab] {text}\n")
    sys.stderr.flush()


def cmd_build(args: argparse.Namespace) -> int:
    try:
        images = parse_kernel_images(args.kernel_image or [])
    except ValueError as exc:
        raise LabError(str(exc)) from None
    settings = BuildSettings(
        cache_root=cache_root(), hosts=args.hosts, jobs=args.jobs, allow_apt=not args.no_apt,
        is_root=os.geteuid() == 0, force=args.force, progress=sys.stderr,
        kernel_tree=Path(args.kernel_tree) if args.kernel_tree else None, kernel_images=images,
    )  # fmt: skip
    build_all(settings)
    return 0


# --- up / down / status -------------------------------------------------------------------------

def run_dir(args: argparse.Namespace) -> Path:
    return Path(args.run_dir) if args.run_dir else lab_paths().runs


def results_dir(args: argparse.Namespace) -> Path | None:
    """The directory shared with the guests (``--results``, made absolute); None for ``''``."""
    return Path(os.path.abspath(args.results)) if args.results else None


def memory_shortfall(mems: Sequence[str], available: int | None, margin: int = 1 << 30) -> str | None:
    """Why this machine cannot hold guests of ``mems`` (QEMU takes the memory as the guests
    touch it, so a short machine would die mid-run); None when it can or cannot tell."""
    from ..host.units import parse_size

    need = sum(parse_size(m) for m in mems) + margin
    if available is None or available >= need:
        return None
    gib = 1 << 30
    return (f"{len(mems)} lab hosts ({', '.join(mems)}) need {need / gib:.1f} GiB of free memory, this machine "
            f"has {available / gib:.1f} GiB available (fewer hosts: --hosts; smaller: --mem 2G)")


def _mem_available() -> int | None:
    from ..host.sysfs import parse_meminfo

    try:
        return parse_meminfo(Path("/proc/meminfo").read_text()).get("MemAvailable")
    except OSError:
        return None


def up(args: argparse.Namespace, hosts: Sequence[str]) -> list[qemu.HostState]:
    """Boot the hosts, wait for their servers, ask each for its facts; stop them on any failure."""
    paths = lab_paths()
    rdir = run_dir(args)
    running = [h for h in qemu.load_state(rdir) if qemu.is_ours(h)]
    if running:
        raise LabError(f"a lab is already up in {rdir} ({', '.join(h.name for h in running)}): `kvmmm-lab down` first")
    records = [load_image(paths, k) for k in hosts]
    kinds = [HOST_KINDS[k] for k in hosts]
    short = memory_shortfall([args.mem or k.mem for k in kinds], _mem_available())
    if short:
        raise LabUnavailable(short)
    share = results_dir(args)
    if share is not None:
        share.mkdir(parents=True, exist_ok=True)
    rootdir = Path(os.path.abspath(args.rootdir))
    ports = qemu.choose_ports(len(records), args.port_base)
    rdir.mkdir(parents=True, exist_ok=True)
    dist = overlay.dist_info()
    states: list[qemu.HostState] = []
    start = time.monotonic()
    try:
        for record, kind, port in zip(records, kinds, ports):
            hdir = rdir / kind.hostname
            hdir.mkdir(exist_ok=True)
            params = " ".join(f"{m}:{p}" for m, ps in kind.module_params.items() for p in ps)
            config = overlay.GuestConfig(
                hostname=kind.hostname, rootdir=PurePosixPath(rootdir), modules=tuple(record["modules"]),
                share=None if share is None else PurePosixPath(share), module_params=params,
            )  # fmt: skip
            overlay.write_overlay(hdir / "overlay.cpio", config, rootdir, dist)
            qemu.concat([*map(Path, record["parts"]), hdir / "overlay.cpio"], hdir / "initrd")
            spec = qemu.HostSpec(kind.hostname, kind, Path(record["kernel"]), hdir / "initrd", port,
                                 hdir / "console.log", mem=args.mem or kind.mem, smp=args.smp or kind.smp,
                                 share=share)  # fmt: skip
            states.append(qemu.launch(spec))
            qemu.save_state(rdir, states)
        err(f"booting {', '.join(f'{s.name} (pid {s.pid}, 127.0.0.1:{s.port})' for s in states)}")
        qemu.wait_ready(states, args.timeout)
        err(f"ready after {time.monotonic() - start:.1f} s; asking each host for its facts")
        for s in states:
            s.facts = qemu.facts_of(s)
            err(qemu.summary(s.facts))
        qemu.save_state(rdir, states)
    except BaseException:
        for name, what in qemu.stop(states).items():
            err(f"{name}: {what}")
        raise
    return states


def tx_args(states: Sequence[qemu.HostState]) -> list[str]:
    return [arg for s in states for arg in ("--tx", s.tx)]


def cmd_up(args: argparse.Namespace) -> int:
    states = up(args, args.hosts)
    print(" ".join(tx_args(states)))
    err(f"stop them with: kvmmm-lab down{f' --run-dir {args.run_dir}' if args.run_dir else ''}")
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
        print(f"{h.name} ({h.kind}): {state}, pid {h.pid}, --tx {h.tx}, console {h.console}")
    return 0 if all(qemu.is_ours(h) for h in hosts) else 1


# --- run: up, pytest, down --------------------------------------------------------------------

def has_option(argv: Sequence[str], name: str) -> bool:
    return any(a == name or a.startswith(name + "=") for a in argv)


def pytest_argv(tx: Sequence[str], user: Sequence[str], share: Path | None, label: str, local: bool) -> list[str]:
    """The controller's command: this host (popen, unless ``local`` is off) and every lab host,
    each running the whole suite (``--dist each``). Paths are passed as ``--opt=value``: xdist
    rewrites bare existing paths in the arguments relative to its rsync roots."""
    argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--dist", "each",
            *(["--tx", "popen"] if local else []), *tx]  # fmt: skip
    argv += list(user or default_pytest_args())
    if share is not None and not has_option(argv, "--kvm-results"):
        argv.append(f"--kvm-results={share / f'{label}.jsonl'}")
    if share is not None and not has_option(argv, "--alluredir"):
        argv.append(f"--alluredir={share / 'allure'}")
    # what a lab's dashboards read: JUnit (per-host testcases), KCIDB, SQUAD (one folder per host)
    for option, name in (("--junitxml", f"{label}.junit.xml"), ("--kvm-kcidb", f"{label}.kcidb.json"),
                         ("--kvm-squad", f"{label}.squad")):
        if share is not None and not has_option(argv, option):
            argv.append(f"{option}={share / name}")
    return argv


def remove_stale(share: Path) -> None:
    """An earlier run's results and exports: a run's files describe that run only."""
    for stale in (*share.glob("lab*.jsonl"), *share.glob("lab*.junit.xml"), *share.glob("lab*.kcidb.json")):
        stale.unlink()
    for folder in share.glob("lab*.squad"):
        shutil.rmtree(folder, ignore_errors=True)


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


def run_pytest(argv: Sequence[str], cwd: Path) -> int:
    err("$ " + " ".join(argv))
    proc = subprocess.Popen(list(argv), cwd=cwd)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        stop_pytest(proc)
        raise


def batches(hosts: Sequence[str], at_once: int) -> list[list[str]]:
    """The hosts in boots of at most ``at_once``, in order."""
    step = max(at_once, 1)
    return [list(hosts[i:i + step]) for i in range(0, len(hosts), step)]


def run_lab(args: argparse.Namespace) -> tuple[int, float, list[qemu.HostState]]:
    """For each batch of hosts: up, pytest, down (also on Ctrl-C). This host runs in the first
    batch only. Returns the worst pytest status, the wall time, the hosts."""
    share = results_dir(args)
    if share is not None:
        shutil.rmtree(share / "allure", ignore_errors=True)
        remove_stale(share)
    rdir, rootdir = run_dir(args), Path(os.path.abspath(args.rootdir))
    status, every = 0, []
    start = time.monotonic()
    for n, batch in enumerate(batches(args.hosts, args.at_once)):
        states = up(args, batch)
        every += states
        try:
            label = f"lab-{n + 1}"
            argv = pytest_argv(tx_args(states), args.pytest_args, share, label, local=n == 0 and not args.no_local)
            got = run_pytest(argv, rootdir)
            status = got if got not in (0, 1) or status in (0,) else status
        finally:
            down(rdir)
    return status, time.monotonic() - start, every


def read_all_results(share: Path) -> list[dict[str, Any]]:
    from ..reports.results import read_results

    records: list[dict[str, Any]] = []
    for path in sorted(share.glob("lab*.jsonl")):
        try:
            records += read_results(path)
        except (OSError, ValueError) as exc:
            err(f"unreadable results {path}: {exc}")
    return records


def cmd_run(args: argparse.Namespace) -> int:
    status, wall, _ = run_lab(args)
    share = results_dir(args)
    err(f"lab wall time {wall:.1f} s")
    if share is not None:
        lines = table.render(read_all_results(share))
        (share / "table.txt").write_text("\n".join(lines) + "\n")
        print("\n".join(lines))
    return status


# --- arguments --------------------------------------------------------------------------------

def hosts_arg(value: str) -> list[str]:
    try:
        return parse_hosts(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_host_opts(p: argparse.ArgumentParser) -> None:
    kinds = "; ".join(f"{k.name}: {k.doc}" for k in HOST_KINDS.values())
    p.add_argument("--hosts", type=hosts_arg, default=list(DEFAULT_HOSTS),
                   help=f"lab host kinds, comma-separated, or all (default). {kinds}")  # fmt: skip


def add_build_opts(p: argparse.ArgumentParser) -> None:
    p.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 1, help="make jobs")
    p.add_argument("--no-apt", action="store_true", help="never apt-get install anything")
    p.add_argument("--force", action="store_true", help="rebuild every part")
    p.add_argument("--kernel-tree", help="kernels built to order come from this tree (default: Debian's "
                   "linux-source-6.12, unpacked into the cache)")
    p.add_argument("--kernel-image", action="append", metavar="NAME=PATH",
                   help="use this prebuilt kernel image for the kernel build NAME (x86-idle) instead of building it")


def add_up_opts(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port-base", type=int, default=qemu.DEFAULT_PORT_BASE,
                   help="hosts listen on 127.0.0.1:BASE+1.. (default %(default)s; 0: free ports)")
    p.add_argument("--mem", help="guest memory per host (default: the kind's, 3G)")
    p.add_argument("--smp", type=int, help="vCPUs per host (default: the kind's, 2)")
    p.add_argument("--results", default="results/lab",
                   help="directory for results, Allure files and the table, mounted at the same path in every "
                   "guest (default %(default)s, relative to the current directory; '' for none)")
    p.add_argument("--rootdir", default=".", help="the pytest rootdir copied into the guests (default: here)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the hosts to boot")


def add_run_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run-dir", help="where the hosts' state, consoles and initrds live "
                   "(default ~/.cache/pytest-kvmmm/lab/run)")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="kvmmm-lab", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("build", help="build the images (cached)")
    add_host_opts(p)
    add_build_opts(p)
    p.set_defaults(func=cmd_build)
    p = sub.add_parser("up", help="boot the hosts")
    add_host_opts(p)
    add_up_opts(p)
    add_run_dir(p)
    p.set_defaults(func=cmd_up)
    p = sub.add_parser("run", help="up, pytest, table, down")
    add_host_opts(p)
    add_up_opts(p)
    add_run_dir(p)
    p.add_argument("--at-once", type=int, default=MAX_AT_ONCE, help="hosts booted at once (default %(default)s)")
    p.add_argument("--no-local", action="store_true", help="run on the lab hosts only, not on this host")
    p.add_argument("pytest_args", nargs="*", help="pytest arguments, after -- (default: every catalogue entry at "
                   "the lab scale, every guest mode)")
    p.set_defaults(func=cmd_run)
    for name, func in (("down", cmd_down), ("status", cmd_status)):
        p = sub.add_parser(name, help=f"{name} of the hosts")
        add_run_dir(p)
        p.set_defaults(func=func)
    return ap


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
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
    except OSError as exc:
        err(f"error: {exc.strerror or exc}: {exc.filename or ''}")
        return 1
    except KeyboardInterrupt:
        err("interrupted; lab hosts stopped")
        return 130
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)


if __name__ == "__main__":
    sys.exit(main())
