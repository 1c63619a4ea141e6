"""A record tells pytest's verdict: status, metrics and attempts follow the final report.

The selftest engine decides a record's ``status`` from the binary alone. pytest can still
fail the test afterwards (the test body asserts on a metric that is missing, a baseline
regression) or skip it from the body, and pytest-rerunfailures can run it again. Pure:
a ``Record`` in, a new one out (``dataclasses.replace``); the plugin calls these from its
report hooks, in this order: ``agree``, a known issue (``expected_failure`` or
``known_issue_passed``), ``regressed``, and on the controller ``with_attempts``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from .record import Record

#: Record statuses that are not the binary's own (``Status`` holds those): pytest's verdicts.
XFAILED = "xfailed"
#: Where a failed run's numbers go: kept for triage, never shown as measured nor saved.
FAILED_RUN_METRICS = "metrics_of_failed_run"
FAILED_RUN_COUNTERS = "counters_of_failed_run"
#: Statuses whose metrics are measurements (a baseline regression keeps its own numbers).
MEASURED = ("passed",)


def first_line(text: str, limit: int = 300) -> str:
    """The first non-empty line of a failure text, bounded: a record's reason is one line."""
    for line in text.splitlines():
        if line.strip():
            line = line.strip()
            return line if len(line) <= limit else line[: limit - 3] + "..."
    return ""


def agree(record: Record, outcome: str, longrepr: str) -> Record:
    """Make ``status`` agree with pytest's ``outcome`` for the report that decided the test.

    A binary that passed in a test that pytest failed is ``failed`` with pytest's reason (a
    missing metric, a failed assertion of the body); one the body skipped is ``skipped``.
    A status that already is a failure stays as the binary made it (more precise).
    """
    if outcome == "failed" and record.status in ("passed", "skipped", "missing"):
        record = replace(record, status="failed", reason=first_line(longrepr) or "failed by the test after the selftest passed")
    elif outcome == "skipped" and record.status == "passed":
        record = replace(record, status="skipped", reason=first_line(longrepr) or "skipped by the test")
    return strip_unmeasured(record)


def strip_unmeasured(record: Record) -> Record:
    """A run that did not pass measured nothing: its numbers move to ``metrics_of_failed_run``
    (kept for triage), so no summary table, export or baseline takes them as measurements."""
    if record.status in MEASURED:
        return record
    if record.measured:
        record = replace(record, metrics_of_failed_run=dict(record.metrics), metrics={}, samples={})
    if record.counters:  # --kvm-counters' event counts are measurements too
        record = replace(record, counters_of_failed_run=record.counters, counters=None)
    return record


def expected_failure(record: Record, known_issue: Mapping[str, Any]) -> Record:
    """A failure a known issue describes: an expected failure (pytest's xfail) with its link."""
    return replace(record, status=XFAILED, outcome="skipped", known_issue=dict(known_issue))


def known_issue_passed(record: Record, known_issue: Mapping[str, Any]) -> Record:
    """A pass where a known issue expected a failure: said, so the entry can be retired."""
    return replace(record, known_issue={**known_issue, "passed": True})


def regressed(record: Record, longrepr: str) -> Record:
    """A pass that ``--kvm-fail-regression`` failed: failed with the regression's first line; its
    numbers stay, they are what regressed."""
    return replace(record, status="failed", outcome="failed", reason=first_line(longrepr))


#: What an earlier attempt keeps: its verdict, not its numbers.
ATTEMPT_KEYS = ("status", "reason", "returncode", "duration_s", "started_at", "ended_at", "kernel_log")


def attempt_of(record: Record) -> dict[str, Any]:
    """What an earlier attempt (a pytest-rerunfailures rerun) keeps: its verdict, not its numbers."""
    data = record.to_json()
    return {k: data[k] for k in ATTEMPT_KEYS if k in data}


def with_attempts(record: Record, earlier: Sequence[Mapping[str, Any]]) -> Record:
    """The final record of a rerun test: ``attempts`` lists every attempt, the final one last,
    and ``flaky`` says a failure was followed by a pass. Its status stays the final verdict."""
    if not earlier:
        return record
    return replace(record, attempts=(*earlier, attempt_of(record)), flaky=record.status == "passed")
