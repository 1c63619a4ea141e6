"""The session object of pytest-kvmmm: one per pytest process, registered by ``pytest_configure``.

Lifecycle: built in ``pytest_configure`` from the resolved settings, touching nothing on the
host. It activates when the run needs the host (its first selftest test, or a named
``--kvm-*`` option): undo what a killed earlier session left changed, watch the kernel log,
count events, join the xdist run's shared state. Per test it checks ``kvm_requires``, runs a
``kvm_selftest`` marker's binary and, on the report that decides the test, attaches its record
(made once in ``reports/record.py`` from the last result and the case, then given pytest's,
a known issue's and a baseline regression's verdicts: ``records.decide``); the controller
reads the records back from the reports, gives a rerun test its attempts, writes
``--kvm-results`` and prints the summary (``terminal.py``). At session finish it
restores the host and writes Allure's and the dashboards' files; ``pytest_unconfigure``
closes what it opened.
"""

from __future__ import annotations

import socket
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import Any

import pytest

from ..coordination.host_changes import HostChanges
from ..coordination.ledger import HostCoordinator
from ..coordination.rundir import remove_run_dirs, run_dir, shared_probe
from ..coordination.safefs import UnsafePath, private_dir
from ..coordination.signals import SignalGuard
from ..engine.requirements import Requirement, first_unmet
from ..engine.result import SelftestResult
from ..host import HostFacts, probe_host
from ..host.emulation import emulated_by
from ..host.report import fact_texts
from ..host.view import HostView
from ..provision.cache import journal_dir
from ..reports import allure_report
from ..reports.record import Record
from ..reports.results import ResultsWriter
from . import allure, dashboards, options, parametrize, terminal
from .activation import is_selftest_item, named_option
from .engine_setup import build_engine
from .fixtures import SelftestRunner
from .keys import (
    CALL_KEY,
    CHANGES_KEY,
    EXPECTED_KERNEL_KEY,
    REQUIRES_KEY,
    RESULTS_KEY,
)
from .markers import SELFTEST_SIGNATURE, parse_requires, parse_selftest_marker
from .options import Settings
from .records import Regression, attach, decide, from_report, point_skip_at_test
from .xdist import WORKEROUTPUT, handed_host

#: Exit statuses of sessions that did not run: their --kvm-results file is left as it was.
NOT_A_RUN = (pytest.ExitCode.USAGE_ERROR, pytest.ExitCode.INTERNAL_ERROR)
#: How long the controller waits, at the end of the run, for a crashed worker to finish dying.
CHILD_GRACE_S = 3.0


class KvmmmPlugin:
    def __init__(self, config: pytest.Config, settings: Settings) -> None:
        self.config = config
        self.settings = settings
        self.is_worker = hasattr(config, "workerinput")
        self._label: str | None = None
        self.records: list[Record] = []
        #: Set by the baseline plugin: why a passed test regressed against the baseline, or None.
        self.regression: Regression | None = None
        #: (generation of the facts, their text): see ``host_facts``.
        self._host_facts: tuple[int, dict[str, str]] | None = None
        #: This process's host facts, shared with the engine (which re-probes after it changed the host).
        self.host_view = HostView(settings.host_root, self._first_probe)
        self.host_changes = HostChanges(settings.host_root, journal_dir(settings.host_root))
        self.engine = build_engine(config, settings, self.host_view, self.host_changes)
        #: Set once the run needs the host (``_activate``): nothing before touches it.
        self.active = False
        self.named = named_option(config)
        self.restored: list[str] = []
        config.stash[CHANGES_KEY] = self.host_changes
        self.restored_at_end: list[str] = []
        # Opened by the first record (or at the end): a usage error found later in configure
        # (a typo in another --kvm-* option) must not empty the previous run's file.
        self.writer = ResultsWriter(settings.results) if settings.results and not self.is_worker else None
        self.results_error: str | None = None
        self.allure_error: str | None = None
        self._reported_ignored: str | None = None
        #: Set by xdist's hooks on the controller: its workers' run directories go at the end.
        self.testrunuid = ""
        self.signals = SignalGuard()
        self.run_dir_error: str | None = None
        #: Controller: a worker used the host or crashed (its journal may be left to restore).
        self.workers_used_host = False
        self.dash = dashboards.Dashboards(config, lambda: self.host().to_json())

    def _activate(self) -> None:
        """The run needs the host (its first selftest test, in this process): undo what an
        earlier, killed session changed (flag or not), start watching the kernel log and, under
        xdist, join the run's shared state. Before this, the plugin touches nothing."""
        if self.active:
            return
        self.active = True
        self.signals.install()
        with self.signals.quiet():
            self.restored += self.host_changes.restore_stale()
        self.engine.start(self._coordinator() if self.is_worker else None)

    def host_label(self) -> str:
        """The host results are attributed to: the (snapshot's) hostname. A method, not a
        property: pytest before 8 reads every attribute of a registered plugin when it looks for
        fixtures, and a property would probe the host in a run without selftest tests."""
        if self._label is None:
            self._label = self.host().hostname or socket.gethostname()
        return self._label

    def host(self) -> HostFacts:
        return self.host_view.facts()

    def _first_probe(self) -> HostFacts:
        """Probed once per host per run, when first needed: by the controller (or single process),
        handed to local xdist workers through ``workerinput`` when it probed before they started;
        else by the first worker on the machine that needs it, for the others (the run directory)."""
        handed = handed_host(self.config, self.settings.host_source)
        if handed is not None:
            return HostFacts.from_json(handed)
        return shared_probe(self._run_dir(), lambda: probe_host(self.settings.host_root))

    @property
    def probed(self) -> bool:
        """Whether this process probed (or was handed) the host already."""
        return self.host_view.probed

    def _run_dir(self) -> Path | None:
        """Under xdist, the run's private directory on this machine for this host (0700, ours);
        a link or someone else's directory there stops the run."""
        uid = getattr(self.config, "workerinput", {}).get("testrunuid")
        if uid is None:
            return None
        path = run_dir(str(uid), self.settings.host_source)
        try:
            return private_dir(path)
        except OSError as exc:  # made by someone else after the controller looked: the tests fail
            self.run_dir_error = f"kvmmm: xdist run directory: {exc}"
            return None

    def _coordinator(self) -> HostCoordinator | None:
        """Under xdist, the run's shared state on this host (the perf lock)."""
        path = self._run_dir()
        if path is None:
            return None
        return HostCoordinator(path)

    def pytest_report_header(self, config: pytest.Config) -> list[str]:
        """With a --kvm-* option named, the host before collection; else nothing (see
        ``pytest_report_collectionfinish``)."""
        return self._header_lines() if self.named else []

    def pytest_report_collectionfinish(self, config: pytest.Config, items: Sequence[pytest.Item]) -> list[str]:
        """After collection: the header of a run that named no --kvm-* option but collected selftest
        tests, and the host-change journal entries that were not replayed."""
        lines = self._header_lines() if self.active and not self.named else []
        ignored = self.host_changes.ignored_line()
        self._reported_ignored = ignored
        return [*lines, *([f"kvmmm: {ignored}"] if ignored else [])]

    def _header_lines(self) -> list[str]:
        self.engine.watch()
        return terminal.header_lines(
            self.host(), self.engine.search_roots(), self.settings, self.engine.kernel_watch, self.engine.counters,
            changes_allowed=self.engine.host_changes is not None,
        )

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        parametrize.generate(metafunc, self.settings)

    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        """Validate every kvm_selftest and kvm_requires marker up front: a wrong one is a usage error.

        Under xdist, functional tests go first and perf tests last: perf tests run alone on
        the host, so interleaving them would serialize the functional ones behind them.
        Every worker sorts the same way, so their collections still agree.
        """
        if self.is_worker:
            items.sort(key=lambda item: item.get_closest_marker("perf") is not None)
        for item in items:
            requires = [r for mark in item.iter_markers("kvm_requires") for r in parse_requires(mark)]
            if requires:
                item.stash[REQUIRES_KEY] = tuple(requires)
            mark = item.get_closest_marker("kvm_selftest")
            if mark is not None:
                item.stash[CALL_KEY] = parse_selftest_marker(mark)
            elif "kvm_result" in getattr(item, "fixturenames", ()):
                raise pytest.UsageError(
                    f"{item.nodeid}: the kvm_result fixture needs a "
                    f"@pytest.mark.{SELFTEST_SIGNATURE} marker on the test"
                )

    @pytest.hookimpl(tryfirst=True)  # tryfirst: before the terminal prints the collection's header lines
    def pytest_collection_finish(self, session: pytest.Session) -> None:
        """A run that will run a selftest test (after -k/-m deselection) needs the host."""
        if any(is_selftest_item(item) for item in session.items):
            self._activate()

    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        """kvm_requires: skip before any fixture or binary runs when the host lacks a fact."""
        if is_selftest_item(item):
            self._activate()
            if self.run_dir_error:
                pytest.fail(self.run_dir_error, pytrace=False)
        requires = item.stash.get(REQUIRES_KEY, ())
        # Hugetlb pages: the ledger decides when the case runs (it may wait for others' pages);
        # with --kvm-allow-host-changes the pool is grown here first, as before.
        granted = self.engine.granted(requires) if self.engine.host_changes is None else []
        requires = tuple(r for r in requires if r not in granted)
        reason = first_unmet(requires, self.host()) if requires else None
        if reason and self.engine.host_changes is not None:
            reason = self.engine.prepare_host(requires)
        if reason:
            call = item.stash.get(CALL_KEY, None)
            if call is not None:  # a selftest test: keep a record of the skip for the results
                SelftestRunner(item, self.engine).skip(call.name, reason, call.args)
            pytest.skip(reason)

    @pytest.hookimpl(wrapper=True, tryfirst=True)  # tryfirst: the binary runs before the test body
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, None, None]:
        call = item.stash.get(CALL_KEY, None)
        if call is not None:
            # checked at setup already; passed on so its hugetlb pages are granted under xdist
            requires: tuple[Requirement, ...] = item.stash.get(REQUIRES_KEY, ())
            expected: tuple[str, ...] = item.stash.get(EXPECTED_KERNEL_KEY, ())  # provoked on purpose
            result = SelftestRunner(item, self.engine).run(
                call.name, *call.args, timeout=call.timeout, requires=requires, expected_kernel=expected
            )
            funcargs = getattr(item, "funcargs", {})
            if "kvm_result" in funcargs:
                funcargs["kvm_result"] = result
        return (yield)

    @pytest.hookimpl(wrapper=True)  # wraps the report to attach this test's selftest record
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        report = yield
        results = item.stash.get(RESULTS_KEY, None)
        deciding = report.when == "call" or (report.when == "setup" and not report.passed)
        if results and deciding:
            record = self._record(item, report, results[-1])
            if allure.enabled(self.config):
                # annotate while allure-pytest still holds the result open
                allure.annotate_test(item, results, record, scale=self.settings.scale)
            attach(report, record)
            point_skip_at_test(item, report)
        return report

    def _record(self, item: pytest.Item, report: pytest.TestReport, result: SelftestResult) -> Record:
        """The test's record (built once, ``reports/record.py``), with every verdict after the binary's."""
        counting = self.engine.counters
        return decide(
            item, report, result, host=self.host_label(), host_facts=self.host_facts(), dash=self.dash,
            # why, for a controller that never saw this host's header
            counters_off=counting.note if counting is not None and not counting.active and result.returncode is not None else None,
            regression=self.regression,
            inputs=options.inputs(self.config, self.settings.host_source),  # how the run was asked for
        )

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if self.is_worker:  # the controller writes, once, from the forwarded report
            return
        try:
            found = from_report(report)
        except (TypeError, ValueError) as exc:
            self.dash.problems.append(f"could not read the record of {report.nodeid}: {exc}")
            return
        for record in found:
            final = self.dash.final(report, record)  # None: an attempt pytest-rerunfailures reruns
            if final is not None:
                self.records.append(final)
                self._write_record(final)

    def _write_record(self, record: Record | None) -> None:
        """Append ``record`` to --kvm-results (None: only create the file); a file that cannot
        be written is reported once, at the end, and the run goes on."""
        if self.writer is None or self.results_error is not None:
            return
        try:
            if record is None:
                self.writer.open()
            else:
                self.writer.write(record.to_json())
        except OSError as exc:
            self.results_error = str(exc) if isinstance(exc, UnsafePath) else f"cannot write {self.writer.path}: {exc.strerror or exc}"

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.results_error is not None:
            terminalreporter.write_line(f"kvmmm: --kvm-results: {self.results_error}", red=True)
        if self.allure_error is not None:
            terminalreporter.write_line(f"kvmmm: --alluredir: {self.allure_error}", red=True)
        for line in [*self.restored, *self.restored_at_end]:
            terminalreporter.write_line(f"kvmmm: restored {line}")
        ignored = self.host_changes.ignored_line()
        if ignored and ignored != self._reported_ignored:
            terminalreporter.write_line(f"kvmmm: {ignored}", yellow=True)
        extra = [*self.dash.exports, *self.dash.problems, *([self.writer.problem] if self.writer and self.writer.problem else [])]
        counters = self.engine.counters
        terminal.write_section(
            terminalreporter, self.records, level=terminal.verbosity(self.config),
            counters_host=self.host_label() if counters is not None else None,
            counting_failures=counters.failures if counters is not None else (),
            results=self.writer.path if self.writer is not None and self.results_error is None else None,
            extra=extra,
        )

    def host_facts(self) -> dict[str, str]:
        """This host's facts as strings, computed once per process: in every record, the terminal's
        per-host lines and Allure's environment.properties."""
        host = self.host()  # first: the generation counts this probe
        if self._host_facts is None or self._host_facts[0] != self.host_view.generation:
            build = allure_report.selftests_build(self.engine.search_roots())
            self._host_facts = (self.host_view.generation, fact_texts(host, build, emulated_by()))
        return self._host_facts[1]

    @pytest.hookimpl(tryfirst=True)  # tryfirst: the host is restored before anything else can fail
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        """Undo this process's host changes (also after failures and Ctrl-C); the controller also
        undoes those of workers that were killed. Then, Allure's session files."""
        if self.writer is not None and not self.writer.opened and session.exitstatus not in NOT_A_RUN:
            self._write_record(None)  # a run without records still replaces the previous file
        with self.signals.quiet():  # a SIGTERM now must not cut a restoration in half
            self.restored_at_end += self.host_changes.restore()
            if not self.is_worker and (self.active or self.records or self.workers_used_host):
                self.restored_at_end += self.host_changes.restore_stale(child_grace=CHILD_GRACE_S)  # workers that died
        if self.is_worker:  # for the controller's summary (xdist sends workeroutput after this hook)
            self.config.workeroutput[WORKEROUTPUT] = {  # type: ignore[attr-defined]
                "active": self.active, "restored": [*self.restored, *self.restored_at_end], "ignored": self.host_changes.ignored,
            }
        if self.active or self.records:
            self._allure_session_files()
        if self.testrunuid:
            remove_run_dirs(self.testrunuid)
        if not self.is_worker and not self.config.option.collectonly:
            self.dash.exports = self.dash.write_exports(self.records)
            self.dash.html_environment(self.records)
            if self.writer is not None and self.writer.problem and session.exitstatus == pytest.ExitCode.OK:
                session.exitstatus = pytest.ExitCode.TESTS_FAILED  # results are missing: not green

    @pytest.hookimpl(optionalhook=True)  # pytest-html's hook: a column with each test's host and metrics
    def pytest_html_results_table_header(self, cells: list[str]) -> None:
        cells.append('<th class="col-kvm">kvm host, metrics</th>')

    @pytest.hookimpl(optionalhook=True)  # pytest-html's hook
    def pytest_html_results_table_row(self, report: pytest.TestReport, cells: list[str]) -> None:
        self.dash.html_row(report, cells)

    def _allure_session_files(self) -> None:
        """Allure: categories.json, environment.properties and allurerc.mjs, once, by the process that owns the session."""
        if not self.is_worker:
            self.allure_error = allure.write_session_files(self.config, self.records, lambda: {self.host_label(): self.host_facts()})

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        if self.writer is not None:
            self.writer.close()
        self.engine.close()
        with self.signals.quiet():
            self.host_changes.restore()  # idempotent: a session that never finished still restores
        self.signals.uninstall()
        if self.testrunuid:  # again, now that xdist has stopped the workers: an interrupted
            remove_run_dirs(self.testrunuid)  # worker may have written into it during the first removal
