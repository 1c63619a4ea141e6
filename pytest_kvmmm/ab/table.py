"""The cover-letter table of a ``kvmmm-ab`` run, in the shapes KVM cover letters use.

* **lines**: per test, one ``METRIC: before X -> after Y (+P%)`` line per metric, with the
  spread of the rounds and the verdict (the CMO series' shape);
* **sweep / matrix**: when the selection varies vCPUs, guest modes or backing sources for one
  binary, one table per binary and metric with a row per combination and the before, after and
  change columns (arm64 eager page splitting's vCPU sweep; KVM Userfault's mode x vCPUs x
  backing matrix).

Above the numbers: the two KVM builds, the exact command lines, and the host facts that decide
such results. Pure: an ``AbReport`` in, text out (terminal or Markdown), or a dict for JSON.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ..baseline.table import format_change, format_value
from ..host import report as host_report
from .paired import PairedChange, TestKey

#: Host facts that decide an MMU result, in the order a reviewer asks for them (keys of
#: ``host.report.fact_texts``, which every record's ``host_facts`` holds).
DECIDING_FACTS = ("arch", "kernel", "kvm", "tdp", "tdp_mmu", "guest_1g_pages", "emulated",
                  "ttrem", "fwb", "arm64_mode", "page_size", "thp")  # fmt: skip
#: Case parameters a sweep or matrix varies, with the flag each has on a selftest's command line.
PARAMS = (("guest_mode", "-m"), ("vcpus", "-v"), ("backing", "-s"))


@dataclass(frozen=True)
class AbReport:
    changes: Sequence[PairedChange]
    builds: Mapping[str, str]  # side -> what it is (tree, revision, patches)
    rounds: int
    command: Sequence[str]  # the pytest command of every round
    #: test -> the record of its last run (argv, host facts, case parameters).
    records: Mapping[TestKey, Mapping[str, Any]] = field(default_factory=dict)


def case_params(record: Mapping[str, Any]) -> dict[str, str]:
    """Guest mode, vCPUs and backing source of a record: its own fields where it has them, else the
    flags of its command line."""
    argv = [str(a) for a in record.get("argv") or ()]
    out = {}
    for name, flag in PARAMS:
        value = record.get(name)
        if value in (None, "") and flag in argv[:-1]:
            value = argv[argv.index(flag) + 1]
        if value not in (None, ""):
            out[name] = str(value)
    return out


def label(test: TestKey, record: Mapping[str, Any]) -> str:
    host, nodeid = test
    name = nodeid.rsplit("::", 1)[-1]
    case = name[name.index("["):] if "[" in name else f"({name})"
    binary = str(record.get("binary") or "")
    return f"{binary} {case}".strip() + (f" on {host}" if host else "")


def value(change: PairedChange, v: float) -> str:
    return f"{v:,.0f}" if change.kind == "count" else format_value(change.metric, v)


def spread_of_rounds(change: PairedChange) -> str:
    lo, hi = min(change.rounds), max(change.rounds)
    return f"{format_change(lo)}..{format_change(hi)}" if len(change.rounds) > 1 else format_change(lo)


def shown(change: PairedChange) -> bool:
    """Every metric; a whole-run count that is not zero on both sides; a stage's count only with a
    verdict (the per-stage table of every event is in ``--json``)."""
    if change.kind != "count":
        return True
    if "/" in change.metric:
        return change.flagged
    return bool(change.before.high or change.after.high)


def line(change: PairedChange) -> str:
    """``KVM_CREATE_MAPPINGS: before 0.41s -> after 0.83s (-102.44%)  rounds -110%..-98%  regressed``."""
    return (f"{change.metric}: before {value(change, change.before.median)} -> after {value(change, change.after.median)}"
            f" ({format_change(change.change)})  rounds {spread_of_rounds(change)}  {change.verdict}")  # fmt: skip


def host_lines(records: Mapping[TestKey, Mapping[str, Any]]) -> list[str]:
    """A line per host of the report: the facts that decide an MMU result."""
    hosts: dict[str, Mapping[str, Any]] = {}
    for (host, _), rec in records.items():
        facts = rec.get("host_facts")
        if isinstance(facts, Mapping):
            hosts.setdefault(host, facts)
    return [f"host {h or '-'}: " + host_report.facts_line(f, DECIDING_FACTS) for h, f in hosts.items()]


def header(report: AbReport) -> list[str]:
    lines = [f"{side}: {what}" for side, what in report.builds.items()]
    lines.append(f"rounds: {report.rounds}, interleaved (before, after / after, before / ...) on one host, one boot")
    lines.append("command: " + " ".join(report.command))
    lines += host_lines(report.records)
    argvs = sorted({" ".join(str(a) for a in rec.get("argv") or ()) for rec in report.records.values() if rec.get("argv")})
    lines += [f"  $ {a}" for a in argvs]
    return lines


def grouped(report: AbReport) -> tuple[list[tuple[TestKey, list[PairedChange]]], dict[tuple[str, str], list[PairedChange]]]:
    """Tests shown as lines, and (binary, metric) groups shown as a sweep or matrix table."""
    by_test: dict[TestKey, list[PairedChange]] = {}
    for c in report.changes:
        if shown(c):
            by_test.setdefault(c.test, []).append(c)
    families: dict[str, set[TestKey]] = {}
    for test in by_test:
        rec = report.records.get(test, {})
        families.setdefault(f"{test[0]}\0{rec.get('binary')}", set()).add(test)
    swept = {t for tests in families.values() if len(tests) > 1 and _varies(tests, report) for t in tests}
    tables: dict[tuple[str, str], list[PairedChange]] = {}
    for test in by_test:
        for c in by_test[test] if test in swept else ():
            tables.setdefault((str(report.records.get(test, {}).get("binary")), c.metric), []).append(c)
    return [(t, cs) for t, cs in by_test.items() if t not in swept], tables


def _varies(tests: set[TestKey], report: AbReport) -> list[str]:
    params = [case_params(report.records.get(t, {})) for t in tests]
    return [name for name, _ in PARAMS if len({p.get(name) for p in params}) > 1]


def terminal(report: AbReport) -> str:
    out = header(report) + [""]
    singles, tables = grouped(report)
    for test, changes in singles:
        out.append(label(test, report.records.get(test, {})))
        out += [f"  {line(c)}" for c in changes]
    for (binary, metric), changes in tables.items():
        out += ["", f"{binary}: {metric}"]
        out += ["  " + row for row in _matrix_rows(changes, report, sep="  ")]
    return "\n".join(out) + "\n"


def _matrix_rows(changes: Sequence[PairedChange], report: AbReport, sep: str) -> list[str]:
    varying = _varies({c.test for c in changes}, report) or ["test"]
    head = [*varying, "before", "after", "change", "rounds", "verdict"]
    rows = []
    for c in sorted(changes, key=lambda c: _sort_key(case_params(report.records.get(c.test, {})), varying)):
        params = case_params(report.records.get(c.test, {}))
        cells = [params.get(v, c.test[1].rsplit("::", 1)[-1]) for v in varying]
        rows.append([*cells, value(c, c.before.median), value(c, c.after.median), format_change(c.change), spread_of_rounds(c), c.verdict])
    return [sep.join(head), *(sep.join(r) for r in rows)]


def _sort_key(params: Mapping[str, str], varying: Sequence[str]) -> tuple[tuple[int, str], ...]:
    return tuple((int(params[v]) if params.get(v, "").isdigit() else 0, params.get(v, "")) for v in varying)


def markdown(report: AbReport) -> str:
    out = [f"- {h}" for h in header(report)] + [""]
    singles, tables = grouped(report)
    if singles:
        out += ["| test | metric | before | after | change | rounds | verdict |", "|:--|:--|--:|--:|--:|:--|:--|"]
        for test, changes in singles:
            for i, c in enumerate(changes):
                name = label(test, report.records.get(test, {})) if i == 0 else ""
                out.append(f"| {name} | {c.metric} | {value(c, c.before.median)} | {value(c, c.after.median)} | "
                           f"{format_change(c.change)} | {spread_of_rounds(c)} | {c.verdict} |")  # fmt: skip
    for (binary, metric), changes in tables.items():
        rows = _matrix_rows(changes, report, sep=" | ")
        out += ["", f"**{binary}: {metric}**", "", f"| {rows[0]} |", "|" + "--|" * rows[0].count(" | ") + "--|"]
        out += [f"| {r} |" for r in rows[1:]]
    return "\n".join(out) + "\n"


def to_json(report: AbReport) -> dict[str, Any]:
    return {
        "kind": "pytest-kvmmm-ab", "format": 1, "builds": dict(report.builds), "rounds": report.rounds,
        "command": list(report.command),
        "tests": [{"host": t[0], "nodeid": t[1], "argv": list(r.get("argv") or ()), "params": case_params(r),
                   "host_facts": dict(r.get("host_facts") or {})} for t, r in report.records.items()],
        "changes": [{**asdict(c), "test": list(c.test)} for c in report.changes],
    }  # fmt: skip
