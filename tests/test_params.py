"""KVM module parameter values (``--kvm-param-values``): parsing, ids and paths, and why a value
cannot be set on a host."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from pytest_kvmmm.suite.params import ParamSetting, full_name, parse_option, unavailable


def test_a_setting_has_an_id_and_a_sysfs_path() -> None:
    s = ParamSetting("kvm.eager_page_split", "N")
    assert (s.id, s.path) == ("eager_page_split=N", "/sys/module/kvm/parameters/eager_page_split")
    assert ParamSetting("kvm_intel.ept", "Y").path == "/sys/module/kvm_intel/parameters/ept"


def test_names_default_to_the_kvm_module() -> None:
    assert full_name("tdp_mmu") == "kvm.tdp_mmu" and full_name("kvm_amd.npt") == "kvm_amd.npt"


def test_one_axis_per_option() -> None:
    axes = parse_option(["eager_page_split=Y, N", "kvm_intel.ept=Y"])
    assert axes == [
        [ParamSetting("kvm.eager_page_split", "Y"), ParamSetting("kvm.eager_page_split", "N")],
        [ParamSetting("kvm_intel.ept", "Y")],
    ]
    assert parse_option([]) == []


@pytest.mark.parametrize("bad", ["eager_page_split", "=Y,N", "eager_page_split=", "eager_page_split= , "])
def test_a_malformed_option_says_what_is_expected(bad: str) -> None:
    with pytest.raises(ValueError, match=r"expected NAME=V1,V2 such as kvm.eager_page_split=Y,N"):
        parse_option([bad])


def test_why_a_value_cannot_be_set_here() -> None:
    s = ParamSetting("kvm.eager_page_split", "N")
    assert unavailable(s, {"kvm.eager_page_split": SimpleNamespace(writable=True)}) is None
    read_only = unavailable(s, {"kvm.eager_page_split": SimpleNamespace(writable=False)})
    assert read_only is not None and "read-only here" in read_only and "boot with kvm.eager_page_split=N" in read_only
    missing = unavailable(s, {})
    assert missing is not None and missing.startswith("this host has no KVM parameter kvm.eager_page_split")
