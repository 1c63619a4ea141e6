"""pytest glue for what labs read without a terminal: JUnit properties, reruns, known issues,
KCIDB and SQUAD files, LAVA results and pytest-html. The work is in ``reports/``.

The session plugin calls ``decide`` from its report hook (on the process that ran the test:
the verdict) and ``final`` from its log hook (on the controller: attempts, JUnit, LAVA),
and ``write_exports`` once at the end.
"""

from __future__ import annotations

import html
import importlib
import json
import re
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from ..coordination.safefs import replace_file, target_problem
from ..reports import junit, kcidb, known_issues, lava, squad, verdict
from ..reports.record import Record
from . import options
from .keys import RECORD_PROPERTY

HELP_KNOWN = (
    "known-issues file (TOML, YAML or JSON): failures matching an entry's tests and host facts "
    "become expected failures with the entry's link; also ini kvm_known_issues (relative to the ini file)"
)
HELP_KCIDB = "write the run as KCIDB JSON (KernelCI) to FILE at the end"
HELP_SQUAD = "write the run as SQUAD submissions to DIR/<host>/{tests,metrics,metadata}.json at the end"
HELP_ORIGIN = "KCIDB origin (CI system name, [a-z0-9_]+) for --kvm-kcidb ids (default kvmmm)"
KCIDB_ORIGIN = re.compile(r"[a-z0-9_]+")


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("kvmmm")
    group.addoption("--kvm-known-issues", metavar="FILE", help=HELP_KNOWN)
    group.addoption("--kvm-kcidb", metavar="FILE", help=HELP_KCIDB)
    group.addoption("--kvm-squad", metavar="DIR", help=HELP_SQUAD)
    parser.addini("kvm_known_issues", HELP_KNOWN)
    parser.addini("kvm_kcidb_origin", HELP_ORIGIN)


#: ``workerinput`` key: the controller reads the known-issues file, workers (on lab hosts that
#: may not have it) get its entries.
WORKERINPUT_ISSUES = "kvmmm_known_issues"


def _load_issues(config: pytest.Config) -> list[Any]:
    """The known-issues entries, decoded and checked: from the controller under xdist, else the file
    (the option's path as given, an ini path relative to the ini file)."""
    handed = getattr(config, "workerinput", {}).get(WORKERINPUT_ISSUES)
    if handed is not None:
        return list(handed)
    raw = options.sources(config).pick("kvm_known_issues", ini="kvm_known_issues", path=True)
    if raw is None or not raw.value:
        return []
    try:
        return known_issues.load_raw(Path(raw.value))
    except known_issues.KnownIssuesError as exc:
        raise pytest.UsageError(f"{raw.origin}: {exc}") from None


def _will_rerun(item: pytest.Item) -> bool:
    """pytest-rerunfailures runs this failed attempt again: a known issue waits for the last one."""
    if not item.config.pluginmanager.hasplugin("rerunfailures"):
        return False
    try:
        reruns = importlib.import_module("pytest_rerunfailures").get_reruns_count(item)
    except (ImportError, AttributeError):
        return False
    return bool(reruns) and int(getattr(item, "execution_count", 1)) <= int(reruns)


def _failure_text(report: pytest.TestReport) -> str:
    """What failed or skipped the test: a skip's reason, an exception's message, else the report."""
    if isinstance(report.longrepr, tuple):
        return str(report.longrepr[2])
    crash = getattr(report.longrepr, "reprcrash", None)
    message = getattr(crash, "message", "")
    return message if isinstance(message, str) and message else report.longreprtext


class Dashboards:
    def __init__(self, config: pytest.Config, probe_json: Callable[[], Mapping[str, Any]]) -> None:
        self.config = config
        workeroutput = getattr(config, "workeroutput", None)
        if isinstance(workeroutput, dict):
            # pytest-metadata (pytest-html's dependency) on the controller reads every worker's
            # "metadata" and raises KeyError for a worker without it: a lab host need not have it.
            workeroutput.setdefault("metadata", {})
        #: The entries as decoded (handed to xdist workers), and parsed.
        self.raw_issues = _load_issues(config)
        self.issues = known_issues.from_raw(self.raw_issues, "known issues")
        if not hasattr(config, "workerinput"):
            check_targets(config)
        self._probe_json = probe_json
        self._facts: dict[str, str] | None = None
        #: Earlier attempts of rerun tests, per (nodeid, xdist node), until the final report.
        self._attempts: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self._lava = lava.helper() if not hasattr(config, "workerinput") else None
        self.problems: list[str] = []
        #: What write_exports wrote, for the terminal.
        self.exports: list[str] = []
        self.run_id = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:8]
        self.multi_host = getattr(config.option, "dist", "no") == "each" and len(getattr(config.option, "tx", None) or []) > 1

    # --- on the process that ran the test ---------------------------------------------

    def _match_facts(self, record: Record) -> dict[str, str]:
        if self._facts is None:
            self._facts = known_issues.flatten(self._probe_json())
        return {**self._facts, **dict(record.host_facts or {})}

    def decide(self, item: pytest.Item, report: pytest.TestReport, record: Record) -> Record:
        """The record follows pytest's verdict; a known issue's failure becomes an expected failure."""
        record = verdict.agree(record, report.outcome, _failure_text(report) if not report.passed else "")
        if not self.issues or report.when not in ("setup", "call"):
            return record
        if report.failed and not _will_rerun(item):
            text = f"{record.reason}\n{_failure_text(report)}"
            issue = known_issues.match(self.issues, record.nodeid, self._match_facts(record), text)
            if issue is not None:
                report.outcome = "skipped"
                report.wasxfail = issue.reason  # pytest's attribute of an expected failure
                record = verdict.expected_failure(record, issue.to_json())
        elif report.passed and report.when == "call":
            issue = known_issues.match(self.issues, record.nodeid, self._match_facts(record))
            if issue is not None:
                record = verdict.known_issue_passed(record, issue.to_json())
        return record

    # --- on the controller -------------------------------------------------------------

    def final(self, report: pytest.TestReport, record: Record) -> Record | None:
        """The record to keep for this report, or None for an attempt that will be rerun."""
        gateway = getattr(getattr(report, "node", None), "gateway", None)
        key = (report.nodeid, str(getattr(gateway, "id", "")))
        if str(report.outcome) == "rerun":  # pytest-rerunfailures' outcome of an attempt it reruns
            attempt = verdict.attempt_of(record)
            if attempt.get("status") == "passed":  # the body failed after the binary passed
                attempt["status"] = "failed"
            self._attempts.setdefault(key, []).append(attempt)
            return None
        record = verdict.with_attempts(record, self._attempts.pop(key, []))
        data = record.to_json()
        self._junit(report, data)
        self._send_lava(data)
        return record

    def _junit(self, report: pytest.TestReport, record: Mapping[str, Any]) -> None:
        from _pytest.junitxml import mangle_test_address, xml_key  # what record_property uses

        xml = self.config.stash.get(xml_key, None)
        if xml is None:
            return
        reporter = xml.node_reporter(report)
        for name, value in junit.properties(record):
            reporter.add_property(name, value)
        if self.multi_host:
            names = mangle_test_address(report.nodeid)[:-1]
            reporter.add_attribute("classname", junit.classname(".".join(names), str(record.get("host", ""))))

    def _send_lava(self, record: Mapping[str, Any]) -> None:
        if self._lava is None:
            return
        for args in lava.calls(record, several_hosts=self.multi_host):
            problem = lava.send(self._lava, args)
            if problem:
                self.problems.append(problem)

    # --- at the end ------------------------------------------------------------------

    def write_exports(self, records: Sequence[Record]) -> list[str]:
        """Write --kvm-kcidb and --kvm-squad (from the records' JSON form, which the exporters
        also read from files); the lines to show (written files or why not)."""
        lines: list[str] = []
        if not (self.config.getoption("kvm_kcidb") or self.config.getoption("kvm_squad")):
            return lines
        data = [r.to_json() for r in records]
        target = self.config.getoption("kvm_kcidb")
        if target:
            doc = kcidb.document(data, origin=kcidb_origin(self.config), run=self.run_id)
            lines.append(_write_json(Path(target), doc, "KCIDB"))
        folder = self.config.getoption("kvm_squad")
        if folder:
            subs = squad.submissions(data, job_id=self.run_id)
            for host, parts in subs.items():
                for part, body in parts.items():
                    problem = _write_json(Path(folder) / host / f"{part}.json", body, "SQUAD")
                    if problem.startswith("could not"):
                        lines.append(problem)
            lines.append(f"SQUAD: {folder} ({len(subs)} host(s): {', '.join(sorted(subs))})")
        return lines

    def html_row(self, report: pytest.TestReport, cells: list[str]) -> None:
        record = next((v for n, v in report.user_properties if n == RECORD_PROPERTY and isinstance(v, dict)), None)
        if record is None:
            cells.append('<td class="col-kvm"></td>')
            return
        metrics = "<br>".join(
            f"{html.escape(k)} = {v:g}" for k, v in sorted((record.get("metrics") or {}).items())
        )
        known = record.get("known_issue") or {}
        link = f'<br>known issue: <a href="{html.escape(str(known.get("link")))}">{html.escape(str(known.get("id")))}</a>' if known else ""
        cells.append(f'<td class="col-kvm">{html.escape(str(record.get("host", "")))}<br>{metrics}{link}</td>')

    def html_environment(self, records: Sequence[Record]) -> None:
        """Each host's facts in pytest-html's environment table (pytest-metadata's dict)."""
        try:
            metadata_key = importlib.import_module("pytest_metadata.plugin").metadata_key
        except (ImportError, AttributeError):
            return
        metadata = self.config.stash.get(metadata_key, None)
        if metadata is None:
            return
        for record in records[-1:]:
            if record.host_facts is not None:
                metadata[f"kvm host {record.host}"] = ", ".join(f"{k} {v}" for k, v in record.host_facts.items())


def _write_json(path: Path, data: Any, what: str) -> str:
    """Write ``data`` as a new file renamed over ``path`` (never through a link or a device)."""
    try:
        replace_file(path, json.dumps(data, indent=1, sort_keys=True) + "\n")
    except OSError as exc:
        return f"could not write {what} file {path}: {exc.strerror or exc}"
    return f"{what}: {path}"


def kcidb_origin(config: pytest.Config) -> str:
    """ini kvm_kcidb_origin (or ``-o``), else ``kvmmm``: KCIDB's schema takes ``[a-z0-9_]+`` only,
    so another value is a usage error naming where it came from, not an invalid file at the end."""
    raw = options.sources(config).pick(None, ini="kvm_kcidb_origin")
    if raw is None:
        return "kvmmm"
    if not KCIDB_ORIGIN.fullmatch(raw.value):
        raise pytest.UsageError(f"{raw.origin}: {raw.value!r} is not a KCIDB origin: use lower-case letters, digits and _")
    return raw.value


def check_targets(config: pytest.Config) -> None:
    """--kvm-kcidb and --kvm-squad that cannot be written are usage errors before the first test."""
    kcidb_file = config.getoption("kvm_kcidb")
    problem = target_problem(Path(kcidb_file)) if kcidb_file else None
    if problem:
        raise pytest.UsageError(f"--kvm-kcidb: {problem}")
    if kcidb_file:
        kcidb_origin(config)
    folder = config.getoption("kvm_squad")
    if folder and Path(folder).exists() and (Path(folder).is_symlink() or not Path(folder).is_dir()):
        raise pytest.UsageError(f"--kvm-squad: {folder} is not a directory")
