"""What was saved before the package was arranged in rooms still works after it: a baseline
saved then compares with one saved now, and an Allure results directory made then gets the same
history ids (so a rerun lands in each test's history). The goldens come from a real smoke run
at the commit before the move (``tests/golden/before-rooms/``)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from fakes import golden, make_fake, make_host_root
from pytest_kvmmm.baseline import store
from pytest_kvmmm.baseline.compare import compare
from pytest_kvmmm.baseline.table import terminal_lines

BEFORE = Path(__file__).parent / "golden" / "before-rooms"


def test_a_baseline_saved_before_compares_with_itself_and_a_new_one(tmp_path: Path) -> None:
    before = store.load(BEFORE / "before.json")
    assert set(before.hosts) == {"vm"} and len(before.hosts["vm"].tests) == 24
    again = store.load(BEFORE / "before.json")
    comparison = compare(before, again)
    lines = terminal_lines(comparison)
    assert any("kvm_page_table_test [anonymous]" in line for line in lines)
    assert any("KVM_CREATE_MAPPINGS" in line and "no significant change" in line for line in lines)
    store.save(again, tmp_path / "resaved.json")  # and it is written back in the format it was read in
    assert store.load(tmp_path / "resaved.json").hosts["vm"].tests.keys() == before.hosts["vm"].tests.keys()


def test_allure_history_ids_are_those_of_before(pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")])))
    expected: dict[str, str] = json.loads((BEFORE / "history-ids.json").read_text())["test_kvm_page_table"]
    d = tmp_path / "b"
    make_fake(d, "kvm_page_table_test", stdout=golden("kvm_page_table_test.anonymous.stdout"))
    root = make_host_root(tmp_path / "vm", hostname="vm")
    ar = tmp_path / "allure"
    pytester.runpytest_subprocess("--pyargs", "pytest_kvmmm.suite", "-m", "pagetable", "--kvm-scale", "smoke",
                                  "-k", "test_kvm_page_table", f"--kvm-selftests={d}", f"--kvm-host-snapshot={root}",
                                  f"--alluredir={ar}", "-p", "no:cacheprovider")
    got: dict[str, str] = {}
    for path in ar.glob("*-result.json"):
        res: dict[str, Any] = json.loads(path.read_text())
        case = {p["name"]: p["value"] for p in res["parameters"]}["kvm_case"].strip("'")
        got[case] = res["historyId"]
    assert got == expected
