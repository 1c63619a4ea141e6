#!/usr/bin/env python3
"""Re-capture the real ``-h`` outputs in this directory from a selftests build.

    python tests/golden/help/capture.py ~/.cache/pytest-kvmmm/selftests/6.12.117 6.12.117-x86_64

Each binary writes ``<binary>.real-<label>.stdout``, ``.stderr`` and ``.rc``. The label says
which build and host produced it, so real captures never pass for synthetic ones
(``<binary>.synthetic-<what>.stdout``, written by hand from the kernel sources). The
binaries without a mode table are captured too: they pin what "no table" looks like.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from pytest_kvmmm.engine.discovery import Found, SearchRoot, find_binary  # noqa: E402
from pytest_kvmmm.engine.process import run  # noqa: E402

BINARIES = (
    # Take -m and print the guest-mode table.
    "kvm_page_table_test",
    "dirty_log_perf_test",
    "demand_paging_test",
    "access_tracking_perf_test",
    "memslot_modification_stress_test",
    "dirty_log_test",
    # No table: -m means something else, -h exits 255, or requirements are checked first.
    "max_guest_memory_test",
    "memslot_perf_test",
    "dirty_log_page_splitting_test",
)


def main(build: str, label: str) -> int:
    root = SearchRoot(Path(build), "capture")
    here = Path(__file__).parent
    for name in BINARIES:
        found = find_binary(name, [root])
        if not isinstance(found, Found):
            print(f"skip {name}: {found.reason()}", file=sys.stderr)
            continue
        res = run([str(found.path), "-h"], timeout=30)
        stem = f"{name}.real-{label}"
        (here / f"{stem}.stdout").write_text(res.stdout)
        (here / f"{stem}.stderr").write_text(res.stderr)
        (here / f"{stem}.rc").write_text(f"{res.returncode}\n")
        print(f"{name}: rc={res.returncode} table={'Guest mode IDs:' in res.stdout}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1], sys.argv[2]))
