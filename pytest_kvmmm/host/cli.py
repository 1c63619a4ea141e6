"""``kvmmm-snapshot``: capture this host's facts for offline review or a bug report."""

from __future__ import annotations

import argparse
import sys
import tarfile
import tempfile
from pathlib import Path

from .. import __version__
from .probe import probe_host
from .report import text_report
from .snapshot import capture


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="kvmmm-snapshot",
        description="Capture the sysfs/procfs files pytest-kvmmm reads and the KVM API's answers, "
        "so `pytest --kvm-host-snapshot=OUT` reproduces this host's skip decisions elsewhere.",
    )
    ap.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    ap.add_argument("out", type=Path, help="a directory, or a file ending in .tar.gz to write a tarball")
    args = ap.parse_args(argv)
    out: Path = args.out
    try:
        if out.name.endswith((".tar.gz", ".tgz")):
            with tempfile.TemporaryDirectory() as tmp:
                snap = capture(Path(tmp) / out.name.split(".")[0])
                with tarfile.open(out, "w:gz") as tar:
                    tar.add(snap, arcname=snap.name)
                facts = probe_host(snap)
        else:
            snap = capture(out)
            facts = probe_host(snap)
    except OSError as exc:
        print(f"kvmmm-snapshot: cannot write {out}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(text_report(facts))
    print(f"\nsnapshot written to {out}; use it with: pytest --kvm-host-snapshot={out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
