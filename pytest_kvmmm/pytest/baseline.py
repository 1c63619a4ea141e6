"""pytest side of baselines: ``--kvm-save``, ``--kvm-compare``, ``--kvm-fail-regression``.

``add_options`` adds the options; a ``BaselinePlugin`` (registered by the session plugin at
configure time, in every process) holds the state:

* every process loads the baseline to compare with (a file: xdist workers read it too) and
  fails, in ``pytest_runtest_makereport``, a passed test whose metric regressed beyond its
  threshold against it;
* the process that owns the session (the xdist controller, or the only process) collects
  the host fingerprints from the reports and, with the records the session plugin collects,
  prints the before/after table and saves the run.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ..baseline import store
from ..baseline.compare import compare, pair_hosts, regressed
from ..baseline.fingerprint import (
    Fingerprint,
    fingerprint,
    machine_differences,
    selftests_build,
    unforceable,
)
from ..baseline.stats import MIN_EFFECT_PCT
from ..baseline.table import regression_message, terminal_lines
from ..coordination.safefs import target_problem
from ..engine.engine import SelftestEngine
from ..engine.result import SelftestResult
from ..host.emulation import emulated_by
from ..host.model import HostFacts
from ..reports.record import Record
from . import options
from .invocation import Raw
from .keys import RECORD_PROPERTY, REGRESSED_KEY, SCALE_KEY

#: This plugin's: the fingerprint of the host a test ran on, and the metrics that failed it.
HOST_PROPERTY = "kvm_baseline_host"
FAILED_PROPERTY = "kvm_baseline_regressed"

#: Runs per perf test, per scale, when saving or comparing and the user did not choose
#: (--kvm-repeat / ini kvm_repeat). What keeps a verdict from crying wolf is the time its
#: samples span (a shared host drifts over seconds to minutes, see stats.py): at smoke scale a
#: page-table run takes ~0.5 s and 20 of them span ~10-30 s, where ci/bench_verdicts.py's A/A
#: runs go quiet; a default-scale run takes ~9 s, so 5 span as long; stress runs take minutes.
DEFAULT_REPEAT: Mapping[str, int] = {"smoke": 20, "default": 5, "stress": 3}

REGRESSION_SIGNATURE = "kvm_regression(pct=None, **{metric: pct})"
REGRESSION_MARKER = (
    f"{REGRESSION_SIGNATURE}: this test's --kvm-fail-regression threshold in percent, for every "
    "metric or per metric, e.g. kvm_regression(15, KVM_ADJUST_MAPPINGS=25)"
)
HELP_SAVE = (
    "save this run's metrics (every sample), host fingerprint and selftests build as baseline NAME "
    "in the baselines folder, or to FILE (a path, or a name ending in .json)"
)
HELP_COMPARE = (
    "compare this run with baseline NAME (in the baselines folder) or FILE: before, after, change "
    "and a verdict per metric in the terminal"
)
HELP_FAIL = (
    "with --kvm-compare: fail a test whose metric regressed significantly by PCT percent or more "
    f"(at least {MIN_EFFECT_PCT:g}); improvements never fail; per test: @pytest.mark.{REGRESSION_SIGNATURE}"
)
HELP_FORCE = "give verdicts (and fail regressions) even when the baseline comes from a host with another fingerprint"
HELP_BASELINES = (
    f"folder of saved baselines; also ${store.BASELINES_ENV} and ini kvm_baselines (relative to the ini file) "
    "(default: ~/.cache/pytest-kvmmm/baselines)"
)


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("kvmmm", "KVM selftests (pytest-kvmmm)")
    group.addoption("--kvm-save", metavar="NAME", help=HELP_SAVE)
    group.addoption("--kvm-compare", metavar="NAME|FILE", help=HELP_COMPARE)
    group.addoption("--kvm-fail-regression", metavar="PCT", help=HELP_FAIL)
    group.addoption("--kvm-compare-force", action="store_true", default=False, help=HELP_FORCE)
    group.addoption("--kvm-baselines", metavar="DIR", help=HELP_BASELINES)
    parser.addini("kvm_baselines", HELP_BASELINES)
    parser.addini("kvm_fail_regression", HELP_FAIL)


def parse_pct(value: object, origin: str) -> float:
    """A threshold in percent; a bad one is a UsageError naming where it came from."""
    try:
        pct = float(str(value).rstrip("%"))
    except ValueError:
        raise pytest.UsageError(f"{origin}: {value!r} is not a percentage") from None
    if isinstance(value, bool) or not pct >= MIN_EFFECT_PCT:
        raise pytest.UsageError(
            f"{origin}: {value!r}: the threshold must be at least {MIN_EFFECT_PCT:g} percent "
            "(smaller changes are within a shared host's run-to-run noise and never get a verdict)"
        )
    return pct


def parse_regression_marker(mark: pytest.Mark) -> tuple[float | None, dict[str, float]]:
    """``kvm_regression(pct=None, **{metric: pct})``; a malformed one is a UsageError quoting it."""
    where = f"@pytest.mark.{REGRESSION_SIGNATURE}"
    if len(mark.args) > 1:
        raise pytest.UsageError(f"{where}: takes one threshold for every metric, then metric=pct keywords")
    pct = mark.args[0] if mark.args else mark.kwargs.get("pct")
    per_metric = {k: v for k, v in mark.kwargs.items() if k != "pct"}
    default = None if pct is None else parse_pct(pct, where)
    return default, {metric: parse_pct(v, f"{where}: {metric}") for metric, v in per_metric.items()}


def resolve_thresholds(
    option: float, entry: Mapping[str, float], marker: tuple[float | None, Mapping[str, float]] | None
) -> tuple[float, dict[str, float]]:
    """The (default, per metric) thresholds of one test, most specific first: the marker's metric,
    the marker's default, the catalogue entry's metric, its ``"*"``, then the option."""
    per_metric = {k: v for k, v in entry.items() if k != "*"}
    default = entry.get("*", option)
    if marker is not None:
        pct, metrics = marker
        if pct is not None:
            default, per_metric = pct, {}
        per_metric.update(metrics)
    return default, per_metric


def _entry_thresholds(item: pytest.Item) -> Mapping[str, float]:
    """A catalogue case's own thresholds (``Entry.regression_pct``), if its entry has any."""
    case = getattr(getattr(item, "callspec", None), "params", {}).get("kvm_case")
    found = getattr(getattr(case, "entry", None), "regression_pct", None)
    return found if isinstance(found, Mapping) else {}


@dataclass(frozen=True)
class BaselineSettings:
    save_name: str | None = None
    save_to: Path | None = None
    #: The run to compare with (loaded by every process: xdist workers fail regressions too).
    before: store.Baseline | None = None
    fail_pct: float | None = None
    force: bool = False
    #: The repeat count this plugin sets (saving or comparing, and no --kvm-repeat / ini kvm_repeat).
    repeat: int | None = None

    @property
    def active(self) -> bool:
        return self.save_to is not None or self.before is not None


def _folder_note(directory: Raw | None) -> str:
    """Where the baselines folder came from, for a message about a name in it."""
    return "" if directory is None else f" (the baselines folder from {directory.origin})"


def resolve(config: pytest.Config) -> BaselineSettings:
    """The options, through ``options.sources`` (command line > environment > ini > default); a
    bad value is a UsageError saying why and where it came from."""
    src = options.sources(config)
    folder = src.pick("kvm_baselines", env=(store.BASELINES_ENV,), ini="kvm_baselines", path=True)
    directory = store.baselines_dir(folder.value if folder else None, src.env)
    save, compare_with = src.option("kvm_save"), src.option("kvm_compare")
    save_to = None
    if save is not None and save.value:
        try:
            save_to = store.save_path(save.value, directory)
        except store.BaselineError as exc:
            raise pytest.UsageError(f"{save.origin}: {exc}") from None
        problem = target_problem(save_to) if not hasattr(config, "workerinput") else None
        if problem:  # found now, not after the whole run
            raise pytest.UsageError(f"{save.origin}: {problem}{'' if store.is_path(save.value) else _folder_note(folder)}")
    before = None
    if compare_with is not None and compare_with.value:
        try:
            before = store.load(store.find(compare_with.value, directory))
        except store.BaselineError as exc:
            note = "" if store.is_path(compare_with.value) else _folder_note(folder)
            raise pytest.UsageError(f"{compare_with.origin}: {exc}{note}") from None
    threshold = src.pick("kvm_fail_regression", ini="kvm_fail_regression")
    if threshold is not None and before is None and threshold.origin.startswith("--"):
        raise pytest.UsageError("--kvm-fail-regression needs --kvm-compare NAME|FILE: the baseline to compare with")
    fail_pct = parse_pct(threshold.value, threshold.origin) if threshold is not None and before is not None else None
    repeat = None
    if (save_to or before) and src.pick("kvm_repeat", ini="kvm_repeat") is None:
        repeat = DEFAULT_REPEAT.get(config.stash.get(SCALE_KEY, "default"), DEFAULT_REPEAT["default"])
    return BaselineSettings(save.value if save and save.value else None, save_to, before, fail_pct, bool(src.option("kvm_compare_force")), repeat)


class BaselinePlugin:
    def __init__(
        self,
        config: pytest.Config,
        settings: BaselineSettings,
        engine: SelftestEngine,
        host: Callable[[], HostFacts],
        records: list[Record],
        label: Callable[[], str],
    ) -> None:
        """``host``, ``records`` and ``label`` are the session plugin's: this host's facts, the
        records it collects from the reports (in the process that owns the session), and the
        name it gives this host's results."""
        config.addinivalue_line("markers", REGRESSION_MARKER)
        self.config = config
        self.engine = engine
        self.host = host
        self.records = records
        self.label = label
        self.is_worker = hasattr(config, "workerinput")
        #: Resolved before the engine was built: the engine's repeat already includes ``repeat``.
        self.settings = settings
        self._fingerprint: Fingerprint | None = None
        self._this_run: store.Baseline | None = None
        #: Collected by the process that owns the session, from the reports.
        self.fingerprints: dict[str, Fingerprint] = {}
        self.failed: list[tuple[str, list[str]]] = []
        self.saved: str | None = None

    def fingerprint(self) -> Fingerprint:
        """This process's host, probed once."""
        if self._fingerprint is None:
            self._fingerprint = fingerprint(self.host(), selftests_build(self.engine.search_roots()), emulated_by())
        return self._fingerprint

    def pytest_report_header(self, config: pytest.Config) -> list[str]:
        if not self.settings.active:
            return []
        lines = []
        if self.settings.before is not None:
            b, fail_pct = self.settings.before, self.settings.fail_pct
            lines.append(
                f"kvmmm: comparing with baseline {b.name!r} ({b.path}), saved {b.created_at} on "
                f"{', '.join(b.hosts) or 'no host'}, repeat {b.repeat or '?'}"
                + (f"; failing regressions of {fail_pct:g}% or more" if fail_pct is not None else "")
            )
            pairs = pair_hosts(list(b.hosts), [self.label()])
            if pairs:
                diffs = machine_differences(b.hosts[pairs[0][0]].fingerprint, self.fingerprint())
                if diffs:
                    lines.append(
                        f"kvmmm: WARNING: this host differs from the baseline's {pairs[0][0]}: "
                        + "; ".join(str(d) for d in diffs)
                        + (" (no verdicts: an emulated host is never compared with a physical one)" if unforceable(diffs)
                           else "" if self.settings.force else " (no verdicts; --kvm-compare-force to give them anyway)")
                    )
        if self.settings.save_to is not None:
            lines.append(f"kvmmm: saving this run as baseline {self.settings.save_to}")
        repeat = self.engine.perf_repeat
        why = " (the baselines default at this scale; --kvm-repeat N to change)" if self.settings.repeat else ""
        lines.append(f"kvmmm: perf tests run {repeat} time{'s' if repeat != 1 else ''}{why}")
        return lines

    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        """A malformed kvm_regression marker is a usage error before anything runs."""
        for item in items:
            mark = item.get_closest_marker("kvm_regression")
            if mark is not None:
                parse_regression_marker(mark)

    def thresholds(self, item: pytest.Item) -> tuple[float, dict[str, float]]:
        """(default, per metric) thresholds of a test: its marker, else its catalogue entry, else the option."""
        assert self.settings.fail_pct is not None
        mark = item.get_closest_marker("kvm_regression")
        return resolve_thresholds(
            self.settings.fail_pct, _entry_thresholds(item), parse_regression_marker(mark) if mark is not None else None
        )

    def regression(self, item: pytest.Item, host: str, result: SelftestResult) -> str | None:
        """The session's verdict hook (``KvmmmPlugin.regression``): why a passed test fails for
        ``--kvm-fail-regression``, or None. The session fails the report and the record with it;
        the failed metrics go on the report (``FAILED_PROPERTY``) for the controller's line."""
        if self.settings.fail_pct is None or self.settings.before is None:
            return None
        found = regressed(self.settings.before, host, self.fingerprint(), item.nodeid, result.all_samples,
                          self.thresholds(item), force=self.settings.force)
        if not found:
            return None
        item.stash[REGRESSED_KEY] = [c.metric for c, _ in found]
        return regression_message(self.settings.before.name, found)

    @pytest.hookimpl(wrapper=True, tryfirst=True)  # tryfirst: outermost, after the session attached the record
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        """The report that carries a record also carries the fingerprint of its host (and the
        metrics a regression failed it for): the controller saves and compares by host."""
        report = yield
        if not self.settings.active or not any(name == RECORD_PROPERTY for name, _ in report.user_properties):
            return report
        extra: list[tuple[str, object]] = [
            (HOST_PROPERTY, {"host": self.label(), "fingerprint": self.fingerprint().to_json()})
        ]
        failed = item.stash.get(REGRESSED_KEY, None)
        if report.when == "call" and failed:
            extra.append((FAILED_PROPERTY, {"nodeid": item.nodeid, "metrics": failed}))
        report.user_properties = [*report.user_properties, *extra]
        return report

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if self.is_worker or not self.settings.active:
            return
        for name, value in report.user_properties:
            if name == HOST_PROPERTY and isinstance(value, dict):
                self.fingerprints[str(value["host"])] = Fingerprint.from_json(value["fingerprint"])
            elif name == FAILED_PROPERTY and isinstance(value, dict):
                self.failed.append((str(value["nodeid"]), list(value["metrics"])))

    def this_run(self) -> store.Baseline:
        """The session's run as a baseline, made once all its reports are in (saved and compared alike)."""
        if self._this_run is None:
            self._this_run = store.from_records(
                [r.to_json() for r in self.records],  # as from --kvm-results files (kvmmm-ab)
                self.fingerprints,
                name=self.settings.save_name or "this run",
                scale=self.config.stash.get(SCALE_KEY, None),
                repeat=self.engine.perf_repeat,
                command=self.config.invocation_params.args,
            )
        return self._this_run

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        """Save the run, once, in the process that owns the session."""
        if self.is_worker or self.settings.save_to is None or self.config.option.collectonly:
            return
        if exitstatus == pytest.ExitCode.INTERRUPTED:
            self.saved = f"not saved as {self.settings.save_to}: the run was interrupted"
            return
        run = self.this_run()
        if not any(t.samples for h in run.hosts.values() for t in h.tests.values()):
            self.saved = f"not saved as {self.settings.save_to}: no selftest printed metrics"
            return
        try:
            store.save(run, self.settings.save_to)
        except store.BaselineError as exc:
            self.saved = str(exc)
            return
        self.saved = f"saved baseline {run.name!r}: {self.settings.save_to}"

    @pytest.hookimpl(trylast=True)  # trylast: after the session plugin's "kvm selftests" section
    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.is_worker or not self.settings.active or self.config.option.collectonly:
            return
        before = self.settings.before
        if before is not None:
            comparison = compare(before, self.this_run(), force=self.settings.force)
            terminalreporter.write_sep("=", f"kvm before/after: {before.name} -> {comparison.after.name}")
            for line in terminal_lines(comparison):
                terminalreporter.write_line(line, red=line.startswith("WARNING"), bold=line.startswith("WARNING"))
            if comparison.mismatched and not self.settings.force:
                terminalreporter.write_sep("!", "the baseline comes from another host: no verdicts", red=True)
            if self.failed:
                terminalreporter.write_line(
                    f"failed by --kvm-fail-regression ({len(self.failed)}): "
                    + "; ".join(f"{nodeid} ({', '.join(m)})" for nodeid, m in self.failed),
                    red=True,
                )
        if self.saved is not None:
            terminalreporter.write_line(f"kvmmm: {self.saved}")
