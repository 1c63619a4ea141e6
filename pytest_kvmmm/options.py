"""The plugin's settings: option and ini definitions, and the one place that resolves them.

Help texts are shared by the option and its ini key. Precedence is command line >
environment > ini > default; a bad value raises ``pytest.UsageError`` naming where it
came from.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from .discovery import ENV_VAR, SearchRoot, explicit_root
from .host.snapshot import open_snapshot
from .scale import SCALES

DEFAULT_TIMEOUT_S = 120.0  # tools/testing/selftests/kvm/settings: timeout=120

HELP_SELFTESTS = (
    f"directory of built KVM selftests (build or `make install` layout); also ${ENV_VAR} "
    "and ini kvm_selftests. Default: the kvmmm-build cache, then distro kselftests"
)
HELP_TIMEOUT = f"seconds before a selftest's process group is killed (default {DEFAULT_TIMEOUT_S:g})"
HELP_SCALE = "sizes for the shipped suite: " + ", ".join(f"{s.name} ({s.help})" for s in SCALES.values())
HELP_RESULTS = "write one JSON object per selftest to FILE (JSON lines), as each test finishes"
HELP_SNAPSHOT = (
    "read host facts from a snapshot (a directory standing in for /, or a kvmmm-snapshot tarball) "
    "instead of the live host"
)
HELP_HOST_INFO = "print the host facts (text, or json) and exit"


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("kvmmm", "KVM selftests (pytest-kvmmm)")
    group.addoption("--kvm-selftests", metavar="DIR", help=HELP_SELFTESTS)
    group.addoption("--kvm-timeout", metavar="SECONDS", help=HELP_TIMEOUT)
    group.addoption("--kvm-scale", metavar="SCALE", help=HELP_SCALE)
    group.addoption("--kvm-results", metavar="FILE", help=HELP_RESULTS)
    group.addoption("--kvm-host-snapshot", metavar="DIR", help=HELP_SNAPSHOT)
    group.addoption(
        "--kvm-host-info", nargs="?", const="text", choices=("text", "json"), metavar="FORMAT", help=HELP_HOST_INFO
    )
    parser.addini("kvm_selftests", HELP_SELFTESTS)
    parser.addini("kvm_timeout", HELP_TIMEOUT)
    parser.addini("kvm_scale", HELP_SCALE)


@dataclass(frozen=True)
class Settings:
    explicit_root: SearchRoot | None
    timeout_s: float
    scale: str
    results: Path | None
    host_root: Path


def _timeout(value: str, origin: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise pytest.UsageError(f"{origin}: {value!r} is not a number of seconds") from None
    if seconds <= 0:
        raise pytest.UsageError(f"{origin}: the timeout must be positive, got {value}")
    return seconds


def resolve(config: pytest.Config, env: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if env is None else env
    opt = config.getoption

    timeout = DEFAULT_TIMEOUT_S
    if opt("kvm_timeout"):
        timeout = _timeout(opt("kvm_timeout"), "--kvm-timeout")
    elif config.getini("kvm_timeout"):
        timeout = _timeout(config.getini("kvm_timeout"), "ini kvm_timeout")

    scale = opt("kvm_scale") or config.getini("kvm_scale") or "default"
    if scale not in SCALES:
        raise pytest.UsageError(f"--kvm-scale: unknown scale {scale!r}; choose one of {', '.join(SCALES)}")

    host_root = Path("/")
    snapshot = opt("kvm_host_snapshot")
    if snapshot:
        try:
            host_root = open_snapshot(Path(snapshot))
        except (OSError, ValueError) as exc:
            raise pytest.UsageError(f"--kvm-host-snapshot: {exc}") from None

    explicit = explicit_root(opt("kvm_selftests"), env, config.getini("kvm_selftests") or None)
    if explicit is not None and not explicit.path.is_dir():
        raise pytest.UsageError(f"{explicit.origin}: {explicit.path} is not a directory")

    results = opt("kvm_results")
    return Settings(
        explicit_root=explicit,
        timeout_s=timeout,
        scale=scale,
        results=Path(results) if results else None,
        host_root=host_root,
    )
