"""ci/lab/counters_proof.py's checks (the CMO host against a max host), on records shaped like the
lab's: what the facts say must hold, and that a breach of each is caught."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("kvmmm_counters_proof", REPO / "ci" / "lab" / "counters_proof.py")
assert _spec is not None and _spec.loader is not None
proof = importlib.util.module_from_spec(_spec)
sys.modules["kvmmm_counters_proof"] = proof
_spec.loader.exec_module(proof)

GF = "kvm:kvm_guest_fault"


def record(backing: str, create: tuple[int, int], update: tuple[int, int], af: int = 0) -> dict[str, Any]:
    """A kvm_page_table_test record: (translation, permission) faults of two stages."""
    stages = {
        "KVM_CREATE_MAPPINGS": {f"{GF}[translation]": create[0], f"{GF}[permission]": create[1]},
        "KVM_UPDATE_MAPPINGS": {f"{GF}[translation]": update[0], f"{GF}[permission]": update[1]},
    }
    total = {f"{GF}[translation]": create[0] + update[0], f"{GF}[permission]": create[1] + update[1],
             f"{GF}[access_flag]": af}  # fmt: skip
    return {
        "nodeid": f"pytest_kvmmm/suite/test_mm.py::test_kvm_page_table[{backing}-p40v48_4k]",
        "status": "passed",
        "metrics": {"KVM_CREATE_MAPPINGS": 5.7, "KVM_UPDATE_MAPPINGS": 5.3},
        "counters": {"total": total, "stages": stages, "stage_order": list(stages)},
    }


def hosts(**max_changes: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    cmo = {"anonymous": record("anonymous", (4120, 0), (1, 4096)), "anonymous_thp": record("anonymous_thp", (37, 1), (2052, 7))}
    mx = {"anonymous": record("anonymous", **{"create": (4120, 14), "update": (1, 4082), **max_changes}),
          "anonymous_thp": record("anonymous_thp", (41, 1), (2042, 7))}  # fmt: skip
    return cmo, mx


def test_the_lab_hosts_counts_pass_and_the_table_has_both_hosts_side_by_side() -> None:
    cmo, mx = hosts()
    assert proof.problems(cmo, mx) == []
    table = proof.table(cmo, mx)
    assert table[0].startswith("| backing | stage | time cmo | time max |")
    assert "| anonymous | KVM_UPDATE_MAPPINGS | 5.300s | 5.300s | 1 | 1 | 4,096 | 4,082 |" in "\n".join(table)


def test_a_host_with_fewer_faults_than_pages_or_a_different_kind_is_caught() -> None:
    cmo, mx = hosts(create=(4120, 0), update=(1, 2048))
    assert any("permission faults, not >= 4096 and 4096" in p for p in proof.problems(cmo, mx))
    cmo, mx = hosts(create=(4400, 0), update=(1, 4096))  # 280 more translation faults on max
    assert proof.problems(cmo, mx) == [
        "anonymous: translation faults 4,121 on arm64-cmo, 4,401 on arm64-4k (the facts say equal)"
    ]


def aging(af: int, aged: int = 900) -> dict[str, Any]:
    return {"alone": {"total": {f"{GF}[access_flag]": 0, "kvm:kvm_age_hva": 0}},
            "aging": {"total": {f"{GF}[access_flag]": af, "kvm:kvm_age_hva": aged}}}  # fmt: skip


def test_access_flag_faults_under_aging_only_without_the_hardware_access_flag() -> None:
    assert proof.aging_problems(aging(350), aging(0))[1] == []
    assert proof.aging_problems(aging(0), aging(0))[1] == [
        "arm64-cmo (no hardware access flag): no access-flag fault while DAMON aged guest memory"
    ]
    assert proof.aging_problems(aging(350), aging(12))[1] == [
        "arm64-4k (hardware access flag, VTCR_EL2.HA): 12 access-flag faults"
    ]
    alone_af = aging(350)
    alone_af["alone"]["total"][f"{GF}[access_flag]"] = 3
    assert proof.aging_problems(alone_af, aging(0))[1] == ["arm64-cmo: 3 access-flag faults with nothing aging guest memory"]
