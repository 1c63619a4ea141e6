"""``kvmmm-lab run``: for each batch of hosts, up, one pytest run on this host and the lab
hosts (``--dist each``), down; then the entry x host table of every batch's results.

The pytest command line is built here (also for the CI lab stage): the lab's default
selection, and the results, Allure and dashboard exports written into the directory the
guests share.
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
from pathlib import Path
from typing import Any

from . import pathargs, qemu, table
from .boot import down, err, results_dir, run_dir, tx_args, up
from .image import LabError

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
    for stale in (*share.glob("lab*.jsonl"), *share.glob("lab*.junit.xml"), *share.glob("lab*.kcidb.json"),
                  *share.glob("lab*.arg[0-9]*")):
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


def _pytest_version() -> str:
    from importlib.metadata import version

    return version("pytest")


def run_lab(args: argparse.Namespace) -> tuple[int, float, list[qemu.HostState]]:
    """For each batch of hosts: up, pytest, down (also on Ctrl-C). This host runs in the first
    batch only. Returns the worst pytest status, the wall time, the hosts."""
    share = results_dir(args)
    if share is not None and has_option(args.pytest_args, "--kvm-results"):
        # each batch writes its own lab-N.jsonl there, which the entry x host table reads: a
        # file of the user's would hold the last batch only, and the table would be empty
        raise LabError(f"--kvm-results: kvmmm-lab writes every batch's results into --results ({share}) "
                       "as lab-N.jsonl; leave --kvm-results out (or give --results '' to run without a table)")
    if share is not None:
        shutil.rmtree(share / "allure", ignore_errors=True)
        share.mkdir(parents=True, exist_ok=True)
        remove_stale(share)
    rdir, rootdir = run_dir(args), Path(os.path.abspath(args.rootdir))
    status, every = 0, []
    start = time.monotonic()
    for n, batch in enumerate(batches(args.hosts, args.at_once)):
        label = f"lab-{n + 1}"
        try:
            user = pathargs.via_argfiles(args.pytest_args, rootdir, share, label, _pytest_version())
        except (ValueError, OSError) as exc:
            raise LabError(str(exc)) from None
        lost: list[str] = []  # hosts that did not come up (said by up): the run fails, the others run
        states = up(args, batch, lost)
        status = status or (1 if lost else 0)
        every += states
        try:
            argv = pytest_argv(tx_args(states), user, share, label, local=n == 0 and not args.no_local)
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


def run(args: argparse.Namespace) -> int:
    """``kvmmm-lab run``: the batches, then the table (printed and saved as table.txt)."""
    status, wall, _ = run_lab(args)
    share = results_dir(args)
    err(f"lab wall time {wall:.1f} s")
    if share is not None:
        lines = table.render(read_all_results(share))
        (share / "table.txt").write_text("\n".join(lines) + "\n")
        print("\n".join(lines))
    return status
