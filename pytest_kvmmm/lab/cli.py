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
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from .. import __version__
from . import qemu, run
from .boot import cache_root, down, err, run_dir, tx_args, up
from .build import build_all
from .hosts import DEFAULT_HOSTS, HOST_KINDS, parse_hosts
from .image import BuildSettings, LabError, LabUnavailable
from .kbuild import parse_kernel_images


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


def cmd_up(args: argparse.Namespace) -> int:
    states = up(args, args.hosts)
    print(" ".join(tx_args(states)))
    err(f"stop them with: kvmmm-lab down{f' --run-dir {args.run_dir}' if args.run_dir else ''}")
    return 0


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
    p.add_argument("--smp", type=int, help="vCPUs per host (default: the kind's: 1 on x86, 2 on arm64)")
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
    p.add_argument("--at-once", type=int, default=run.MAX_AT_ONCE, help="hosts booted at once (default %(default)s)")
    p.add_argument("--no-local", action="store_true", help="run on the lab hosts only, not on this host")
    p.add_argument("pytest_args", nargs="*", help="pytest arguments, after -- (default: every catalogue entry at "
                   "the lab scale, every guest mode)")
    p.set_defaults(func=run.run)
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
