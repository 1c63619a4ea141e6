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
from ..host.units import format_size, parse_size
from ..suite.backing import BACKING_SOURCES
from ..suite.cases import Case
from ..suite.catalogue import BY_NAME, Entry
from .allure_files import (
    CATEGORIES,
    RECORD_FACTS,
    categories_json,
    categorize,
    hosts_from_records,
    selftests_build,
    write_session_files,
)

__all__ = [
    "CATEGORIES", "RECORD_FACTS", "categories_json", "categorize",
    "describe", "hosts_from_records", "selftests_build",
    "write_session_files",
]

EPIC = "KVM MMU"

_ENTRIES: dict[str, Entry] = {
    **{alias: e for e in BY_NAME.values() for alias in e.aliases},
    **BY_NAME,
}
#: Where a binary takes its vCPU count, when not ``-v``.
_VCPU_FLAG = {"max_guest_memory_test": "-c", "mmu_stress_test": "-c"}
#: Binaries whose ``-i`` is a number of iterations.
_ITERATIONS = ("dirty_log_test", "dirty_log_perf_test", "memslot_modification_stress_test")


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


def _flag(argv: Sequence[str], flag: str) -> str | None:
    """The value after ``flag`` in a selftest's arguments (``argv[0]`` is the binary)."""
    args = list(argv[1:])
    for i, arg in enumerate(args[:-1]):
        if arg == flag:
            return args[i + 1]
    return None


def _size(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return parse_size(text)
    except ValueError:
        return None


@dataclass(frozen=True)
class _Shape:
    """What the run's arguments say about its size: vCPUs and guest memory."""

    vcpus: int | None
    per_vcpu: int | None
    total: int | None

    def text(self) -> str:
        if self.vcpus is None:
            return f"{format_size(self.total)} total" if self.total else ""
        cpus = f"{self.vcpus} vCPU{'s' if self.vcpus != 1 else ''}"
        if self.per_vcpu is None or self.total is None:
            return cpus
        if self.vcpus == 1:
            return f"{cpus}, {format_size(self.total)}"
        return f"{cpus} x {format_size(self.per_vcpu)} ({format_size(self.total)} total)"


def _shape(result: SelftestResult, entry: Entry | None) -> _Shape:
    raw_vcpus = _flag(result.argv, _VCPU_FLAG.get(result.name, "-v"))
    vcpus = int(raw_vcpus) if raw_vcpus is not None and raw_vcpus.isdigit() else None
    memory = _size(_flag(result.argv, "-b"))
    if memory is None or entry is None:  # an unknown binary's -b may mean anything
        return _Shape(vcpus, None, None)
    n = vcpus or 1
    if entry.per_vcpu:
        return _Shape(vcpus, memory, memory * n)
    return _Shape(vcpus, memory // n, memory)


def _entry_of(result: SelftestResult, case: Case | None) -> Entry | None:
    return case.entry if case is not None else _ENTRIES.get(result.name)


def _guest_mode(result: SelftestResult, case: Case | None, entry: Entry | None) -> str | None:
    if case is not None:
        return case.mode if entry is None or entry.takes_modes else None
    if entry is not None and entry.takes_modes:
        mode_id = _flag(result.argv, "-m")
        return DEFAULT_MODE if mode_id is None else f"id {mode_id}"
    return None


def _story(case: Case | None) -> str | None:
    if case is None:
        return None
    return case.variant.id or case.backing or "default"


def _severity(markers: Iterable[str]) -> str:
    """Guest page-table tests are the job of the suite: their failures come first."""
    return "critical" if "pagetable" in markers else "normal"


def _title(result: SelftestResult, case: Case | None, test_name: str, mode: str | None, shape: _Shape, host: str) -> str:
    """``<binary>: <variant>, <backing>, <mode>, <size> on <host>``; a test of one's own keeps its name first."""
    parts: list[str] = []
    if case is not None:
        parts += [p for p in (case.variant.id, case.backing) if p]
    if mode and mode != DEFAULT_MODE:
        parts.append(mode)
    if shape.text():
        parts.append(shape.text())
    if case is None:
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


def describe(
    results: Sequence[SelftestResult],
    case: Case | None,
    *,
    scale: str,
    host: str,
    test_name: str = "",
    markers: Iterable[str] = (),
) -> Annotation:
    """The Allure view of one test whose selftest runs were ``results`` (the last one decides)."""
    if not results:
        raise ValueError("describe() needs at least one selftest result")
    result = results[-1]
    entry = _entry_of(result, case)
    shape = _shape(result, entry)
    mode = _guest_mode(result, case, entry)
    backing = case.backing if case is not None else _flag(result.argv, "-s")
    if backing not in BACKING_SOURCES:  # -s is a slot size or a memslot cap to some binaries
        backing = None
    markers = tuple(markers)

    labels = [("epic", EPIC), ("feature", result.name), ("parentSuite", host), ("severity", _severity(markers))]
    story = _story(case)
    if story:
        labels.append(("story", story))

    params = [Parameter("host", host)]
    if case is not None:
        params.append(Parameter("scale", scale))
        params.append(Parameter("kvm_case", case.id))
    if mode is not None:
        params.append(Parameter("guest mode", mode, excluded=True))
    if backing:
        params.append(Parameter("backing source", backing, excluded=True))
    if shape.vcpus is not None:
        params.append(Parameter("vCPUs", shape.vcpus, excluded=True))
    if shape.per_vcpu is not None:
        params.append(Parameter("memory per vCPU", format_size(shape.per_vcpu), excluded=True))
    if shape.total is not None:
        params.append(Parameter("memory total", format_size(shape.total), excluded=True))
    iterations = _flag(result.argv, "-i") if result.name in _ITERATIONS else None
    if iterations is not None:
        params.append(Parameter("iterations", int(iterations) if iterations.isdigit() else iterations, excluded=True))
    if result.notes:
        params.append(Parameter("notes", "; ".join(result.notes), excluded=True))

    attachments: list[Attachment] = []
    steps: list[Step] = []
    for i, run in enumerate(results, 1):
        attachments += _attachments(run, f"run {i}: " if len(results) > 1 else "")
        step = _run_step(run)
        if step is not None:
            steps.append(step)
    return Annotation(
        _title(result, case, test_name, mode, shape, host),
        tuple(labels),
        tuple(params),
        tuple(attachments),
        tuple(steps),
    )
