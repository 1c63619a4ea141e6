"""Every KVM selftest of a kernel version, with its default arguments: ``pytest -m kvm``.

What kselftest's ``kvm`` collection and the upstream runner's ``default.test`` files run, as
pytest tests with this plugin's outcomes, kernel watch and records. The names come from the
static per-architecture lists of ``all_kvm`` (the union of every architecture, so collection
is the same on every host and xdist worker); at run time a test skips on a host of another
architecture, and the binary decides the rest (a build that lacks it: as for every selftest
test, ``--kvm-allow-missing``). The ``pagetable`` suite (``test_mm.py``) stays the rich one:
sizes, backings, guest modes, metrics.
"""

import pytest

from pytest_kvmmm.pytest.keys import EXPECTED_KERNEL_KEY
from pytest_kvmmm.suite.all_kvm import DEFAULT_VERSION, all_names, machines_of
from pytest_kvmmm.suite.catalogue import BY_NAME


def _name(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def _params() -> list[object]:
    return [
        pytest.param(
            path,
            id=path,
            marks=(
                pytest.mark.kvm_selftest(_name(path)),
                pytest.mark.kvm_requires(arch=list(machines_of(DEFAULT_VERSION, path)), kvm=True),
            ),
        )
        for path in all_names(DEFAULT_VERSION)
    ]


@pytest.fixture(autouse=True)
def _expected_kernel(request: pytest.FixtureRequest) -> None:
    """A catalogue binary provokes some kernel lines on purpose (set_memory_region_test's internal
    error): the catalogue says which, and the kernel watch notes them instead of failing."""
    entry = BY_NAME.get(_name(request.node.callspec.params["kvm_selftest_path"]))
    if entry is not None:
        request.node.stash[EXPECTED_KERNEL_KEY] = entry.expected_kernel


@pytest.mark.kvm
@pytest.mark.parametrize("kvm_selftest_path", _params())
def test_kvm(kvm_selftest_path: str) -> None:
    """The binary decides: exit 0 passes, 4 (KSFT_SKIP) skips with its reason, anything else fails."""
