"""A record tells pytest's verdict: status, metrics and attempts follow the final report.

The selftest engine decides a record's ``status`` from the binary alone. pytest can still
fail the test afterwards (the test body asserts on a metric that is missing, a baseline
regression) or skip it from the body, and pytest-rerunfailures can run it again. Pure:
records (``dict``) in, records out; the plugin calls these from its report hooks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

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


def agree(record: dict[str, Any], outcome: str, longrepr: str) -> dict[str, Any]:
    """Make ``status`` agree with pytest's ``outcome`` for the report that decided the test.

    A binary that passed in a test that pytest failed is ``failed`` with pytest's reason (a
    missing metric, a failed assertion of the body); one the body skipped is ``skipped``.
    A status that already is a failure stays as the binary made it (more precise).
    """
    status = str(record.get("status", ""))
    if outcome == "failed" and status in ("passed", "skipped", "missing"):
        record["status"] = "failed"
        record["reason"] = first_line(longrepr) or "failed by the test after the selftest passed"
    elif outcome == "skipped" and status == "passed":
        record["status"] = "skipped"
        record["reason"] = first_line(longrepr) or "skipped by the test"
    return strip_unmeasured(record)


def strip_unmeasured(record: dict[str, Any]) -> dict[str, Any]:
    """A run that did not pass measured nothing: its numbers move to ``metrics_of_failed_run``
    (kept for triage), so no summary table, export or baseline takes them as measurements."""
    if record.get("status") in MEASURED:
        return record
    if record.get("metrics") or record.get("samples"):
        record[FAILED_RUN_METRICS] = dict(record.get("metrics") or {})
        record["metrics"] = {}
        record["samples"] = {}
    if record.get("counters"):  # --kvm-counters' event counts are measurements too
        record[FAILED_RUN_COUNTERS] = record.pop("counters")
    return record


def attempt_of(record: Mapping[str, Any]) -> dict[str, Any]:
    """What an earlier attempt (a pytest-rerunfailures rerun) keeps: its verdict, not its numbers."""
    keep = ("status", "reason", "returncode", "duration_s", "started_at", "ended_at", "kernel_log")
    return {k: record[k] for k in keep if k in record}


def with_attempts(record: dict[str, Any], earlier: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The final record of a rerun test: ``attempts`` lists every attempt, the final one last,
    and ``flaky`` says a failure was followed by a pass. Its status stays the final verdict."""
    if earlier:
        record["attempts"] = [*earlier, attempt_of(record)]
        record["flaky"] = record.get("status") == "passed"
    return record
