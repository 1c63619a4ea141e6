"""Allure at run time, the pytest side of ``reports/allure_report.py`` (which describes a test
without touching Allure): whether Allure is on, and handing the description to allure-pytest
while it holds the test's result open. allure-pytest is imported lazily: without it, or
without ``--alluredir``, nothing here writes anything.
"""

from __future__ import annotations

import dataclasses
import hashlib
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from ..coordination.safefs import UnsafePath
from ..engine.result import SelftestResult
from ..reports import allure_config, allure_report
from ..reports.record import Record
from ..suite.cases import Case

_ANNOTATED = pytest.StashKey[bool]()



def alluredir(config: pytest.Config) -> Path | None:
    """The results directory when allure-pytest is installed and ``--alluredir`` was given, else None."""
    value = getattr(config.option, "allure_report_dir", None)
    if not value:
        return None  # no option (allure-pytest absent or disabled with -p no:allure_pytest) or not given
    try:
        import allure  # noqa: F401
    except ImportError:
        return None
    # allure-pytest resolves it against the working directory at configure time.
    return Path(config.invocation_params.dir, value).resolve()


def write_session_files(
    config: pytest.Config, records: Sequence[Record], this_host: Callable[[], dict[str, dict[str, str]]]
) -> str | None:
    """categories.json and environment.properties with the facts of every host in ``records``
    and Allure 3's allurerc.mjs
    (``this_host`` without records); a problem is one line, returned, never an INTERNALERROR."""
    target = alluredir(config)
    if target is None or config.option.collectonly:
        return None
    hosts = allure_report.hosts_from_records(records) or this_host()
    try:
        allure_report.write_session_files(target, hosts)
        allure_config.write_config(target)  # Allure 3's categories and per-host environments
    except OSError as exc:  # a link or directory in the results folder
        return str(exc) if isinstance(exc, UnsafePath) else f"cannot write in {target}: {exc.strerror or exc}"
    return None


def enabled(config: pytest.Config) -> bool:
    return alluredir(config) is not None


def case_of(item: pytest.Item) -> Case | None:
    """The catalogue case a suite test runs (its ``kvm_case`` parameter), if any."""
    callspec = getattr(item, "callspec", None)
    case = callspec.params.get("kvm_case") if callspec is not None else None
    return case if isinstance(case, Case) else None


def suite_full_name(item: pytest.Item) -> str | None:
    """``pytest_kvmmm.suite.test_mm#test_kvm_page_table`` for a catalogue case, else None.

    allure-pytest names a test after its pytest node id, which is relative to the rootdir:
    ``pytest --pyargs pytest_kvmmm.suite`` run from two directories gives two names, hence two
    historyIds, and the rerun loses its history. The module's import name does not move.
    """
    module = getattr(getattr(item, "module", None), "__name__", None)
    if case_of(item) is None or not module:
        return None
    return f"{module}#{getattr(item, 'originalname', item.name)}"


def annotate_test(item: pytest.Item, results: Sequence[SelftestResult], record: Record, *, scale: str) -> None:
    """Give the running test's Allure result its labels, title, parameters, attachments and steps,
    from its record and its selftest runs.

    Call it from ``pytest_runtest_makereport`` of the report that decides the test (the call
    report, or a setup report that skipped or failed), while allure-pytest still holds the
    result open. A no-op without Allure, for a test without selftest runs, and on a second
    call for the same item.
    """
    if item.stash.get(_ANNOTATED, False) or not enabled(item.config) or not results:
        return
    item.stash[_ANNOTATED] = True
    try:
        markers = [m.name for m in item.iter_markers()]
        annotation = allure_report.describe(results, record, scale=scale, test_name=item.name, markers=markers)
        if any(m.name == "allure_label" and m.kwargs.get("label_type") == "severity" for m in item.iter_markers()):
            # the test's own @allure.severity wins (allure-pytest adds it at teardown)
            annotation = dataclasses.replace(annotation, labels=tuple(lb for lb in annotation.labels if lb[0] != "severity"))
        _apply(item.config, annotation, suite_full_name(item))
    except Exception as exc:  # a report must never cost a lab its test run
        warnings.warn(pytest.PytestWarning(f"pytest-kvmmm: no Allure annotation for {item.nodeid}: {exc!r}"), stacklevel=1)


def _apply(config: pytest.Config, annotation: allure_report.Annotation, full_name: str | None) -> None:
    import allure
    from allure_commons.types import AttachmentType

    dynamic: Any = allure.dynamic  # untyped upstream
    dynamic.title(annotation.title)
    for name, value in annotation.labels:
        dynamic.label(name, value)
    for p in annotation.parameters:
        dynamic.parameter(p.name, p.value, excluded=p.excluded or None)
    for a in annotation.attachments:
        kind = AttachmentType.JSON if a.kind == "json" else AttachmentType.TEXT
        allure.attach(a.body, name=a.name, attachment_type=kind)
    test = _open_result(config)
    if test is None:
        return
    if full_name is not None:
        # allure-pytest derives historyId from fullName at teardown, after this call
        test.fullName = full_name
        test.testCaseId = hashlib.md5(full_name.encode()).hexdigest()  # as allure-pytest computes it
    test.steps.extend(_allure_step(s) for s in annotation.steps)


def _open_result(config: pytest.Config) -> Any:
    """The test result allure-pytest's listener holds open, or None.

    The public API has no way to give a step its own start and stop (``allure.step`` stamps
    "now") or to name a test, so these two go to the result itself; should allure-pytest's
    internals move, they are left out rather than failing the test.
    """
    from allure_commons.model2 import TestResult

    listener = config.pluginmanager.get_plugin("allure_listener")
    reporter = getattr(listener, "allure_logger", None)
    test = reporter.get_test(None) if reporter is not None and hasattr(reporter, "get_test") else None
    return test if isinstance(test, TestResult) else None


def _allure_step(step: allure_report.Step) -> Any:
    from allure_commons.model2 import Parameter as AllureParameter
    from allure_commons.model2 import StatusDetails, TestStepResult

    return TestStepResult(
        name=step.name,
        status=step.status,
        start=step.start,
        stop=step.stop,
        parameters=[AllureParameter(name=p.name, value=str(p.value)) for p in step.parameters],
        steps=[_allure_step(s) for s in step.steps],
        statusDetails=StatusDetails(message=step.message) if step.message else None,
    )
