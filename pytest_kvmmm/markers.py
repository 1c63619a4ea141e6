"""The markers pytest-kvmmm registers, and the parsing of ``kvm_selftest``."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

SELFTEST_SIGNATURE = "kvm_selftest(name, *args, timeout=None)"

MARKERS = {
    "kvm_selftest": (
        f"{SELFTEST_SIGNATURE}: run the KVM selftest binary NAME with ARGS when the test starts; "
        "exit 0 passes, 4 (KSFT_SKIP) skips with the binary's reason, anything else fails; "
        "the test body gets the result as the kvm_result fixture"
    ),
    "pagetable": "exercises KVM's guest page tables (the main job: pytest -m pagetable)",
    "hugetlb": "guest memory backed by hugetlb pages (needs a hugetlb pool)",
    "thp": "guest memory backed by transparent hugepages",
    "perf": "timing-oriented selftest: its metrics are the point",
}


@dataclass(frozen=True)
class SelftestCall:
    name: str
    args: tuple[str, ...]
    timeout: float | None


def parse_selftest_marker(mark: pytest.Mark) -> SelftestCall:
    """Validate a ``kvm_selftest`` mark; a wrong one is a UsageError quoting the signature."""

    def bad(why: str) -> pytest.UsageError:
        return pytest.UsageError(f"@pytest.mark.{SELFTEST_SIGNATURE}: {why}")

    if not mark.args or not isinstance(mark.args[0], str) or not mark.args[0]:
        raise bad("the first argument must be the binary's name, e.g. 'kvm_page_table_test'")
    unknown = set(mark.kwargs) - {"timeout"}
    if unknown:
        raise bad(f"unknown keyword(s) {', '.join(sorted(unknown))}")
    for arg in mark.args[1:]:
        if not isinstance(arg, (str, int, float)) or isinstance(arg, bool):
            raise bad(f"arguments must be strings or numbers, got {arg!r}")
    timeout = mark.kwargs.get("timeout")
    if timeout is not None and (not isinstance(timeout, (int, float)) or timeout <= 0):
        raise bad(f"timeout must be a positive number of seconds, got {timeout!r}")
    return SelftestCall(mark.args[0], tuple(str(a) for a in mark.args[1:]), timeout)
