"""Up and down of the lab hosts: boot them from their cached images, wait for their servers,
ask each for its facts, and stop them again (also on any failure while booting).

Shared by ``kvmmm-lab up/down/status`` (cli.py), ``kvmmm-lab run`` (run.py) and the CI lab
stage (ci/lab/lab.py).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from . import overlay, qemu
from .build import load_image
from .hosts import HOST_KINDS
from .image import LabError, LabPaths, LabUnavailable


def cache_root() -> Path:
    from ..provision.cache import default_cache_root

    return Path(os.path.abspath(default_cache_root()))


def lab_paths() -> LabPaths:
    return LabPaths(cache_root() / "lab")


def err(text: str) -> None:
    sys.stderr.write(f"[lab] {text}\n")
    sys.stderr.flush()


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


def up(args: argparse.Namespace, hosts: Sequence[str], lost: list[str] | None = None) -> list[qemu.HostState]:
    """Boot the hosts, wait for their servers, ask each for its facts; stop them on any failure.
    With ``lost``, a host that does not come up is stopped and said there, and the others go on
    (a LabError only when none came up)."""
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
        failed = qemu.wait_ready(states, args.timeout, keep_going=lost is not None)
        if failed and lost is not None:
            for name, what in qemu.stop([s for s in states if s.name in failed]).items():
                err(f"{name} did not come up ({what}): {failed[name]}")
            lost += list(failed.values())
            states = [s for s in states if s.name not in failed]
            qemu.save_state(rdir, states)
            if not states:
                raise LabError("; ".join(failed.values()))
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
