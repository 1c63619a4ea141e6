"""The markers' parsers: what a well-formed marker gives, and the one-line usage error that
quotes the signature when it is not."""

from __future__ import annotations

from typing import Any

import pytest

from pytest_kvmmm.engine.requirements import (
    Arch,
    HugetlbPages,
    IdleTracking,
    KvmCap,
    KvmParam,
    MinMemory,
    TtremLevel,
)
from pytest_kvmmm.pytest.baseline import parse_pct, parse_regression_marker
from pytest_kvmmm.pytest.markers import MARKERS, parse_requires, parse_selftest_marker


def mark(name: str, *args: Any, **kwargs: Any) -> pytest.Mark:
    return getattr(pytest.mark, name)(*args, **kwargs).mark  # type: ignore[no-any-return]


def test_every_marker_is_registered_with_its_help() -> None:
    assert {"kvm_selftest", "kvm_requires", "kvm_param_values", "pagetable", "perf"} <= set(MARKERS)


def test_a_selftest_marker_gives_name_args_and_timeout() -> None:
    call = parse_selftest_marker(mark("kvm_selftest", "kvm_page_table_test", "-b", "64M", "-v", 2, timeout=30))
    assert (call.name, call.args, call.timeout) == ("kvm_page_table_test", ("-b", "64M", "-v", "2"), 30)


@pytest.mark.parametrize(
    ("args", "kwargs", "why"),
    [
        ((), {}, "the first argument must be the binary's name"),
        (("",), {}, "the first argument must be the binary's name"),
        (("t",), {"timout": 3}, "unknown keyword(s) timout"),
        (("t", True), {}, "arguments must be strings or numbers, got True"),
        (("t", ["-b"]), {}, "arguments must be strings or numbers"),
        (("t",), {"timeout": 0}, "timeout must be a finite positive number of seconds, got 0"),
        (("t",), {"timeout": "5"}, "timeout must be a finite positive number of seconds, got '5'"),
    ],
)
def test_a_wrong_selftest_marker_quotes_the_signature(args: tuple[Any, ...], kwargs: dict[str, Any], why: str) -> None:
    with pytest.raises(pytest.UsageError) as err:
        parse_selftest_marker(mark("kvm_selftest", *args, **kwargs))
    assert str(err.value).startswith("@pytest.mark.kvm_selftest(name, *args, timeout=None): ")
    assert why in str(err.value)


def test_requires_become_requirements() -> None:
    got = parse_requires(mark("kvm_requires", arch="aarch64", hugetlb={"2M": 512}, kvm_caps={"NR_MEMSLOTS": 2},
                              kvm_params={"tdp_mmu": True}, ttrem=2, min_memory="1G", page_idle=True))
    assert got == (
        Arch(("aarch64",)), HugetlbPages(2048, 512), KvmCap("NR_MEMSLOTS", 2), KvmParam("tdp_mmu", True),
        TtremLevel(2), MinMemory(1 << 30), IdleTracking(page_idle=True, mglru=False),
    )


@pytest.mark.parametrize(
    ("kwargs", "why"),
    [
        ({"hugepages": 3}, "unknown requirement 'hugepages'"),
        ({"kvm": "yes"}, "kvm='yes': takes True (leave it out when not needed)"),
        ({"hugetlb": {}}, "hugetlb={}: takes {page size: pages}"),
        ({"hugetlb": {"2X": 1}}, "hugetlb={'2X': 1}: not a size"),
        ({"kvm_params": {"tdp_mmu": "Y"}}, "takes {parameter: True/False}"),
        ({"min_vcpus": -1}, "min_vcpus=-1: takes a non-negative number"),
        ({"arch": []}, "arch=[]: takes a machine name or a list of them"),
    ],
)
def test_a_wrong_requires_marker_quotes_the_signature(kwargs: dict[str, Any], why: str) -> None:
    with pytest.raises(pytest.UsageError) as err:
        parse_requires(mark("kvm_requires", **kwargs))
    assert str(err.value).startswith("@pytest.mark.kvm_requires(arch=None, ")
    assert why in str(err.value)
    with pytest.raises(pytest.UsageError, match="takes keyword arguments only"):
        parse_requires(mark("kvm_requires", "x86_64"))


def test_regression_marker_thresholds() -> None:
    assert parse_regression_marker(mark("kvm_regression", 15, KVM_ADJUST_MAPPINGS=25)) == (15.0, {"KVM_ADJUST_MAPPINGS": 25.0})
    assert parse_regression_marker(mark("kvm_regression", pct="20%")) == (20.0, {})
    assert parse_regression_marker(mark("kvm_regression", run1=10)) == (None, {"run1": 10.0})
    with pytest.raises(pytest.UsageError, match="takes one threshold for every metric"):
        parse_regression_marker(mark("kvm_regression", 10, 20))
    with pytest.raises(pytest.UsageError, match=r"kvm_regression\(pct=None.*: run1: 2: the threshold must be at least 5"):
        parse_regression_marker(mark("kvm_regression", run1=2))


def test_a_percentage_names_where_it_came_from() -> None:
    assert parse_pct("12.5%", "ini kvm_fail_regression") == 12.5
    with pytest.raises(pytest.UsageError, match=r"^ini kvm_fail_regression: 'ten' is not a percentage$"):
        parse_pct("ten", "ini kvm_fail_regression")
    with pytest.raises(pytest.UsageError, match=r"^--kvm-fail-regression: '2': the threshold must be at least 5 percent"):
        parse_pct("2", "--kvm-fail-regression")
