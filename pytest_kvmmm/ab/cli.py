"""``kvmmm-ab BEFORE AFTER -- PYTEST-ARGS``: a patched KVM against the stock one, on this host, in one command.

BEFORE and AFTER are each ``stock`` (the KVM modules this host booted with), a directory holding
a built ``kvm.ko`` and its vendor module, or a kernel source (tree or ``linux-source`` tarball)
that is built for the running kernel, with ``--before-patch``/``--after-patch`` applied. Then the
selection runs in interleaved rounds, each side under its modules, and the paired verdicts are
printed as a cover-letter table. Swapping modules changes the host: it needs
``--allow-host-changes``, is journalled, and the stock modules always go back (also after a
failure, Ctrl-C, SIGTERM, or, after a crash, at the next ``kvmmm-ab``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import __version__
from ..baseline import store
from ..baseline.fingerprint import Fingerprint
from ..provision.cache import default_cache_root
from ..provision.kvm_modules import (
    ModuleBuild,
    build_modules,
    debian_headers,
    read_build,
    target_from_kbuild,
)
from ..provision.source import ProvisionError
from .modules import ModuleSwap, SwapError, build_files, loaded, restore_stale
from .paired import REGRESSED, RoundRecords, paired_changes
from .remote import RemoteError
from .rounds import RoundError, Side, run_rounds
from .table import AbReport, markdown, terminal, to_json


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    argv = list(sys.argv[1:] if argv is None else argv)
    pytest_args: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, pytest_args = argv[:cut], argv[cut + 1:]
    ap = argparse.ArgumentParser(prog="kvmmm-ab", description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    ap.add_argument("before", metavar="BEFORE", help="stock | DIR with kvm.ko | kernel tree or tarball to build")
    ap.add_argument("after", metavar="AFTER", help="the same kinds as BEFORE")
    ap.add_argument("--before-patch", action="append", default=[], type=Path, metavar="PATCH", help="patch for BEFORE's source (repeatable)")
    ap.add_argument("--after-patch", action="append", default=[], type=Path, metavar="PATCH", help="patch for AFTER's source (repeatable)")
    ap.add_argument("--rounds", type=int, default=7,
                    help="interleaved rounds (default 7; a time verdict needs 6, a count verdict 3)")
    ap.add_argument("--allow-host-changes", action="store_true", help="allow swapping this host's KVM modules (journalled, restored)")
    ap.add_argument("--kbuild", type=Path, help="kbuild dir of the running kernel (default /lib/modules/RELEASE/build, "
                    "else Debian's linux-headers-RELEASE, downloaded)")  # fmt: skip
    ap.add_argument("--release", help="build for this kernel release instead of the running one (e.g. a lab host's; "
                    "implies --build-only)")  # fmt: skip
    ap.add_argument("--on", metavar="GATEWAY", help="run the rounds on another host through an execnet gateway "
                    "(socket=HOST:PORT of a lab host, ssh=HOST): modules are built here for its kernel and sent there")  # fmt: skip
    ap.add_argument("--param", action="append", default=[], metavar="MODULE.NAME=VALUE", help="module parameter for both sides (e.g. kvm.tdp_mmu=Y)")
    ap.add_argument("--workdir", type=Path, default=Path("kvmmm-ab"), help="rounds' results and logs (default ./kvmmm-ab)")
    ap.add_argument("--save", metavar="NAME", help="also save the runs as baselines NAME-before and NAME-after (for kvmmm-compare)")
    ap.add_argument("--markdown", type=Path, metavar="FILE", help="write the table as Markdown")
    ap.add_argument("--json", type=Path, metavar="FILE", help="write the table as JSON")
    ap.add_argument("--build-only", action="store_true", help="build BEFORE and AFTER, print their directories, run nothing")
    ap.add_argument("--fail-regressed", action="store_true", help="exit 1 when a metric regressed")
    args = ap.parse_args(argv)
    args.pytest_args = pytest_args
    args.build_only = args.build_only or bool(args.release)
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    return args


def parse_params(specs: Sequence[str]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for spec in specs:
        key, eq, value = spec.partition("=")
        module, dot, name = key.partition(".")
        if not (eq and dot and module and name and value):
            raise SwapError(f"--param {spec}: give MODULE.NAME=VALUE, e.g. kvm.tdp_mmu=Y")
        out.setdefault(module.replace("-", "_"), {})[name] = value
    return out


def resolve(spec: str, patches: Sequence[Path], release: str, kbuild: Path | None) -> tuple[ModuleBuild | None, Path | None]:
    """``stock`` -> (None, None); a build directory -> its manifest or the directory; a source -> a build."""
    if spec == "stock":
        if patches:
            raise ProvisionError("stock takes no patches: give a kernel source to patch")
        return None, None
    path = Path(spec).expanduser()
    if path.is_dir() and (path / "kvm.ko").is_file():
        return read_build(path), path
    cache = default_cache_root()
    default_kbuild = Path(f"/lib/modules/{release}/build")
    if kbuild is not None:
        target = target_from_kbuild(kbuild)
    elif (default_kbuild / "Module.symvers").is_file():
        target = target_from_kbuild(default_kbuild)
    else:
        target = debian_headers(release, cache, sys.stderr)
    build = build_modules(path, target, patches, cache, sys.stderr)
    return build, build.path


def describe(spec: str, build: ModuleBuild | None, release: str) -> str:
    if spec == "stock":
        return f"stock KVM modules of {release}"
    return f"{build.label} ({build.path})" if build else spec


def report_for(runs: Sequence[RoundRecords], builds: dict[str, str], rounds: int, pytest_args: Sequence[str]) -> AbReport:
    records = {(str(r.get("host") or ""), str(r.get("nodeid") or "")): r for run in runs for r in run.records}
    return AbReport(paired_changes(runs), builds, rounds, ["pytest", *pytest_args], records)


def side_records(runs: Sequence[RoundRecords], side: str) -> list[dict[str, Any]]:
    """One record per test for one side, its samples those of every round it passed in."""
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    samples: dict[tuple[str, str], dict[str, list[float]]] = {}
    for run in (r for r in runs if r.side == side):
        for rec in run.records:
            key = (str(rec.get("host")), str(rec.get("nodeid")))
            merged[key] = dict(rec)
            got = samples.setdefault(key, {})
            passed = rec.get("samples") if rec.get("status") == "passed" else None
            for metric, values in passed.items() if isinstance(passed, dict) else ():
                got.setdefault(str(metric), []).extend(float(v) for v in values)
    return [{**rec, "samples": samples[key], "status": "passed" if samples[key] else rec.get("status")}
            for key, rec in merged.items()]  # fmt: skip


def save_baselines(name: str, runs: Sequence[RoundRecords], pytest_args: Sequence[str]) -> list[Path]:
    """The two sides as baselines ``NAME-before`` and ``NAME-after``, for ``kvmmm-compare`` later."""
    directory = store.baselines_dir()
    paths = []
    for side in ("before", "after"):
        records = side_records(runs, side)
        hosts = {str(r.get("host")) for r in records}
        baseline = store.from_records(records, {h: Fingerprint() for h in hosts}, name=f"{name}-{side}",
                                      repeat=len({r.round for r in runs}), command=["kvmmm-ab", *pytest_args])  # fmt: skip
        path = store.save_path(f"{name}-{side}", directory)
        store.save(baseline, path)
        paths.append(path)
    return paths


def run(args: argparse.Namespace) -> int:
    remote = None
    if args.on:
        from .remote import remote_release

        remote, _machine = remote_release(args.on)
    release = args.release or remote or platform.release()
    journal_dir = default_cache_root() / "journal"
    if os.geteuid() == 0 and not args.on:
        for line in restore_stale(journal_dir):
            print(f"kvmmm-ab: {line} (left by a kvmmm-ab that died)", file=sys.stderr)
    (before, before_dir) = resolve(args.before, args.before_patch, release, args.kbuild)
    (after, after_dir) = resolve(args.after, args.after_patch, release, args.kbuild)
    builds = {"before": describe(args.before, before, release), "after": describe(args.after, after, release)}
    if args.build_only:
        for side, what in builds.items():
            print(f"{side}: {what}")
        return 0
    if not args.pytest_args:
        raise RoundError("give the tests to run after --, e.g. -- --pyargs pytest_kvmmm.suite -m pagetable -k kvm_page_table")
    if not args.allow_host_changes:
        raise SwapError("kvmmm-ab swaps the KVM modules of the host it measures between rounds: add --allow-host-changes "
                        "(journalled, and the stock modules always go back)")  # fmt: skip
    params = parse_params(args.param)
    if args.on:
        from .remote import pack, run_remote

        sides_spec = {"before": (builds["before"], pack(before_dir)), "after": (builds["after"], pack(after_dir))}
        runs = run_remote(args.on, sides_spec, args.rounds, args.pytest_args, str(args.workdir.absolute()), params, sys.stderr)
    else:
        runs = run_here(builds, before_dir, after_dir, params, args, journal_dir, release)
    print("kvmmm-ab: the stock KVM modules are loaded again", file=sys.stderr)
    report = report_for(runs, builds, args.rounds, args.pytest_args)
    print(terminal(report), end="")
    write_outputs(report, runs, args)
    return 1 if args.fail_regressed and any(c.verdict == REGRESSED for c in report.changes) else 0


def run_here(builds: dict[str, str], before_dir: Path | None, after_dir: Path | None, params: dict[str, dict[str, str]],
             args: argparse.Namespace, journal_dir: Path, release: str) -> list[RoundRecords]:  # fmt: skip
    """The rounds on this host, under a journalled swap that always ends with the stock modules."""
    state = loaded()
    if state is None:
        raise SwapError("KVM is not loaded as modules here: nothing to swap (compare two kernels in the lab instead)")
    sides = {
        "before": Side("before", builds["before"], build_files(before_dir, state.vendor) if before_dir else None, params),
        "after": Side("after", builds["after"], build_files(after_dir, state.vendor) if after_dir else None, params),
    }
    with ModuleSwap(journal_dir, release) as swap:
        return run_rounds(sides, args.rounds, args.pytest_args, args.workdir, swap, sys.stderr)


def write_outputs(report: AbReport, runs: Sequence[RoundRecords], args: argparse.Namespace) -> None:
    if args.markdown:
        args.markdown.write_text(markdown(report))
    if args.json:
        args.json.write_text(json.dumps(to_json(report), indent=1) + "\n")
    if args.save:
        for path in save_baselines(args.save, runs, args.pytest_args):
            print(f"kvmmm-ab: saved {path}", file=sys.stderr)


def _exit_on_signal(signum: int, _frame: object) -> None:
    """SIGTERM and SIGHUP unwind like Ctrl-C, so the ``with ModuleSwap`` puts the stock modules back."""
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _exit_on_signal)
    try:
        return run(parse_args(argv))
    except (SwapError, ProvisionError, RoundError, RemoteError, store.BaselineError) as exc:
        print(f"kvmmm-ab: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"kvmmm-ab: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kvmmm-ab: interrupted; the stock KVM modules are loaded again", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
