"""A test's record on the pytest side: what it ran as, and how it travels on its report.

The record is made in ``reports/record.py`` (``build``) from the test's last selftest result
and its shape: a catalogue case's, handed over by ``run_case`` through the ``kvm_selftests``
runner (``SHAPE_KEY``), or, for a case that skipped before it was sized, the case alone; a
test of one's own has its arguments. It rides on the report that decided the test as its
JSON form under ``kvm_selftest`` in ``report.user_properties`` (what xdist sends from a
worker to the controller), and the controller reads it back with ``from_report``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ..coordination.testids import stable_nodeid
from ..engine.result import SelftestResult
from ..reports import verdict
from ..reports.record import Record, build
from ..suite.shape import Shape, of_argv, of_case
from .allure import case_of
from .dashboards import Dashboards
from .keys import RECORD_PROPERTY, SHAPE_KEY

#: ``KvmmmPlugin.regression``: why a passed test regressed against the baseline, or None.
Regression = Callable[[pytest.Item, str, SelftestResult], "str | None"]


def shape_of(item: pytest.Item, result: SelftestResult) -> Shape:
    """What the test ran as: its case's shape, never read back from the command line of a case."""
    stashed = item.stash.get(SHAPE_KEY, None)
    if stashed is not None:
        return stashed
    case = case_of(item)
    return of_case(case, None) if case is not None else of_argv(result.name, result.argv)


def attach(report: pytest.TestReport, record: Record) -> None:
    """Put ``record`` on ``report`` (a fresh list: ``item.user_properties`` is shared by the
    setup, call and teardown reports)."""
    report.user_properties = [*report.user_properties, (RECORD_PROPERTY, record.to_json())]


def from_report(report: pytest.TestReport) -> list[Record]:
    """The records a report carries (one, or none), back from their JSON form; raises
    ``ValueError`` or ``TypeError`` for a damaged one."""
    return [Record.from_json(value) for name, value in report.user_properties
            if name == RECORD_PROPERTY and isinstance(value, dict)]


def decide(
    item: pytest.Item,
    report: pytest.TestReport,
    result: SelftestResult,
    *,
    host: str,
    host_facts: dict[str, str],
    dash: Dashboards,
    counters_off: str | None,
    regression: Regression | None,
    inputs: dict[str, Any] | None = None,
) -> Record:
    """The record of the report that decides the test, built once, then each later verdict as a
    new record: pytest's and a known issue's (``Dashboards.decide``), then a baseline regression,
    which fails the report too."""
    record = build(
        result, shape_of(item, result), nodeid=stable_nodeid(item.path, item.nodeid), host=host,
        outcome=report.outcome, host_facts=host_facts, counters_off=counters_off, inputs=inputs,
    )
    record = dash.decide(item, report, record)
    if regression is not None and report.when == "call" and report.passed:
        longrepr = regression(item, host, result)
        if longrepr:
            report.outcome, report.longrepr = "failed", longrepr
            record = verdict.regressed(record, longrepr)
    return record


def point_skip_at_test(item: pytest.Item, report: pytest.TestReport) -> None:
    """Point a skip at the test, not at the plugin line that raised it. A catalogue test's
    function is made in cases.py: name its suite module instead."""
    if report.skipped and isinstance(report.longrepr, tuple):
        path, line = item.reportinfo()[:2]
        if Path(path) != item.path:
            path, line = item.path, 0
        report.longrepr = (os.fspath(path), (line or 0) + 1, report.longrepr[2])
