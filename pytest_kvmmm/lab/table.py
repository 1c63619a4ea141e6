"""The proof of a lab run: one line per catalogue entry, one column per host, each cell the
entry's verdict on that host (passed when any of its cases passed there, else failed when
any failed, else skipped with the first reason), and the host facts that decide them.

Pure: records (``--kvm-results`` lines) in, lines of text out.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..host.report import facts_line
from ..suite.catalogue import CATALOGUE

_TEST = re.compile(r"::(test_[A-Za-z0-9_]+)")
_BY_TEST = {e.test_name: e.name for e in CATALOGUE}
#: The facts a table shows per host: the ones that decide which entries can run there.
FACT_KEYS = ("emulated", "arch", "kernel", "page_size", "kvm", "tdp", "tdp_mmu", "guest_1g_pages", "pre_fault",
             "page_idle", "arm64_mode", "fwb", "ttrem")  # fmt: skip
_RANK = {"passed": 0, "failed": 1, "skipped": 2}


@dataclass(frozen=True)
class Cell:
    outcome: str  # passed, failed, skipped, "-" (not run)
    case: str = ""  # the deciding case's id
    reason: str = ""


def entry_of(nodeid: str) -> str | None:
    """The catalogue entry of a suite test id, None for other tests."""
    m = _TEST.search(nodeid)
    return _BY_TEST.get(m.group(1)) if m else None


def _case(nodeid: str) -> str:
    return nodeid.split("[", 1)[1].rstrip("]") if "[" in nodeid else ""


def _mode_skip(cell: Cell) -> bool:
    """A skip for a guest mode of another host: the least telling reason an entry has."""
    return cell.outcome == "skipped" and cell.reason.startswith("guest mode ")


def entry_table(records: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Cell]]:
    """entry -> host -> the deciding cell."""
    table: dict[str, dict[str, Cell]] = {}
    for r in records:
        nodeid, host, outcome = str(r.get("nodeid", "")), str(r.get("host")), str(r.get("outcome"))
        entry = entry_of(nodeid)
        if entry is None or outcome not in _RANK:
            continue
        cell = Cell(outcome, _case(nodeid), str(r.get("reason") or ""))
        old = table.setdefault(entry, {}).get(host)
        if old is None or (_RANK[outcome], _mode_skip(cell)) < (_RANK[old.outcome], _mode_skip(old)):
            table[entry][host] = cell
    return table


def host_facts(records: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, str]]:
    """host -> its facts (the last record of each host that has them wins)."""
    out: dict[str, dict[str, str]] = {}
    for r in records:
        facts = r.get("host_facts")
        if isinstance(facts, Mapping) and facts and r.get("host"):
            out[str(r["host"])] = {str(k): str(v) for k, v in facts.items()}
    return out


def never_passed(table: Mapping[str, Mapping[str, Cell]]) -> list[str]:
    """Catalogue entries that passed on no host of the run."""
    return [e.name for e in CATALOGUE if not any(c.outcome == "passed" for c in table.get(e.name, {}).values())]


def render(records: Sequence[Mapping[str, Any]], width: int = 60) -> list[str]:
    """The table and the facts, as lines."""
    table = entry_table(records)
    facts = host_facts(records)
    hosts = sorted({str(r.get("host")) for r in records if r.get("host")})
    name_w = max(len(e.name) for e in CATALOGUE)
    col_w = max([7, *map(len, hosts)])
    lines = ["entry".ljust(name_w) + " | " + " | ".join(h.ljust(col_w) for h in hosts)]
    lines.append("-" * len(lines[0]))
    for e in CATALOGUE:
        cells = [table.get(e.name, {}).get(h, Cell("-")).outcome.ljust(col_w) for h in hosts]
        lines.append(e.name.ljust(name_w) + " | " + " | ".join(cells))
    lines.append("")
    lines.append("why not passed (entry @ host: case: reason):")
    for e in CATALOGUE:
        for h in hosts:
            c = table.get(e.name, {}).get(h)
            if c is not None and c.outcome != "passed":
                reason = " ".join(c.reason.split())[:width * 2] or "(no reason recorded)"
                lines.append(f"  {e.name} @ {h}: {c.case}: {c.outcome}: {reason}")
    lines.append("")
    lines.append("host facts:")
    for h in hosts:
        f = facts.get(h, {})
        lines.append(f"  {h}: " + facts_line(f, FACT_KEYS))
    missing = never_passed(table)
    lines.append("")
    lines.append(f"entries that passed on no host: {', '.join(missing) if missing else 'none'}")
    return lines


def expectation_problems(records: Sequence[Mapping[str, Any]], expect: Mapping[str, Mapping[str, str]]) -> list[str]:
    """Each host whose results' facts differ from what its kind says it is (``hosts.HostKind.expect``)."""
    facts = host_facts(records)
    problems = []
    for host, wanted in expect.items():
        got = facts.get(host)
        if got is None:
            problems.append(f"{host}: no results from this host")
            continue
        for key, value in wanted.items():
            if got.get(key) != value:
                problems.append(f"{host}: fact {key} is {got.get(key)!r}, expected {value!r}")
    return problems
