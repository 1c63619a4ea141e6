"""kvm_page_table_test over the backing sources: create, update under dirty logging, adjust.

The ids are static (the backing source), so every xdist worker and lab host collects the
same tests; sizes come from ``--kvm-scale`` and are capped to the host at run time.
"""

from __future__ import annotations

import pytest

from pytest_kvmmm.backing import BACKING_SOURCES, backing_requirements
from pytest_kvmmm.fixtures import SelftestRunner
from pytest_kvmmm.host import HostFacts
from pytest_kvmmm.scale import Scale, fit

PAGE_TABLE_BACKINGS = (
    "anonymous",
    "anonymous_thp",
    "anonymous_hugetlb_2mb",
    "anonymous_hugetlb_1gb",
    "shmem",
    "shared_hugetlb",
)
STAGES = ("KVM_CREATE_MAPPINGS", "KVM_UPDATE_MAPPINGS", "KVM_ADJUST_MAPPINGS")


def _param(backing: str) -> object:
    src = BACKING_SOURCES[backing]
    marks = [pytest.mark.pagetable, pytest.mark.perf]
    if src.hugetlb:
        marks.append(pytest.mark.hugetlb)
    if src.thp:
        marks.append(pytest.mark.thp)
    return pytest.param(backing, marks=marks, id=backing)


@pytest.mark.parametrize("backing", [_param(b) for b in PAGE_TABLE_BACKINGS])
def test_kvm_page_table(
    backing: str, kvm_selftests: SelftestRunner, kvm_host: HostFacts, kvm_scale: Scale
) -> None:
    src = BACKING_SOURCES[backing]
    # hugetlb memory comes from the pool, not from MemAvailable: the pool check covers it.
    sizing = fit(
        kvm_scale.page_table_bytes,
        kvm_scale.page_table_vcpus,
        kvm_host.cpus_online,
        None if src.hugetlb else kvm_host.mem_available,
    )
    if sizing.unfit:
        pytest.skip(sizing.unfit)
    result = kvm_selftests.run(
        "kvm_page_table_test",
        "-s", backing,
        "-b", sizing.size_arg,
        "-v", sizing.vcpus,
        requires=backing_requirements(backing, sizing.bytes, kvm_host.hugetlb_default_kb),
        notes=sizing.notes,
    )
    missing = [stage for stage in STAGES if stage not in result.metrics]
    assert not missing, f"kvm_page_table_test passed but printed no time for {missing}"
