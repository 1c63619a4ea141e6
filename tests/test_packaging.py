"""The package's declared metadata against what CI proves: the floors of ci/floors.txt."""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import pytest

import pytest_kvmmm

REPO = Path(__file__).resolve().parent.parent
REQUIREMENT = re.compile(r"^([A-Za-z0-9_.-]+)>=([0-9][0-9.]*)$")


def _floors_declared(extra: str | None = None) -> dict[str, str]:
    """pyproject's run-time dependencies (or an extra's) as name -> floor (each must have one)."""
    floors = {}
    for requirement in importlib.metadata.requires("pytest-kvmmm") or []:
        spec, _, marker = requirement.partition(";")
        if (extra is None) != (not marker) or (extra is not None and f'extra == "{extra}"' not in marker):
            continue
        match = REQUIREMENT.match(spec.replace(" ", ""))
        assert match, f"dependency {requirement!r} has no plain >= floor for ci/floors.txt to pin"
        floors[match.group(1).lower()] = match.group(2)
    return floors


def _floors_pinned() -> dict[str, str]:
    pins = {}
    for line in (REPO / "ci" / "floors.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[name.strip().lower()] = version.strip()
    return pins


def _release(version: str) -> tuple[int, ...]:
    parts = tuple(int(p) for p in version.split("."))
    while parts and parts[-1] == 0:
        parts = parts[:-1]
    return parts


def test_ci_pins_every_declared_floor_exactly() -> None:
    """Every run-time floor is pinned; a test-extra tool ci/matrix.sh installs is pinned at its floor."""
    declared = _floors_declared()
    pinned = _floors_pinned()
    assert set(declared) <= set(pinned)
    declared.update({n: v for n, v in _floors_declared("test").items() if n in pinned})
    assert {n: _release(v) for n, v in declared.items()} == {n: _release(v) for n, v in pinned.items()}
    assert {"pytest", "pluggy", "pytest-xdist", "allure-pytest", "filelock", "pytest-timeout"} <= set(declared)


def test_every_console_script_answers_version(capsys: pytest.CaptureFixture[str]) -> None:
    version = importlib.metadata.version("pytest-kvmmm")
    scripts = [ep for ep in importlib.metadata.distribution("pytest-kvmmm").entry_points if ep.group == "console_scripts"]
    assert len(scripts) >= 3
    for script in scripts:
        with pytest.raises(SystemExit) as exit_:
            script.load()(["--version"])
        assert exit_.value.code == 0
        assert capsys.readouterr().out == f"{script.name} {version}\n"


def test_the_package_version_is_the_installed_metadata() -> None:
    assert pytest_kvmmm.__version__ == importlib.metadata.version("pytest-kvmmm") != "0+unknown"
