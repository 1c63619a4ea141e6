"""Read-only module parameters set by a module reload (modreload.py, HostChanges.reload_param),
against a fake /sys and a fake rmmod/modprobe that behave as the real ones do to /sys."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from pytest_kvmmm.coordination import host_changes, modreload
from pytest_kvmmm.coordination.host_changes import HostChanges

TDP_MMU = "/sys/module/kvm/parameters/tdp_mmu"


def fake_sys(root: Path, kvm_builtin: bool = False) -> Path:
    """kvm (tdp_mmu=Y, halt_poll_ns=200000) held by kvm_amd (npt=Y, avic=N)."""
    for module, params in (("kvm", {"tdp_mmu": "Y", "halt_poll_ns": "200000"}), ("kvm_amd", {"npt": "Y", "avic": "N"})):
        d = root / "sys/module" / module
        (d / "parameters").mkdir(parents=True)
        (d / "holders").mkdir()
        for k, v in params.items():
            (d / "parameters" / k).write_text(v + "\n")
        if not (kvm_builtin and module == "kvm"):
            (d / "initstate").write_text("live\n")
    (root / "sys/module/kvm/holders/kvm_amd").mkdir()
    return root


class FakeModules:
    """rmmod removes a module's /sys directory (refused while held); modprobe makes it again
    with the given parameters, the others at their defaults."""

    DEFAULTS = {"kvm": {"tdp_mmu": "Y", "halt_poll_ns": "200000"}, "kvm_amd": {"npt": "Y", "avic": "N"}}

    def __init__(self, root: Path, refuse: Sequence[str] = ()) -> None:
        self.root, self.refuse, self.calls = root, tuple(refuse), []  # type: list[list[str]]
        self.saved: dict[str, Path] = {}

    def __call__(self, argv: Sequence[str]) -> tuple[int, str]:
        self.calls.append(list(argv))
        d = self.root / "sys/module" / argv[1]
        if argv[0] == "rmmod":
            if any((self.root / "sys/module" / argv[1] / "holders").iterdir()):
                return 1, f"rmmod: ERROR: Module {argv[1]} is in use by: kvm_amd"
            for p in (d / "parameters").iterdir():
                p.unlink()
            (d / "parameters").rmdir()
            (d / "holders").rmdir()
            (d / "initstate").unlink()
            d.rmdir()
            if argv[1] == "kvm_amd":
                (self.root / "sys/module/kvm/holders/kvm_amd").rmdir()
            return 0, ""
        params = dict(self.DEFAULTS[argv[1]])
        for arg in argv[2:]:
            k, _, v = arg.partition("=")
            if f"{argv[1]}.{k}={v}" in self.refuse:
                return 1, f"modprobe: ERROR: could not insert '{argv[1]}': Invalid argument"
            params[k] = v
        (d / "parameters").mkdir(parents=True)
        (d / "holders").mkdir()
        (d / "initstate").write_text("live\n")
        for k, v in params.items():
            (d / "parameters" / k).write_text(v + "\n")
        if argv[1] == "kvm_amd":
            (self.root / "sys/module/kvm/holders/kvm_amd").mkdir()
        return 0, ""


def read(root: Path, path: str) -> str:
    return (root / path.lstrip("/")).read_text().strip()


def test_reload_order_and_the_values_kept(tmp_path: Path) -> None:
    root = fake_sys(tmp_path)
    assert modreload.reload_order(root, "kvm") == ["kvm_amd", "kvm"]
    assert modreload.current_params(root, "kvm_amd") == (("avic", "N"), ("npt", "Y"))
    (root / "sys/module/kvm_amd/parameters/avic").write_text("Y\n")  # set at load by the admin: kept
    mods = FakeModules(root)
    assert modreload.reload(root, "kvm", "tdp_mmu", "N", run=mods) is None
    assert mods.calls == [["rmmod", "kvm_amd"], ["rmmod", "kvm"],
                          ["modprobe", "kvm", "halt_poll_ns=200000", "tdp_mmu=N"],
                          ["modprobe", "kvm_amd", "avic=Y", "npt=Y"]]  # fmt: skip
    assert read(root, TDP_MMU) == "N" and read(root, "/sys/module/kvm_amd/parameters/avic") == "Y"


def test_a_value_the_module_refuses_loads_it_back_as_it_was(tmp_path: Path) -> None:
    root = fake_sys(tmp_path)
    mods = FakeModules(root, refuse=["kvm.tdp_mmu=maybe"])
    why = modreload.reload(root, "kvm", "tdp_mmu", "maybe", run=mods)
    assert why == "modprobe kvm tdp_mmu=maybe failed"
    assert read(root, TDP_MMU) == "Y" and (root / "sys/module/kvm_amd").is_dir()


def test_what_cannot_be_reloaded(tmp_path: Path) -> None:
    root = fake_sys(tmp_path / "a", kvm_builtin=True)
    assert "built into the kernel" in str(modreload.cannot_reload(root, "kvm", lambda t: "/sbin/" + t))
    root = fake_sys(tmp_path / "b")
    assert modreload.cannot_reload(root, "kvm", lambda t: None) == "no modprobe, rmmod here to reload kvm"
    assert modreload.cannot_reload(root, "kvm_intel", lambda t: t) == "module kvm_intel is not loaded"
    assert modreload.cannot_reload(root, "kvm", lambda t: t) is None


def test_host_changes_journal_the_reload_and_restore_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = fake_sys(tmp_path / "root")
    mods = FakeModules(root)
    real_reload = modreload.reload
    monkeypatch.setattr(host_changes.modreload, "reload", lambda r, m, p, v: real_reload(r, m, p, v, run=mods))
    monkeypatch.setattr(host_changes.shutil, "which", lambda tool: f"/sbin/{tool}")
    changes = HostChanges(root, tmp_path / "journal")
    assert changes.reload_param(TDP_MMU, "N") is None
    assert read(root, TDP_MMU) == "N"
    assert json.loads(changes.journal.read_text()) == [
        {"kind": "module", "path": TDP_MMU, "added": 0, "old": "Y", "new": "N"}]
    assert changes.undo_last(TDP_MMU) == [f"{TDP_MMU}: N -> Y (reloaded kvm)"]
    assert read(root, TDP_MMU) == "Y" and json.loads(changes.journal.read_text()) == []


def test_a_killed_session_s_reload_is_undone_by_the_next(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = fake_sys(tmp_path / "root")
    mods = FakeModules(root)
    real_reload = modreload.reload
    monkeypatch.setattr(host_changes.modreload, "reload", lambda r, m, p, v: real_reload(r, m, p, v, run=mods))
    (tmp_path / "journal").mkdir()
    (root / TDP_MMU.lstrip("/")).write_text("N\n")
    dead = tmp_path / "journal" / "999999999.json"
    dead.write_text(json.dumps([{"kind": "module", "path": TDP_MMU, "added": 0, "old": "Y", "new": "N"}]))
    done = HostChanges(root, tmp_path / "journal").restore_stale()
    assert done == [f"{TDP_MMU}: N -> Y (reloaded kvm) [left by killed process 999999999]"]
    assert read(root, TDP_MMU) == "Y" and not dead.exists()
