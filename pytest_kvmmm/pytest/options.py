"""The plugin's settings: option and ini definitions, and the values they resolve to.

Help texts are shared by the option and its ini key. Where a value comes from is decided by
``invocation.Sources`` (command line > environment > ini > default, ini paths relative to the
ini file), for this module, the baselines' and the dashboards' options alike; a bad value
raises ``pytest.UsageError`` naming that origin. ``resolve`` also stops a path option written
with a space (``invocation.spaced_path_problem``).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ..coordination.safefs import target_problem
from ..engine.counters import SET_NAMES, parse_selection
from ..engine.discovery import ENV_VAR, LEGACY_ENV_VAR, SearchRoot
from ..engine.guest_modes import DEFAULT_MODE, parse_mode_selection
from ..host.snapshot import open_snapshot
from ..suite.backing import BACKING_SOURCES
from ..suite.params import ParamSetting, parse_option
from ..suite.scale import SCALES
from .invocation import (
    Options,
    Raw,
    Sources,
    addopts_words,
    run_inputs,
    sources_of,
    spaced_path_problem,
)
from .keys import INPUTS_KEY, SOURCES_KEY

DEFAULT_TIMEOUT_S = 120.0  # tools/testing/selftests/kvm/settings: timeout=120
SNAPSHOT_ENV = "KVMMM_HOST_SNAPSHOT"

HELP_SELFTESTS = (
    f"directory of built KVM selftests (build or `make install` layout); also ${ENV_VAR} (or the "
    f"older ${LEGACY_ENV_VAR}) and ini kvm_selftests (relative to the ini file). Default: the "
    "kvmmm-build cache, then distro kselftests"
)
HELP_TIMEOUT = f"seconds before a selftest's process group is killed (default {DEFAULT_TIMEOUT_S:g})"
HELP_SCALE = "sizes for the shipped suite: " + ", ".join(f"{s.name} ({s.help})" for s in SCALES.values())
HELP_RESULTS = "write one JSON object per selftest to FILE (JSON lines), as each test finishes"
HELP_SNAPSHOT = (
    "read host facts from a snapshot (a directory standing in for /, or a kvmmm-snapshot tarball) "
    f"instead of the live host; also ${SNAPSHOT_ENV} (per xdist gateway: --tx popen//env:{SNAPSHOT_ENV}=DIR)"
)
HELP_MODES = (
    "guest modes of the suite, by the kernel's stable names: 'default' (each binary's own supported "
    "modes, the default), 'all', 'arch:aarch64', or a list such as p40v48_4k,p48v48_64k"
)
HELP_BACKINGS = (
    "backing sources of the suite: a list such as anonymous,anonymous_thp or 'all' "
    "(default: each test's own set)"
)
HELP_SWEEP = (
    "vCPU sweep of the suite: 'vcpus=1,2,4' runs every vCPU-scaled case once per count (ids gain "
    "'-vcpus4'), at the scale's memory; a count above the online CPUs skips"
)
HELP_REPEAT = (
    "run each timing (perf) test N times and keep every sample; metrics become medians "
    "(default 1; with --kvm-save or --kvm-compare 20 at the smoke scale, 3 at stress, 5 otherwise: "
    "comparisons use the spread)"
)
HELP_KERNEL_LOG = (
    "watch the kernel log and taint around each selftest: 'fail' (default) fails a test during "
    "which the kernel logged a WARN/BUG/Oops/lockup/RCU stall/KVM internal error or got tainted, "
    "'report' only notes it, 'off' does not watch"
)
HELP_KERNEL_NOISE = "kernel log lines (regular expressions) that are known noise: reported, never failing"
HELP_HOST_CHANGES = (
    "let the plugin prepare the host for a case: grow a hugetlb pool, set THP to madvise; every "
    "change is journalled and undone at the end (a killed run is undone by the next one)"
)
HELP_PARAM_VALUES = (
    "run the suite's cases under each value of a KVM module parameter, e.g. kvm.eager_page_split=Y,N "
    "(repeatable); set per test and restored; a read-only parameter skips those cases"
)
HELP_COUNTERS = (
    "count KVM events per selftest run and per stage with perf tracepoint counters: sets ("
    + ", ".join(SET_NAMES) + ") and/or subsys:event names (kvmmmu:* globs), comma-separated; "
    "alone: the default set of this architecture. Needs tracefs (mounted for the run with "
    "--kvm-allow-host-changes) and root or a low kernel.perf_event_paranoid. vm (or vm:STAT): "
    "KVM's per-VM statistics sampled from debugfs while each VM lives (root, debugfs mounted)"
)
HELP_HOST_INFO = "print the host facts (text, or json) and exit"
HELP_ALLOW_MISSING = (
    "skip tests whose selftest program is missing or not executable; without it, such a program "
    "fails its test when the selftests directory was named (option, environment or ini), and a "
    "program that is not executable fails anywhere"
)


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("kvmmm", "KVM selftests (pytest-kvmmm)")
    group.addoption("--kvm-selftests", metavar="DIR", help=HELP_SELFTESTS)
    group.addoption("--kvm-timeout", metavar="SECONDS", help=HELP_TIMEOUT)
    group.addoption("--kvm-scale", metavar="SCALE", help=HELP_SCALE)
    group.addoption("--kvm-results", metavar="FILE", help=HELP_RESULTS)
    group.addoption("--kvm-repeat", metavar="N", help=HELP_REPEAT)
    group.addoption("--kvm-allow-host-changes", action="store_true", help=HELP_HOST_CHANGES)
    group.addoption("--kvm-param-values", action="append", default=[], metavar="NAME=V1,V2", help=HELP_PARAM_VALUES)
    group.addoption("--kvm-kernel-log", choices=("fail", "report", "off"), help=HELP_KERNEL_LOG)
    group.addoption("--kvm-guest-modes", metavar="MODES", help=HELP_MODES)
    group.addoption("--kvm-backing-srcs", metavar="SRCS", help=HELP_BACKINGS)
    group.addoption("--kvm-sweep", metavar="vcpus=N,N", help=HELP_SWEEP)
    group.addoption("--kvm-host-snapshot", metavar="DIR", help=HELP_SNAPSHOT)
    group.addoption("--kvm-counters", nargs="?", const="default", metavar="SETS", help=HELP_COUNTERS)
    group.addoption("--kvm-allow-missing", action="store_true", default=None, help=HELP_ALLOW_MISSING)
    group.addoption(
        "--kvm-host-info", nargs="?", const="text", choices=("text", "json"), metavar="FORMAT", help=HELP_HOST_INFO
    )
    parser.addini("kvm_selftests", HELP_SELFTESTS)
    parser.addini("kvm_timeout", HELP_TIMEOUT)
    parser.addini("kvm_scale", HELP_SCALE)
    parser.addini("kvm_repeat", HELP_REPEAT)
    parser.addini("kvm_kernel_log", HELP_KERNEL_LOG)
    parser.addini("kvm_kernel_log_noise", HELP_KERNEL_NOISE, type="linelist")
    parser.addini("kvm_guest_modes", HELP_MODES)
    parser.addini("kvm_backing_srcs", HELP_BACKINGS)
    parser.addini("kvm_sweep", HELP_SWEEP)
    parser.addini("kvm_counters", HELP_COUNTERS)
    parser.addini("kvm_allow_missing", HELP_ALLOW_MISSING, type="bool", default=False)


@dataclass(frozen=True)
class Settings:
    explicit_root: SearchRoot | None
    timeout_s: float
    scale: str
    results: Path | None
    host_root: Path
    #: The snapshot as the user named it ("/" for the live host): equal on every worker.
    host_source: str = "/"
    #: Guest-mode names to parametrize over (``("default",)`` unless chosen).
    modes: tuple[str, ...] = ("default",)
    #: Backing sources chosen by the user, or None for each test's own set.
    backings: tuple[str, ...] | None = None
    #: --kvm-sweep vcpus=1,2,4: the vCPU counts every vCPU-scaled case runs at (empty: the scale's).
    sweep_vcpus: tuple[int, ...] = ()
    #: Runs per perf test (``--kvm-repeat``).
    repeat: int = 1
    kernel_log: str = "fail"
    kernel_noise: tuple[re.Pattern[str], ...] = ()
    #: --kvm-param-values: one axis (list of settings) per parameter.
    param_axes: tuple[tuple[ParamSetting, ...], ...] = ()
    #: --kvm-counters: set and event names to count (empty: no counting).
    counters: tuple[str, ...] = ()
    #: --kvm-allow-missing: a missing or unrunnable program skips (today's behaviour) instead of failing.
    allow_missing: bool = False


def sources(config: Options, env: Mapping[str, str] | None = None) -> Sources:
    """This process's ``invocation.Sources``, made once (kept on ``config.stash``, so every resolver
    adds the ini values it reads to the same record of inputs); ``env`` makes a fresh one."""
    stash: pytest.Stash | None = getattr(config, "stash", None)
    if env is None and stash is not None and SOURCES_KEY in stash:
        return stash[SOURCES_KEY]
    made = sources_of(config, os.environ if env is None else env)
    if stash is not None:
        stash[SOURCES_KEY] = made
    return made


def check_invocation(config: Any, env: Mapping[str, str]) -> None:
    """A path option written with a space that moved pytest's rootdir stops the run with the fix.
    Only where pytest read the command line: xdist workers get the controller's arguments."""
    params = getattr(config, "invocation_params", None)
    if params is None or hasattr(config, "workerinput"):
        return
    words = [*addopts_words(env), *(str(a) for a in params.args)]
    tests = [str(t) for t in getattr(config.option, "file_or_dir", None) or ()]
    problem = spaced_path_problem(words, tests, Path(params.dir))
    if problem:
        raise pytest.UsageError(problem)


def inputs(config: pytest.Config, snapshot: str) -> dict[str, Any]:
    """What each record keeps of how this run was asked for (``invocation.run_inputs``; ``snapshot``
    is ``Settings.host_source``), computed once per process at its first record, after every
    resolver read its ini values."""
    if INPUTS_KEY not in config.stash:
        found = sources(config)
        params = config.invocation_params
        config.stash[INPUTS_KEY] = run_inputs(params.args, params.dir, config.inipath, found.ini_read, found.env, snapshot)
    kept: dict[str, Any] = config.stash[INPUTS_KEY]
    return dict(kept)


def _timeout(raw: Raw | None) -> float:
    """A finite positive number of seconds. ``nan`` would never time out (every comparison
    with the deadline is false) and ``inf`` never either: both are refused with 0 and below."""
    if raw is None:
        return DEFAULT_TIMEOUT_S
    try:
        seconds = float(raw.value)
    except ValueError:
        raise pytest.UsageError(f"{raw.origin}: {raw.value!r} is not a number of seconds") from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise pytest.UsageError(f"{raw.origin}: the timeout must be a finite positive number of seconds, got {raw.value!r}")
    return seconds


def _one_of(raw: Raw | None, allowed: Sequence[str], default: str, what: str) -> str:
    if raw is not None and raw.value not in allowed:
        raise pytest.UsageError(f"{raw.origin}: unknown {what} {raw.value!r}; choose one of {', '.join(allowed)}")
    return default if raw is None else raw.value


def _host_root(raw: Raw | None) -> Path:
    if raw is None:
        return Path("/")
    try:
        return open_snapshot(Path(raw.value))
    except (OSError, ValueError) as exc:
        raise pytest.UsageError(f"{raw.origin}: {exc}") from None


def _explicit_root(raw: Raw | None) -> SearchRoot | None:
    if raw is None:
        return None
    root = SearchRoot(Path(raw.value).expanduser(), raw.origin)
    if not root.path.is_dir():
        raise pytest.UsageError(f"{raw.origin}: {root.path} is not a directory")
    return root


def _modes(raw: Raw | None) -> tuple[str, ...]:
    try:
        return parse_mode_selection(DEFAULT_MODE if raw is None else raw.value)
    except ValueError as exc:
        raise pytest.UsageError(f"{raw.origin if raw else '--kvm-guest-modes'}: {exc}") from None


def _backings(raw: Raw | None) -> tuple[str, ...] | None:
    if raw is None:
        return None
    if raw.value == "all":
        return tuple(BACKING_SOURCES)
    names = tuple(v.strip() for v in raw.value.split(",") if v.strip())
    unknown = [n for n in names if n not in BACKING_SOURCES]
    if unknown or not names:
        raise pytest.UsageError(
            f"{raw.origin}: unknown backing source(s) {', '.join(unknown) or repr(raw.value)}; "
            f"choose from {', '.join(BACKING_SOURCES)} or 'all'"
        )
    return names


def _sweep(raw: Raw | None) -> tuple[int, ...]:
    if raw is None or not raw.value.strip():
        return ()
    axis, eq, values = raw.value.partition("=")
    counts = [v.strip() for v in values.split(",") if v.strip()]
    if axis.strip() != "vcpus" or not eq or not counts or not all(c.isdigit() and 0 < int(c) <= 4096 for c in counts):
        raise pytest.UsageError(f"{raw.origin}: {raw.value!r}: give vcpus=N,N,... (e.g. vcpus=1,2,4), counts from 1 to 4096")
    return tuple(dict.fromkeys(int(c) for c in counts))


def _repeat(raw: Raw | None) -> int:
    if raw is not None and (not raw.value.isdigit() or int(raw.value) < 1):
        raise pytest.UsageError(f"{raw.origin}: {raw.value!r} is not a positive number of runs")
    return 1 if raw is None else int(raw.value)


def _counters(raw: Raw | None) -> tuple[str, ...]:
    if raw is None:
        return ()
    try:
        return parse_selection(raw.value)
    except ValueError as exc:
        hint = ""
        if os.path.exists(raw.value):  # "--kvm-counters tests/" took the path as its value
            hint = f" ({raw.value} is a path: write --kvm-counters=default, or put the option last)"
        raise pytest.UsageError(f"{raw.origin}: {exc}{hint}") from None


def _results(config: Options, raw: Raw | None) -> Path | None:
    if raw is None or not raw.value:
        return None
    if not hasattr(config, "workerinput"):  # only the controller writes it
        problem = target_problem(Path(raw.value))
        if problem:
            raise pytest.UsageError(f"{raw.origin}: {problem}")
    return Path(raw.value)


def resolve(config: Options, env: Mapping[str, str] | None = None) -> Settings:
    """Every setting of the session plugin, from ``config`` and ``env`` (default ``os.environ``)."""
    env = os.environ if env is None else env
    check_invocation(config, env)
    src = sources(config, env)
    try:
        noise = tuple(re.compile(p) for p in src.ini("kvm_kernel_log_noise") or ())
    except re.error as exc:
        raise pytest.UsageError(f"{src.ini_origin('kvm_kernel_log_noise')}: {exc}") from None
    try:
        param_axes = tuple(tuple(axis) for axis in parse_option(config.getoption("kvm_param_values") or []))
    except ValueError as exc:
        raise pytest.UsageError(f"--kvm-param-values: {exc}") from None
    snapshot = src.pick("kvm_host_snapshot", env=(SNAPSHOT_ENV,))
    return Settings(
        explicit_root=_explicit_root(src.pick("kvm_selftests", env=(ENV_VAR, LEGACY_ENV_VAR), ini="kvm_selftests", path=True)),
        timeout_s=_timeout(src.pick("kvm_timeout", ini="kvm_timeout")),
        scale=_one_of(src.pick("kvm_scale", ini="kvm_scale"), tuple(SCALES), "default", "scale"),
        results=_results(config, src.pick("kvm_results")),
        host_root=_host_root(snapshot),
        host_source="/" if snapshot is None else snapshot.value,
        modes=_modes(src.pick("kvm_guest_modes", ini="kvm_guest_modes")),
        backings=_backings(src.pick("kvm_backing_srcs", ini="kvm_backing_srcs")),
        sweep_vcpus=_sweep(src.pick("kvm_sweep", ini="kvm_sweep")),
        repeat=_repeat(src.pick("kvm_repeat", ini="kvm_repeat")),
        kernel_log=_one_of(src.pick("kvm_kernel_log", ini="kvm_kernel_log"), ("fail", "report", "off"),
                           "fail", "kernel log mode"),
        kernel_noise=noise,
        param_axes=param_axes,
        counters=_counters(src.pick("kvm_counters", ini="kvm_counters")),
        allow_missing=bool(src.option("kvm_allow_missing") or src.ini("kvm_allow_missing")),
    )
