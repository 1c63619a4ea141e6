#!/usr/bin/env python3
"""Re-capture the golden selftest outputs in this directory from a real build.

    python tests/golden/capture.py ~/.cache/pytest-kvmmm/selftests/6.12.117

Each case writes ``<case>.stdout``, ``<case>.stderr`` and ``<case>.rc`` (exit code). The
unit tests replay them through fake binaries, so they pin the parsers and the outcome
mapping to what real binaries print. Run it as root on a KVM host; the hugetlb cases
record what an empty pool does (exit 254 / 4), which is the point.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pytest_kvmmm.discovery import Found, SearchRoot, find_binary  # noqa: E402
from pytest_kvmmm.runner import run  # noqa: E402

PT = "kvm_page_table_test"
CASES: dict[str, tuple[str, ...]] = {
    "kvm_page_table_test.anonymous": (PT, "-s", "anonymous", "-b", "64M", "-v", "2"),
    "kvm_page_table_test.anonymous_thp": (PT, "-s", "anonymous_thp", "-b", "64M", "-v", "2"),
    "kvm_page_table_test.shmem": (PT, "-s", "shmem", "-b", "64M", "-v", "2"),
    "kvm_page_table_test.hugetlb_2mb_empty_pool": (PT, "-s", "anonymous_hugetlb_2mb", "-b", "64M", "-v", "2"),
    "kvm_page_table_test.shared_hugetlb_empty_pool": (PT, "-s", "shared_hugetlb", "-b", "64M", "-v", "2"),
    "kvm_page_table_test.help": (PT, "-h"),
    "access_tracking_perf_test.no_page_idle": ("access_tracking_perf_test", "-b", "64M", "-v", "2"),
    "nx_huge_pages_test.no_token": ("nx_huge_pages_test",),
    "dirty_log_page_splitting_test.no_tdp_mmu": ("dirty_log_page_splitting_test", "-b", "64M"),
    "set_memory_region_test.bad_arg": ("set_memory_region_test", "-h"),
}


def main(build: str) -> int:
    root = SearchRoot(Path(build), "capture")
    here = Path(__file__).parent
    for case, (name, *args) in CASES.items():
        found = find_binary(name, [root])
        if not isinstance(found, Found):
            print(f"skip {case}: {found.reason()}", file=sys.stderr)
            continue
        res = run([str(found.path), *args], timeout=120)
        (here / f"{case}.stdout").write_text(res.stdout)
        (here / f"{case}.stderr").write_text(res.stderr)
        (here / f"{case}.rc").write_text(f"{res.returncode}\n")
        print(f"{case}: rc={res.returncode} {res.duration_s:.2f}s")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1]))
