"""The ``pytest11`` entry point of pytest-kvmmm: its hooks and fixtures, re-exported.

The adapter lives in ``pytest_kvmmm/pytest/`` (hooks, the session object, xdist's hooks,
fixtures, parametrization, options, markers, stash keys); this module only names what
pytest should load, as labgrid's ``pytestplugin`` does.
"""

from __future__ import annotations

from .pytest.fixtures import (
    kvm_host,
    kvm_hugetlb_pools,
    kvm_info,
    kvm_params,
    kvm_result,
    kvm_scale,
    kvm_selftests,
    kvm_ttrem,
)
from .pytest.hooks import pytest_addoption, pytest_cmdline_main, pytest_configure

__all__ = [
    "kvm_host",
    "kvm_hugetlb_pools",
    "kvm_info",
    "kvm_params",
    "kvm_result",
    "kvm_scale",
    "kvm_selftests",
    "kvm_ttrem",
    "pytest_addoption",
    "pytest_cmdline_main",
    "pytest_configure",
]
