"""The record of one selftest test: made once, read by every report, written as one JSON object.

``build`` makes it, on the process that ran the test, from the engine's last result of the
test, what the test ran as (``suite.shape.Shape``: its case and sizes) and the report that
decided it. Later verdicts (pytest's own, a known issue, a baseline regression, the attempts
of a rerun) are new records made with ``dataclasses.replace`` (``verdict.py``), never edits
of a shared dict. The terminal summary, ``--kvm-results``, baselines, Allure and the
dashboards' exporters read it; under xdist it travels from the worker to the controller in
``report.user_properties`` as its JSON form and comes back with ``from_json``.

``to_json`` writes the ``--kvm-results`` format as it has been since format 1, key for key:
saved baselines, ``kvmmm-compare``, the lab's checks, ``kvmmm-ab`` and the KCIDB, SQUAD and
LAVA exporters read those files, old and new alike. The shape is not part of it (a file's
readers never needed it; it is the run's own view, for Allure and the terminal); keys this
version does not know (a newer writer's) are kept in ``extra`` and written back as they came.
Pure: no pytest.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from ..engine.result import SelftestResult
from ..suite.shape import Shape

#: ``--kvm-results`` keys that are always written, in the order they were always made.
ALWAYS = (
    "nodeid", "host", "outcome", "binary", "path", "argv", "status", "returncode", "duration_s", "reason",
    "metrics", "samples", "started_at", "ended_at", "notes", "kernel_log",
)
#: Keys written only when they have a value (None: absent from the JSON object).
OPTIONAL = (
    "counters", "host_facts", "inputs", "counters_off", "known_issue", "metrics_of_failed_run", "counters_of_failed_run",
    "attempts", "flaky",
)
#: The results writer's envelope, not a field of the record.
ENVELOPE = ("format",)


@dataclass(frozen=True)
class Record:
    """One test's selftest record: what ran, where, how it ended and what it measured."""

    nodeid: str
    host: str
    #: pytest's outcome of the report that decided the test (passed, failed, skipped).
    outcome: str
    #: The selftest's name, and the path of the program run (None: never resolved).
    binary: str
    path: str | None
    argv: tuple[str, ...]
    #: The engine's status (``outcome.Status``), then pytest's verdict (``verdict.py``).
    status: str
    returncode: int | None = None
    duration_s: float = 0.0
    reason: str = ""
    metrics: Mapping[str, float] = field(default_factory=dict)
    #: Every value of every metric over the repeated runs; ``metrics`` holds their medians.
    samples: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    started_at: float | None = None
    ended_at: float | None = None
    notes: tuple[str, ...] = ()
    kernel_log: tuple[str, ...] = ()
    #: ``--kvm-counters``' counts (their JSON form: per run and stage, medians, derived figures).
    counters: Mapping[str, Any] | None = None
    #: The facts of the host that ran it (``host.report.fact_texts``): the controller describes
    #: hosts it never probed (xdist workers on lab hosts).
    host_facts: Mapping[str, str] | None = None
    #: How the run was asked for (``options.inputs``: args, cwd, ini file and values, environment).
    inputs: Mapping[str, Any] | None = None
    #: Why a host that ran the test counted nothing though ``--kvm-counters`` was given.
    counters_off: str | None = None
    known_issue: Mapping[str, Any] | None = None
    #: A run that did not pass measured nothing: its numbers, kept for triage only.
    metrics_of_failed_run: Mapping[str, float] | None = None
    counters_of_failed_run: Mapping[str, Any] | None = None
    #: A rerun test's attempts (``verdict.attempt_of``), the final one last; ``flaky``: a
    #: failure followed by a pass.
    attempts: tuple[Mapping[str, Any], ...] | None = None
    flaky: bool | None = None
    #: What the test ran as; not written to ``--kvm-results``.
    shape: Shape = field(default_factory=Shape)
    #: Keys of another writer, kept as they came.
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def measured(self) -> bool:
        return bool(self.metrics or self.samples)

    def to_json(self) -> dict[str, Any]:
        """The ``--kvm-results`` object of this record (the writer adds ``format``)."""
        out: dict[str, Any] = dict(self.extra)
        out.update(
            nodeid=self.nodeid, host=self.host, outcome=self.outcome, binary=self.binary, path=self.path,
            argv=list(self.argv), status=self.status, returncode=self.returncode, duration_s=self.duration_s,
            reason=self.reason, metrics=dict(self.metrics), samples={k: list(v) for k, v in self.samples.items()},
            started_at=self.started_at, ended_at=self.ended_at, notes=list(self.notes), kernel_log=list(self.kernel_log),
        )
        optional: dict[str, Any] = {
            "counters": self.counters,
            "host_facts": None if self.host_facts is None else dict(self.host_facts),
            "inputs": None if self.inputs is None else dict(self.inputs),
            "counters_off": self.counters_off,
            "known_issue": None if self.known_issue is None else dict(self.known_issue),
            "metrics_of_failed_run": None if self.metrics_of_failed_run is None else dict(self.metrics_of_failed_run),
            "counters_of_failed_run": self.counters_of_failed_run,
            "attempts": None if self.attempts is None else [dict(a) for a in self.attempts],
            "flaky": self.flaky,
        }
        out.update((k, v) for k, v in optional.items() if v is not None)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Record:
        """A record back from its JSON form (a ``--kvm-results`` line, a worker's report); a
        field of the wrong type is a ``ValueError`` or ``TypeError``. A missing field takes its
        default (an older writer's file)."""
        known = {f.name for f in fields(cls)}
        get = data.get
        return cls(
            nodeid=str(get("nodeid") or ""),
            host=str(get("host") or ""),
            outcome=str(get("outcome") or ""),
            binary=str(get("binary") or ""),
            path=None if get("path") is None else str(get("path")),
            argv=_strings(get("argv")),
            status=str(get("status") or ""),
            returncode=None if get("returncode") is None else int(data["returncode"]),
            duration_s=float(get("duration_s") or 0.0),
            reason=str(get("reason") or ""),
            metrics=_numbers(get("metrics")),
            samples={str(k): tuple(_number(x) for x in _seq(v)) for k, v in _mapping(get("samples")).items()},
            started_at=None if get("started_at") is None else float(data["started_at"]),
            ended_at=None if get("ended_at") is None else float(data["ended_at"]),
            notes=_strings(get("notes")),
            kernel_log=_strings(get("kernel_log")),
            counters=_optional_map(data, "counters"),
            host_facts=None if get("host_facts") is None else {str(k): str(v) for k, v in _mapping(get("host_facts")).items()},
            inputs=_optional_map(data, "inputs"),
            counters_off=None if get("counters_off") is None else str(get("counters_off")),
            known_issue=_optional_map(data, "known_issue"),
            metrics_of_failed_run=None if get("metrics_of_failed_run") is None else _numbers(get("metrics_of_failed_run")),
            counters_of_failed_run=_optional_map(data, "counters_of_failed_run"),
            attempts=None if get("attempts") is None else tuple(dict(_mapping(a)) for a in _seq(get("attempts"))),
            flaky=None if get("flaky") is None else bool(get("flaky")),
            extra={k: v for k, v in data.items() if k not in known and k not in ENVELOPE},
        )


def build(
    result: SelftestResult,
    shape: Shape,
    *,
    nodeid: str,
    host: str,
    outcome: str,
    host_facts: Mapping[str, str] | None = None,
    counters_off: str | None = None,
    inputs: Mapping[str, Any] | None = None,
) -> Record:
    """The record of a test whose last selftest run was ``result`` (the one place records are made)."""
    ended = None if result.started_at is None else result.started_at + result.duration_s
    return Record(
        nodeid=nodeid,
        host=host,
        outcome=outcome,
        binary=result.name,
        path=result.binary,
        argv=tuple(result.argv),
        status=result.status.value,
        returncode=result.returncode,
        duration_s=round(result.duration_s, 6),
        reason=result.reason,
        metrics=dict(result.metrics),
        samples={k: tuple(v) for k, v in result.all_samples.items()},
        started_at=result.started_at,
        ended_at=ended,
        notes=tuple(result.notes),
        kernel_log=tuple(result.kernel_log),
        counters=None if result.counters is None else result.counters_json(),
        host_facts=None if host_facts is None else dict(host_facts),
        counters_off=counters_off,
        inputs=None if inputs is None else dict(inputs),
        shape=shape,
    )


def _mapping(value: Any) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(f"expected an object, got {type(value).__name__}")
    return value


def _seq(value: Any) -> Sequence[Any]:
    if value is None:
        return ()
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f"expected a list, got {type(value).__name__}")
    return value


def _strings(value: Any) -> tuple[str, ...]:
    return tuple(str(x) for x in _seq(value))


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"not a number: {value!r}")
    return value


def _numbers(value: Any) -> dict[str, float]:
    return {str(k): _number(v) for k, v in _mapping(value).items()}


def _optional_map(data: Mapping[str, Any], key: str) -> Mapping[str, Any] | None:
    return None if data.get(key) is None else dict(_mapping(data[key]))
