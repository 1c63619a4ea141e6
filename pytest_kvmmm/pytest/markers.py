"""The markers pytest-kvmmm registers, and the parsing of ``kvm_selftest``."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pytest

from ..engine.requirements import (
    Arch,
    GuestGbpages,
    HugetlbPages,
    IdleTracking,
    KvmCap,
    KvmParam,
    KvmUsable,
    MinMemory,
    MinVcpus,
    Requirement,
    Tdp,
    ThpMadvise,
    TtremLevel,
)
from ..host.units import parse_size

SELFTEST_SIGNATURE = "kvm_selftest(name, *args, timeout=None)"
REQUIRES_SIGNATURE = (
    "kvm_requires(arch=None, kvm=None, page_idle=None, mglru=None, idle_tracking=None, thp=None, "
    "hugetlb=None, kvm_caps=None, kvm_params=None, tdp=None, gbpages=None, ttrem=None, "
    "min_vcpus=None, min_memory=None)"
)

MARKERS = {
    "kvm_selftest": (
        f"{SELFTEST_SIGNATURE}: run the KVM selftest binary NAME with ARGS when the test starts; "
        "exit 0 passes, 4 (KSFT_SKIP) skips with the binary's reason, anything else fails; "
        "the test body gets the result as the kvm_result fixture"
    ),
    "kvm_requires": (
        f"{REQUIRES_SIGNATURE}: host facts the test needs, checked before it runs; an unmet one "
        "skips with what is missing and how to get it, e.g. hugetlb={'2M': 512}, kvm_params={'tdp_mmu': True}"
    ),
    "kvm_param_values": (
        "kvm_param_values(name, values): run the test under each value of a KVM module parameter "
        "(e.g. 'eager_page_split', ['Y', 'N']); set and restored per test, skipped where read-only"
    ),
    "pagetable": "exercises KVM's guest page tables (the main job: pytest -m pagetable)",
    "kvm": "every KVM selftest of the kernel's list, with its default arguments (pytest -m kvm)",
    "dirty_log": "dirty logging (bitmap, clear-log, dirty ring)",
    "access_tracking": "access tracking / aging (page_idle, MGLRU)",
    "demand_paging": "demand paging through userfaultfd",
    "memslot": "memory slot operations",
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
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not math.isfinite(timeout) or timeout <= 0
    ):
        raise bad(f"timeout must be a finite positive number of seconds, got {timeout!r}")
    return SelftestCall(mark.args[0], tuple(str(a) for a in mark.args[1:]), timeout)


def _flag(make: Callable[[], Requirement]) -> Callable[[Any], list[Requirement]]:
    def build(value: Any) -> list[Requirement]:
        if value is not True:
            raise ValueError("takes True (leave it out when not needed)")
        return [make()]

    return build


def _arch(value: Any) -> list[Requirement]:
    names = (value,) if isinstance(value, str) else tuple(value)
    if not names or not all(isinstance(n, str) for n in names):
        raise ValueError("takes a machine name or a list of them, e.g. 'aarch64'")
    return [Arch(names)]


def _hugetlb(value: Any) -> list[Requirement]:
    if not isinstance(value, Mapping) or not value:
        raise ValueError("takes {page size: pages}, e.g. {'2M': 512}")
    return [HugetlbPages(parse_size(str(size)) // 1024, int(pages)) for size, pages in value.items()]


def _caps(value: Any) -> list[Requirement]:
    if isinstance(value, Mapping):
        return [KvmCap(str(name), int(minimum)) for name, minimum in value.items()]
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return [KvmCap(name) for name in value]
    raise ValueError("takes a list of capability names or {name: minimum}, e.g. ['PRE_FAULT_MEMORY']")


def _params(value: Any) -> list[Requirement]:
    if not isinstance(value, Mapping) or not all(isinstance(v, bool) for v in value.values()):
        raise ValueError("takes {parameter: True/False}, e.g. {'tdp_mmu': True}")
    return [KvmParam(str(name), flag) for name, flag in value.items()]


def _positive(make: Callable[[int], Requirement], parse: Callable[[Any], int] = int) -> Callable[[Any], list[Requirement]]:
    def build(value: Any) -> list[Requirement]:
        number = parse(value)
        if isinstance(value, bool) or number < 0:
            raise ValueError("takes a non-negative number")
        return [make(number)]

    return build


_REQUIRES: dict[str, Callable[[Any], list[Requirement]]] = {
    "arch": _arch,
    "kvm": _flag(KvmUsable),
    "page_idle": _flag(lambda: IdleTracking(page_idle=True, mglru=False)),
    "mglru": _flag(lambda: IdleTracking(page_idle=False, mglru=True)),
    "idle_tracking": _flag(IdleTracking),
    "thp": _flag(ThpMadvise),
    "hugetlb": _hugetlb,
    "kvm_caps": _caps,
    "kvm_params": _params,
    "tdp": _flag(Tdp),
    "gbpages": _flag(GuestGbpages),
    "ttrem": _positive(TtremLevel),
    "min_vcpus": _positive(MinVcpus),
    "min_memory": _positive(MinMemory, lambda v: parse_size(str(v))),
}


def parse_requires(mark: pytest.Mark) -> tuple[Requirement, ...]:
    """The requirements of a ``kvm_requires`` mark; a malformed one is a UsageError quoting the signature."""

    def bad(why: str) -> pytest.UsageError:
        return pytest.UsageError(f"@pytest.mark.{REQUIRES_SIGNATURE}: {why}")

    if mark.args:
        raise bad("takes keyword arguments only")
    out: list[Requirement] = []
    for key, value in mark.kwargs.items():
        build = _REQUIRES.get(key)
        if build is None:
            raise bad(f"unknown requirement {key!r}")
        try:
            out += build(value)
        except (TypeError, ValueError) as exc:
            raise bad(f"{key}={value!r}: {exc}") from None
    return tuple(out)
