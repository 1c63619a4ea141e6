"""Saved runs: one plain JSON file per run, in a documented folder, with a versioned format.

A baseline holds, per host and test id, each metric's samples (every value over
``--kvm-repeat`` runs) and the host's fingerprint. Pure apart from file I/O; every
problem with a file is a ``BaselineError`` whose message is one line saying what to do.

Format 1::

    {"kind": "pytest-kvmmm-baseline", "format": 1, "name": "before",
     "created_at": "2026-01-02T10:00:00Z", "scale": "smoke", "repeat": 10,
     "command": ["--pyargs", "pytest_kvmmm.suite", ...],
     "hosts": {"vm": {"fingerprint": {...},
                      "tests": {"<nodeid>": {"binary": "kvm_page_table_test", "status": "passed",
                                             "argv": [...], "metrics": {"KVM_CREATE_MAPPINGS": 0.25},
                                             "samples": {"KVM_CREATE_MAPPINGS": [0.25, ...]},
                                             "counts": {"kvm:kvm_exit": [1200, ...],
                                                        "KVM_CREATE_MAPPINGS/kvm:kvm_exit": [800, ...]}}}}}}

``counts`` (with ``--kvm-counters``) holds every run's count of each event, for the whole run
(``event``) and per stage (``<stage>/<event>``), in run order like ``samples``.

``metrics`` (medians) is there for people reading the file; readers use ``samples``.
"""

from __future__ import annotations

import json
import math
import os
import re
import statistics
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..coordination.safefs import TooLarge, UnsafePath, read_bounded, replace_file
from ..engine.counters.model import Counters
from ..provision.cache import default_cache_root
from .fingerprint import Fingerprint

KIND = "pytest-kvmmm-baseline"
BASELINE_FORMAT = 1
BASELINES_ENV = "KVMMM_BASELINES_DIR"
SUFFIX = ".json"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
#: A baseline of a large suite at 20 repeats is well under 10 MB; anything beyond is not one.
MAX_BASELINE_BYTES = 64 << 20


class BaselineError(Exception):
    """A baseline that cannot be found, read or used; the message is one line."""


@dataclass(frozen=True)
class TestRun:
    """One test's numbers in a saved run: every sample of every metric (medians are derived)."""

    binary: str
    status: str
    samples: Mapping[str, tuple[float, ...]]
    argv: tuple[str, ...] = ()
    #: ``--kvm-counters``: every run's count per ``event`` and ``<stage>/<event>`` (run order).
    counts: Mapping[str, tuple[float, ...]] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TestRun:
        """A test's object in a saved run (a ``kvm_selftest`` record has the same keys, and its
        counts under ``counters``)."""
        counts = data.get("counts")
        if counts is None and isinstance(data.get("counters"), Mapping):
            counts = Counters.from_json(data["counters"]).series()
        return cls(
            binary=str(data.get("binary") or ""),
            status=str(data.get("status") or ""),
            samples={str(m): tuple(float(x) for x in v) for m, v in (data.get("samples") or {}).items()},
            argv=tuple(str(a) for a in data.get("argv") or ()),
            counts={str(k): tuple(float(x) for x in v) for k, v in (counts or {}).items()},
        )


@dataclass(frozen=True)
class HostRun:
    fingerprint: Fingerprint
    tests: Mapping[str, TestRun]


@dataclass(frozen=True)
class Baseline:
    name: str
    created_at: str
    hosts: Mapping[str, HostRun]
    scale: str | None = None
    repeat: int | None = None
    command: tuple[str, ...] = ()
    #: Where it was read from (not saved).
    path: Path | None = field(default=None, compare=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": KIND,
            "format": BASELINE_FORMAT,
            "name": self.name,
            "created_at": self.created_at,
            "scale": self.scale,
            "repeat": self.repeat,
            "command": list(self.command),
            "hosts": {
                host: {
                    "fingerprint": run.fingerprint.to_json(),
                    "tests": {
                        nodeid: {
                            "binary": t.binary,
                            "status": t.status,
                            "argv": list(t.argv),
                            # medians, for readers of the file; the samples are what counts
                            "metrics": {m: statistics.median(v) for m, v in t.samples.items() if v},
                            "samples": {m: list(v) for m, v in t.samples.items()},
                            **({"counts": {k: list(v) for k, v in t.counts.items()}} if t.counts else {}),
                        }
                        for nodeid, t in run.tests.items()
                    },
                }
                for host, run in self.hosts.items()
            },
        }


def now_utc() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def from_records(
    records: Iterable[Mapping[str, Any]],
    fingerprints: Mapping[str, Fingerprint],
    *,
    name: str,
    scale: str | None = None,
    repeat: int | None = None,
    command: Sequence[str] = (),
    created_at: str | None = None,
) -> Baseline:
    """A baseline from the session's ``kvm_selftest`` records (``--kvm-results`` objects).

    Records are keyed by (host, nodeid); a later record of the same key wins. A record
    without ``samples`` (an older writer) counts its metrics as single samples.
    """
    tests: dict[str, dict[str, TestRun]] = {}
    for rec in records:
        host = str(rec.get("host") or "")
        samples = rec.get("samples") or {k: [v] for k, v in (rec.get("metrics") or {}).items()}
        tests.setdefault(host, {})[str(rec.get("nodeid"))] = TestRun.from_json({**rec, "samples": samples})
    hosts = {h: HostRun(fingerprints.get(h, Fingerprint()), t) for h, t in tests.items()}
    return Baseline(name, created_at or now_utc(), hosts, scale, repeat, tuple(command))


def from_json(data: Any, origin: str) -> Baseline:
    """Parse a baseline document; anything else is a ``BaselineError`` naming ``origin``."""
    if not isinstance(data, dict) or data.get("kind") != KIND:
        raise BaselineError(f"{origin} is not a pytest-kvmmm baseline (no \"kind\": \"{KIND}\")")
    fmt = data.get("format")
    if type(fmt) is not int or fmt != BASELINE_FORMAT:  # true == 1 in Python: not a format
        newer = isinstance(fmt, int) and fmt > BASELINE_FORMAT
        raise BaselineError(
            f"{origin} has baseline format {fmt!r}, this pytest-kvmmm reads format {BASELINE_FORMAT}"
            + ("; upgrade pytest-kvmmm to read it" if newer else "")
        )
    problem = document_problem(data)
    if problem:
        raise BaselineError(f"{origin} is a damaged pytest-kvmmm baseline: {problem}")
    try:
        hosts = {
            str(host): HostRun(
                Fingerprint.from_json(run.get("fingerprint") or {}),
                {str(nodeid): TestRun.from_json(t) for nodeid, t in (run.get("tests") or {}).items()},
            )
            for host, run in (data.get("hosts") or {}).items()
        }
        repeat = data.get("repeat")
        return Baseline(
            name=str(data.get("name") or ""),
            created_at=str(data.get("created_at") or ""),
            hosts=hosts,
            scale=data.get("scale"),
            repeat=int(repeat) if repeat is not None else None,
            command=tuple(str(a) for a in data.get("command") or ()),
        )
    except (AttributeError, TypeError, ValueError) as exc:
        raise BaselineError(f"{origin} is a damaged pytest-kvmmm baseline: {exc}") from None


def document_problem(data: Mapping[str, Any]) -> str | None:
    """What is wrong with the structure of a baseline document (``where: what``), or None.

    Readers trust what passes: objects where objects belong, and samples that are lists of
    finite, non-negative numbers (seconds, rates); a bool is not a number here.
    """
    repeat = data.get("repeat")
    if repeat is not None and (type(repeat) is not int or repeat < 1):
        return f"repeat: {str(repeat)[:20]} is not a positive count"
    hosts = {} if data.get("hosts") is None else data["hosts"]
    if not isinstance(hosts, dict):
        return "hosts: not an object"
    for host, run in hosts.items():
        if not isinstance(run, dict):
            return f"hosts.{host}: not an object"
        if not isinstance(run.get("fingerprint") or {}, dict):
            return f"hosts.{host}.fingerprint: not an object"
        tests = {} if run.get("tests") is None else run["tests"]
        if not isinstance(tests, dict):
            return f"hosts.{host}.tests: not an object"
        for nodeid, test in tests.items():
            where = f"hosts.{host}.tests.{nodeid}"[:200]
            if not isinstance(test, dict) or not isinstance(test.get("samples") or {}, dict):
                return f"{where}: not an object with samples"
            if not isinstance(test.get("counts") or {}, dict):
                return f"{where}.counts: not an object"
            for key in ("samples", "counts"):  # counts: every run's count of an event, like samples
                for metric, values in (test.get(key) or {}).items():
                    problem = _samples_problem(values)
                    if problem:
                        return f"{where}.{key}.{metric}{problem}"[:300]
    return None


def _samples_problem(values: object) -> str | None:
    if not isinstance(values, list):
        return ": not a list of numbers"
    for i, x in enumerate(values):
        if type(x) not in (int, float):
            return f"[{i}]: {x!r:.40} is not a number"
        if not math.isfinite(x):
            return f"[{i}]: {x!r} is not a finite number"
        if x < 0:
            return f"[{i}]: {x!r} is negative"
    return None


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not a number a baseline may hold")


def baselines_dir(explicit: str | None = None, env: Mapping[str, str] | None = None) -> Path:
    """``explicit`` (the option or ini value), else ``$KVMMM_BASELINES_DIR``, else
    ``<cache root>/baselines`` (``~/.cache/pytest-kvmmm/baselines`` unless ``$KVMMM_CACHE_DIR``
    or ``$XDG_CACHE_HOME`` say otherwise)."""
    env = os.environ if env is None else env
    if explicit:
        return Path(explicit).expanduser()
    if env.get(BASELINES_ENV):
        return Path(env[BASELINES_ENV]).expanduser()
    return default_cache_root(env) / "baselines"


def is_path(spec: str) -> bool:
    """A NAME|FILE argument names a file when it has a directory part or ends in ``.json``."""
    return os.sep in spec or spec.endswith(SUFFIX)


def save_path(spec: str, directory: Path) -> Path:
    """Where ``--kvm-save NAME|FILE`` writes."""
    if is_path(spec):
        return Path(spec).expanduser()
    if not _NAME.fullmatch(spec):
        raise BaselineError(
            f"{spec!r} is not a baseline name: use letters, digits and . _ + - (or give a path ending in .json)"
        )
    return directory / (spec + SUFFIX)


def saved_names(directory: Path) -> list[str]:
    try:
        return sorted(p.name[: -len(SUFFIX)] for p in directory.iterdir() if p.name.endswith(SUFFIX))
    except OSError:
        return []


def find(spec: str, directory: Path) -> Path:
    """The file a NAME|FILE argument means: FILE when it looks like a path (``is_path``), else
    ``<directory>/NAME.json``."""
    if is_path(spec):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise BaselineError(f"no baseline file {spec}")
        return path
    path = directory / (spec + SUFFIX)
    if not path.is_file():
        names = saved_names(directory)
        listing = f"saved: {', '.join(names)}" if names else "none saved there yet; save one with --kvm-save NAME"
        raise BaselineError(f"no baseline named {spec!r} in {directory} ({listing})")
    return path


def load(path: Path) -> Baseline:
    """Read a baseline file: bounded in size and nesting, NaN and Infinity refused, every
    fault a one-line ``BaselineError`` naming the file."""
    try:
        raw = read_bounded(path, MAX_BASELINE_BYTES)
    except TooLarge as exc:
        raise BaselineError(f"{exc.strerror}: not a pytest-kvmmm baseline") from None
    except OSError as exc:
        raise BaselineError(f"cannot read baseline {path}: {exc.strerror or exc}") from None
    try:
        data = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except RecursionError:
        raise BaselineError(f"{path} is not a pytest-kvmmm baseline (nested too deeply)") from None
    except ValueError as exc:  # also UnicodeDecodeError
        raise BaselineError(f"{path} is not a pytest-kvmmm baseline (not JSON: {str(exc)[:120]})") from None
    return replace(from_json(data, str(path)), path=path)


def save(baseline: Baseline, path: Path) -> None:
    """Write atomically (an exclusive temporary file, then a rename over a regular file only), so a
    reader never sees half a baseline and no link or device is written through."""
    try:
        replace_file(path, json.dumps(baseline.to_json(), indent=1) + "\n")
    except UnsafePath as exc:
        raise BaselineError(f"cannot save baseline: {exc}") from None
    except OSError as exc:
        raise BaselineError(f"cannot save baseline to {path}: {exc.strerror or exc}") from None
