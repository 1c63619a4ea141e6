"""``kvmmm-compare BEFORE AFTER``: the before/after table of two saved runs, outside pytest.

The case it is for: run the suite with ``--kvm-save before`` on the old kernel, reboot into
the new one, run it with ``--kvm-save after``, then ``kvmmm-compare before after --markdown``
for the cover letter.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .. import __version__
from . import store
from .compare import compare
from .plot import PlotError, write_png
from .table import markdown, terminal_lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="kvmmm-compare",
        description="Compare two runs saved with pytest --kvm-save: before, after, change and a verdict per metric.",
    )
    ap.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    ap.add_argument("before", metavar="BEFORE", help="baseline NAME (in the baselines folder) or FILE")
    ap.add_argument("after", metavar="AFTER", help="baseline NAME or FILE")
    ap.add_argument("--markdown", action="store_true", help="print the table as Markdown (for a cover letter)")
    ap.add_argument("--png", metavar="FILE", type=Path, help="also draw a bar chart to FILE (needs matplotlib)")
    ap.add_argument("--force", action="store_true", help="give verdicts even when the two hosts' fingerprints differ")
    ap.add_argument("--baselines", metavar="DIR", help=f"the baselines folder (default: ${store.BASELINES_ENV}, "
                    "else ~/.cache/pytest-kvmmm/baselines)")
    args = ap.parse_args(argv)
    directory = store.baselines_dir(args.baselines)
    try:
        before = store.load(store.find(args.before, directory))
        after = store.load(store.find(args.after, directory))
    except store.BaselineError as exc:
        print(f"kvmmm-compare: {exc}", file=sys.stderr)
        return 1
    comparison = compare(before, after, force=args.force)
    print(markdown(comparison) if args.markdown else "\n".join(terminal_lines(comparison)), end="" if args.markdown else "\n")
    if args.png is not None:
        try:
            write_png(comparison, args.png)
        except PlotError as exc:
            print(f"kvmmm-compare: {exc}", file=sys.stderr)
            return 1
        print(f"chart written to {args.png}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
