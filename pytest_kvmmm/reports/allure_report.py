"""Allure results a KVM lab can triage from: what each selftest test looks like in an Allure report.

With allure-pytest and ``--alluredir``, every selftest test gets:

* a title a person can read: ``kvm_page_table_test: anonymous_thp, 2 vCPUs x 32M (64M total) on vm``
  (a test of one's own keeps its name first: ``test_fast: kvm_page_table_test, ... on vm``);
* labels: epic ``KVM MMU``, feature = the binary, story = the case's variant or backing
  source, severity (``pagetable`` tests are critical), and the host as ``parentSuite`` so the
  Suites tab keeps lab hosts apart. Argument-less markers (``pagetable``, ``perf``,
  ``hugetlb`` ...) already become tags through allure-pytest itself;
* parameters: ``host`` and ``scale`` (part of the test's identity, allure's historyId), and
  guest mode, backing source, vCPUs, memory, iterations and notes (shown, but excluded from
  the identity: they follow from the case or from capping to the host, and a rerun on a
  host with less free memory must keep its history);
* attachments: the exact command line, the binary's stdout and stderr (partial on a
  timeout), its metrics as JSON, its event counts (``--kvm-counters``) as a table, and the
  skip or failure reason;
* steps: each binary run with its wall time and, for the stage-timed binaries
  (``kvm_page_table_test``, ``dirty_log_perf_test``), one sub-step per stage with the time
  the binary printed, and the stage's event counts as the step's parameters. A page-table
  run that died shows the stage it never finished.

A suite case is also named after its module (``pytest_kvmmm.suite.test_mm#test_kvm_page_table``)
rather than its rootdir-relative node id, so its history survives running from another
directory. At the end of the session the process that owns it writes ``categories.json`` and
``environment.properties`` (``allure_files``).

Pure: ``describe`` needs no Allure and no pytest; ``pytest_kvmmm/pytest/allure.py`` hands its
description to allure-pytest at run time.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..engine.counters.report import attachment_text, short
from ..engine.guest_modes import DEFAULT_MODE
from ..engine.outcome import Status
from ..engine.result import SelftestResult
from ..host.units import format_size
from ..suite.shape import Shape
from .allure_files import (
    CATEGORIES,
    RECORD_FACTS,
    categories_json,
    categorize,
    hosts_from_records,
    selftests_build,
    write_session_files,
)
from .record import Record

__all__ = [
    "CATEGORIES", "RECORD_FACTS", "categories_json", "categorize",
    "describe", "hosts_from_records", "selftests_build",
    "write_session_files",
]

EPIC = "KVM MMU"

# --- what a test looks like ------------------------------------------------------------


@dataclass(frozen=True)
class Parameter:
    name: str
    value: str | int
    #: Left out of allure's historyId: shown, but not part of the test's identity.
    excluded: bool = False


@dataclass(frozen=True)
class Attachment:
    name: str
    body: str
    #: "text" or "json".
    kind: str = "text"


@dataclass(frozen=True)
class Step:
    name: str
    #: Epoch milliseconds, as Allure stores them.
    start: int
    stop: int
    #: Allure status: passed, failed, broken, skipped.
    status: str
    parameters: tuple[Parameter, ...] = ()
    steps: tuple[Step, ...] = ()
    message: str = ""


@dataclass(frozen=True)
class Annotation:
    """Everything one test adds to its Allure result, before any Allure API is touched."""

    title: str
    labels: tuple[tuple[str, str], ...]
    parameters: tuple[Parameter, ...]
    attachments: tuple[Attachment, ...]
    steps: tuple[Step, ...] = ()


def _severity(markers: Iterable[str]) -> str:
    """Guest page-table tests are the job of the suite: their failures come first."""
    return "critical" if "pagetable" in markers else "normal"


def _title(result: SelftestResult, shape: Shape, test_name: str, host: str) -> str:
    """``<binary>: <variant>, <backing>, <mode>, <size> on <host>``; a test of one's own keeps its name first."""
    parts: list[str] = []
    if shape.case_id is not None:
        parts += [p for p in (shape.variant, shape.backing) if p]
    if shape.mode and shape.mode != DEFAULT_MODE:
        parts.append(shape.mode)
    if shape.size_text():
        parts.append(shape.size_text())
    if shape.case_id is None:
        return f"{test_name}: {', '.join([result.name, *parts])} on {host}"
    return f"{result.name}: {', '.join(parts)} on {host}" if parts else f"{result.name} on {host}"


def ran(result: SelftestResult) -> bool:
    """Whether the binary was started at all (a pre-checked skip or a missing binary was not)."""
    return result.returncode is not None or result.status in (Status.TIMEOUT, Status.CRASHED)


def command_line(result: SelftestResult) -> str:
    """The run as a shell command; the plugin runs it from the binary's directory."""
    cmd = shlex.join(result.argv)
    if result.binary:
        return f"cd {shlex.quote(str(Path(result.binary).parent))} && {cmd}"
    return cmd


def _reason_text(result: SelftestResult) -> str:
    parts = [result.reason]
    if result.details:
        parts += ["", result.details]
    return "\n".join(parts).strip() + "\n"


def _attachments(result: SelftestResult, prefix: str = "") -> list[Attachment]:
    out = []
    if result.binary:  # resolved: the exact command, run or (for a pre-checked skip) not
        out.append(Attachment(f"{prefix}command{'' if ran(result) else ' (not run)'}", command_line(result) + "\n"))
    if ran(result):
        partial = " (partial: killed at the timeout)" if result.status is Status.TIMEOUT else ""
        out += [
            Attachment(f"{prefix}stdout{partial}", result.stdout),
            Attachment(f"{prefix}stderr{partial}", result.stderr),
        ]
    if result.metrics:
        out.append(Attachment(f"{prefix}metrics.json", json.dumps(result.metrics, indent=2) + "\n", "json"))
    if result.counters is not None:
        out.append(Attachment(f"{prefix}counts", attachment_text(result.counters_json())))
    if result.status in (Status.SKIPPED, Status.MISSING):
        out.append(Attachment(f"{prefix}skip reason", _reason_text(result)))
    elif result.status.is_failure:
        out.append(Attachment(f"{prefix}failure reason", _reason_text(result)))
    return out


# --- steps: the binary's stages with the times it printed ----------------------------------

#: Stage metrics, in the order the binary runs them, with what each stage does.
PAGE_TABLE_STAGES = (
    ("KVM_CREATE_MAPPINGS", "create the guest mappings (first touch of every page)"),
    ("KVM_UPDATE_MAPPINGS", "write every page again with dirty logging on"),
    ("KVM_ADJUST_MAPPINGS", "split/rebuild the mappings after dirty logging"),
)
_DLP_STAGE = re.compile(r"populate_memory|enable_dirty_logging|iteration_\d+/\w+|disable_dirty_logging")


def _status_of(result: SelftestResult) -> str:
    if result.status is Status.PASSED:
        return "passed"
    if result.status in (Status.SKIPPED, Status.MISSING):
        return "skipped"
    return "broken" if result.status is Status.ERROR else "failed"


#: Metric names of a run over several guest modes: ``p40v48_4k/KVM_CREATE_MAPPINGS``.
_MODE_PREFIX = re.compile(r"((?:p(?:\d+|xx)v\d+_\d+k)|mode\d+)/(.+)")


def _is_stage(binary: str, metric: str) -> bool:
    if binary == "kvm_page_table_test":
        return metric in dict(PAGE_TABLE_STAGES)
    return binary == "dirty_log_perf_test" and _DLP_STAGE.fullmatch(metric) is not None


def _stage_steps(result: SelftestResult, start_ms: int, stop_ms: int) -> tuple[Step, ...]:
    """One step per stage the binary timed, laid out back to back so that the last stage
    ends with the run (setup precedes the stages, teardown is short): the durations are
    the binary's own, the positions an estimate. A page-table run that failed also shows
    the first stage it did not finish."""
    groups: dict[str, list[tuple[str, float, tuple[Parameter, ...]]]] = {}
    stage_counts = result.counters.medians()[1] if result.counters is not None else {}
    for metric, value in result.metrics.items():
        m = _MODE_PREFIX.fullmatch(metric)
        mode, name = (m.group(1), m.group(2)) if m else ("", metric)
        if _is_stage(result.name, name):
            counts = tuple(Parameter(short(e), f"{n:,.0f}") for e, n in stage_counts.get(metric, {}).items() if n)
            groups.setdefault(mode, []).append((name, value, counts))
    died = result.name == "kvm_page_table_test" and result.status.is_failure
    if died and not groups:
        groups[""] = []  # it died before its first stage: show that
    out: list[Step] = []
    for mode, stages in groups.items():
        steps: list[Step] = []
        end = stop_ms
        for name, seconds, counts in reversed(stages):
            begin = max(end - round(seconds * 1000), start_ms)
            steps.insert(0, Step(f"{name}: {_seconds(seconds)}", begin, end, "passed", counts))
            end = begin
        if died:
            done = {name for name, _, _ in stages}
            missing = [(n, what) for n, what in PAGE_TABLE_STAGES if n not in done]
            if missing:
                name, what = missing[0]
                steps.append(Step(f"{name}: not finished ({what})", stop_ms, stop_ms, _status_of(result), message=result.reason))
        if mode:
            status = "passed" if all(s.status == "passed" for s in steps) else _status_of(result)
            out.append(Step(f"guest mode {mode}", steps[0].start if steps else stop_ms, stop_ms, status, steps=tuple(steps)))
        else:
            out.extend(steps)
    return tuple(out)


def _seconds(value: float) -> str:
    """Stage times span microseconds (enabling dirty logging) to minutes: keep 3-4 digits."""
    if value >= 1:
        return f"{value:.3f} s"
    if value >= 1e-3:
        return f"{value * 1e3:.1f} ms"
    return f"{value * 1e6:.0f} µs"


def _run_step(result: SelftestResult) -> Step | None:
    if not ran(result) or result.started_at is None:
        return None
    start = round(result.started_at * 1000)
    stop = round((result.started_at + result.duration_s) * 1000)
    args = " ".join(shlex.quote(a) for a in result.argv[1:])
    return Step(
        f"{result.name} {args}".strip() + f" ({result.duration_s:.2f} s)",
        start,
        stop,
        _status_of(result),
        (Parameter("exit", "timeout" if result.status is Status.TIMEOUT else str(result.returncode)),),
        _stage_steps(result, start, stop),
        "" if result.passed else result.reason,
    )


# --- the whole annotation ------------------------------------------------------------------


def _parameters(shape: Shape, notes: Sequence[str], *, scale: str, host: str) -> list[Parameter]:
    """``host`` and (for a case) ``scale`` and ``kvm_case`` make the identity; the rest is shown only."""
    params = [Parameter("host", host)]
    if shape.case_id is not None:
        params.append(Parameter("scale", scale))
        params.append(Parameter("kvm_case", shape.case_id))
    shown: list[tuple[str, str | int | None]] = [
        ("guest mode", shape.mode),
        ("backing source", shape.backing),
        ("vCPUs", shape.vcpus),
        ("memory per vCPU", None if shape.memory_per_vcpu is None else format_size(shape.memory_per_vcpu)),
        ("memory total", None if shape.memory_total is None else format_size(shape.memory_total)),
        ("iterations", shape.iterations),
        ("notes", "; ".join(notes) if notes else None),
    ]
    params += [Parameter(name, value, excluded=True) for name, value in shown if value is not None and value != ""]
    return params


def describe(
    results: Sequence[SelftestResult],
    record: Record,
    *,
    scale: str,
    test_name: str = "",
    markers: Iterable[str] = (),
) -> Annotation:
    """The Allure view of one test: its record (what it ran as, on which host) and its selftest
    runs, ``results`` (the last one decides: attachments and steps come from each)."""
    if not results:
        raise ValueError("describe() needs at least one selftest result")
    result, shape, host = results[-1], record.shape, record.host
    labels = [("epic", EPIC), ("feature", result.name), ("parentSuite", host), ("severity", _severity(markers))]
    if shape.story:
        labels.append(("story", shape.story))
    attachments: list[Attachment] = []
    steps: list[Step] = []
    for i, run in enumerate(results, 1):
        attachments += _attachments(run, f"run {i}: " if len(results) > 1 else "")
        step = _run_step(run)
        if step is not None:
            steps.append(step)
    return Annotation(
        _title(result, shape, test_name, host),
        tuple(labels),
        tuple(_parameters(shape, record.notes, scale=scale, host=host)),
        tuple(attachments),
        tuple(steps),
    )
