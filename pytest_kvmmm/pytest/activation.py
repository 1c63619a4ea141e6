"""When the plugin may touch the host: a good citizen in a virtual environment shared with other tests.

Installed, the plugin is loaded by every pytest run of the environment. A run that collects
no selftest test and names no ``--kvm-*`` option must not open ``/dev/kvm``, create a scratch
VM, read ``/dev/kmsg``, replay journals or print header lines. These two predicates decide
it; the session plugin probes and replays only once one of them holds.
"""

from __future__ import annotations

from typing import Any

import pytest

#: Fixtures that read the host or run a selftest (``kvm_scale`` and ``kvm_params`` alone do not).
HOST_FIXTURES = frozenset(
    {"kvm_host", "kvm_info", "kvm_hugetlb_pools", "kvm_ttrem", "kvm_selftests", "kvm_result", "kvm_case"}
)
HOST_MARKERS = ("kvm_selftest", "kvm_requires", "kvm_param_values")


def named_option(config: pytest.Config) -> bool:
    """Whether the run names any ``--kvm-*`` option (command line, addopts or PYTEST_ADDOPTS)."""
    return any(key.startswith("kvm_") and value not in (None, False, [], "") for key, value in vars(config.option).items())


def is_selftest_item(item: pytest.Item) -> bool:
    """Whether a test needs the host: a selftest marker, a host fixture, or module parameters."""
    if any(item.get_closest_marker(name) is not None for name in HOST_MARKERS):
        return True
    names: Any = getattr(item, "fixturenames", ())
    if HOST_FIXTURES.intersection(names):
        return True
    params = getattr(getattr(item, "callspec", None), "params", {})
    return bool(params.get("kvm_params"))
