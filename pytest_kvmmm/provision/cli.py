"""``kvmmm-build``: build the KVM selftests of a kernel source into the pytest-kvmmm cache.

Exit status: 0 when at least one selftest built (failures are listed as a warning), 1 when
none built, on any error, or with ``--strict`` when any failed. Errors are one line on
stderr saying what went wrong and what to do; progress goes to stderr too, so stdout holds
only the report, the JSON manifest (``--json``) or the build directory (``--print-dir``).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from pytest_kvmmm import __version__
from pytest_kvmmm.provision.build import BUILD_LOG, BuildOptions, BuildResult, Target, provision
from pytest_kvmmm.provision.cache import default_cache_root
from pytest_kvmmm.provision.source import DEFAULT_PACKAGE, DEFAULT_TARBALL, ProvisionError

PROG = "kvmmm-build"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Build the kernel's KVM selftests (tools/testing/selftests/kvm) into the "
        "pytest-kvmmm cache, once per kernel version.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--source",
        type=Path,
        metavar="DIR|FILE",
        help=f"a kernel tree or a linux-source-*.tar.xz (default: {DEFAULT_TARBALL}, "
        f"apt-installing {DEFAULT_PACKAGE} when missing)",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        metavar="DIR",
        help=f"cache root (default: {default_cache_root()}; $KVMMM_CACHE_DIR overrides)",
    )
    parser.add_argument(
        "-j",
        "--jobs",
        type=int,
        metavar="N",
        default=os.cpu_count() or 1,
        help="parallel make jobs (default: %(default)s)",
    )
    parser.add_argument(
        "--arch",
        metavar="ARCH",
        help="build for another arch (arm64, aarch64, x86_64, ...), cross-compiled; the build "
        "goes to <version>-<machine> in the cache (default: this host's arch)",
    )
    parser.add_argument(
        "--cross-compile",
        metavar="PREFIX",
        help="the cross compiler's prefix (default for --arch arm64: aarch64-linux-gnu-, "
        "from Debian's gcc-aarch64-linux-gnu)",
    )
    parser.add_argument("--no-apt", action="store_true", help="never apt-get install anything")
    parser.add_argument(
        "--force", action="store_true", help="rebuild even if the cache is complete"
    )
    parser.add_argument(
        "--strict", action="store_true", help="exit 1 if any selftest failed to build"
    )
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print the build manifest as JSON")
    output.add_argument("--print-dir", action="store_true", help="print only the build directory")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    return args


def summary(result: BuildResult) -> str:
    """``kvm selftests 6.12.117 (x86_64): 85 built, 0 failed -> <build dir>``."""
    m = result.manifest
    return (
        f"kvm selftests {m.kernel_version} ({m.arch}): {len(m.built)} built, "
        f"{len(m.failed)} failed -> {result.build_dir}"
    )


def warnings(result: BuildResult) -> list[str]:
    """The failed names (with where to read why) and other notes; they go to stderr in every mode."""
    failed = result.manifest.failed
    notes = list(result.notes)
    if failed:
        log = result.build_dir / BUILD_LOG
        notes.insert(0, f"{len(failed)} failed to build: {' '.join(failed)} (see {log})")
    return notes


def main(argv: Sequence[str] | None = None) -> int:
    out, err = sys.stdout, sys.stderr
    args = parse_args(argv)
    cache_root = args.cache_dir if args.cache_dir is not None else default_cache_root()
    try:
        opts = BuildOptions(
            cache_root=Path(os.path.abspath(cache_root.expanduser())),
            jobs=args.jobs,
            target=Target.for_arch(args.arch, args.cross_compile),
            allow_apt=not args.no_apt,
            is_root=os.geteuid() == 0,
            force=args.force,
            progress=err,
        )
        result = provision(args.source, opts)
    except ProvisionError as exc:
        err.write(f"{PROG}: error: {exc}\n")
        return 1
    except OSError as exc:  # disk full, permissions, a vanished file: name the file and the cause
        where = f"{exc.filename}: " if exc.filename else ""
        err.write(
            f"{PROG}: error: {where}{exc.strerror or exc} (check --cache-dir and free space)\n"
        )
        return 1
    except KeyboardInterrupt:
        err.write(f"{PROG}: interrupted; the next run rebuilds\n")
        return 130
    if args.json:
        out.write(result.manifest.to_json())
    elif args.print_dir:
        out.write(f"{result.build_dir}\n")
    else:
        out.write(summary(result) + "\n")
    for warning in warnings(result):
        err.write(f"{PROG}: warning: {warning}\n")
    return 1 if args.strict and result.manifest.failed else 0


if __name__ == "__main__":
    sys.exit(main())
