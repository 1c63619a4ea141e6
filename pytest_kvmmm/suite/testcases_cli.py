"""``kvmmm-testcases``: write the catalogue's cases as the upstream KVM selftest runner's ``.test`` files.

``kvmmm-testcases write DIR`` writes ``DIR/<program path>/<case id>.test`` for every case of the
MM catalogue at a scale; ``--all`` also writes ``DIR/<program path>/default.test`` for every KVM
selftest of the kernel version and architecture, as ``make tests_install`` does upstream
(``DIR/x86_64/cpuid_test/default.test`` holding ``x86_64/cpuid_test``). The
same directory runs under the upstream runner (``python3 runner -d DIR``) and under pytest
(``pytest --kvm-testcases=DIR``).
"""

from __future__ import annotations

import argparse
import platform
import sys
from collections.abc import Sequence
from pathlib import Path

from .. import __version__
from ..coordination.safefs import UnsafePath
from .all_kvm import DEFAULT_VERSION, MACHINE_ARCH, SELFTESTS
from .scale import SCALES
from .testcases import SUFFIX, Testcase, catalogue_testcases, write

PROG = "kvmmm-testcases"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0].strip("`"))
    ap.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)
    w = sub.add_parser("write", help="write the catalogue's cases as .test files under DIR")
    w.add_argument("dir", type=Path, metavar="DIR")
    w.add_argument("--scale", choices=list(SCALES), default="default", help="sizes of the cases (default: default)")
    w.add_argument("--all", action="store_true", help="also every KVM selftest's default.test (its default arguments)")
    w.add_argument("--kernel", choices=sorted(SELFTESTS), default=DEFAULT_VERSION, help="kernel version of the lists")
    w.add_argument("--arch", choices=sorted({*MACHINE_ARCH.values()}), help="architecture (default: this host's)")
    args = ap.parse_args(argv)
    arch = args.arch or MACHINE_ARCH.get(platform.machine(), "x86_64")
    testcases = list(catalogue_testcases(args.scale, args.kernel, arch))
    if args.all:
        # as upstream's `make tests_install`: DIR/<TEST_GEN_PROGS entry>/default.test
        testcases += [(f"{path}/default{SUFFIX}", Testcase(path, ())) for path in SELFTESTS[args.kernel].get(arch, ())]
    try:
        written = write(args.dir, testcases)
    except UnsafePath as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"{PROG}: cannot write {exc.filename or args.dir}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(f"{PROG}: wrote {len(written)} test-case files under {args.dir} ({arch}, kernel {args.kernel}, scale {args.scale})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
