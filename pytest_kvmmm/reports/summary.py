"""The terminal's ``kvm selftests`` section: with several hosts their facts first, then outcomes,
then one compact metrics table per binary.

Pure: records (``record.Record``) in, lines out. Per-iteration and per-run series (``iteration_N/...``,
``run_N/...``) stay in ``--kvm-results``; the tables show the headline numbers a reviewer compares.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..engine.metrics import metric_unit
from ..host.report import facts_line
from .record import Record

MAX_WIDTH = 120


def format_metric(name: str, value: float) -> str:
    unit = metric_unit(name)
    if unit == "pgs_per_s":
        return f"{value:,.0f}"
    if unit != "s":  # counts: pages, bits checked, iterations, writes
        return f"{value:.0f}"
    return f"{value:.4f}s" if value < 1000 else f"{value:.0f}s"


def _headline(name: str) -> bool:
    return not any(part.startswith(("iteration_", "run_")) for part in name.split("/"))


def _case_label(nodeid: str) -> str:
    name = nodeid.rsplit("::", 1)[-1]
    return name[name.index("[") :] if "[" in name else name


def outcome_lines(records: Sequence[Record], verbose: bool = False) -> list[str]:
    """A line per test; with several hosts (an xdist lab run) each line names its host."""
    several = len({rec.host for rec in records}) > 1
    lines = []
    for rec in records:
        status = rec.status or "?"
        where = f"{rec.host}: " if several else ""
        lines.append(f"{status.upper():8} {rec.duration_s:7.2f}s  {where}{rec.nodeid or '?'}")
        if rec.reason and (verbose or status != "passed"):
            lines.append(f"         {rec.reason}")
        known = rec.known_issue
        if known is not None:
            did = "did not show (passed): retire it?" if known.get("passed") else "expected"
            lines.append(f"         known issue {known.get('id')} {did} {known.get('link')}")
        if rec.attempts:
            lines.append("         attempts: " + ", ".join(str(a.get("status")) for a in rec.attempts))
        if verbose or status != "skipped":
            lines += [f"         note: {note}" for note in rec.notes]
    return lines


def _table(binary: str, rows: list[tuple[str, Mapping[str, float]]]) -> list[str]:
    columns = list(dict.fromkeys(k for _, m in rows for k in m if _headline(k)))
    if not columns:
        return []
    label_w = max(len(binary), *(len(label) for label, _ in rows))
    cells = {(label, c): format_metric(c, m[c]) if c in m else "-" for label, m in rows for c in columns}
    widths = {c: max(len(c), *(len(cells[(label, c)]) for label, _ in rows)) for c in columns}
    out: list[str] = []
    chunk: list[str] = []
    for c in [*columns, None]:
        full = c is None or label_w + sum(widths[x] + 2 for x in chunk) + widths[c] + 2 > MAX_WIDTH
        if chunk and full:
            out.append(binary.ljust(label_w) + "".join(f"  {x:>{widths[x]}}" for x in chunk))
            out += [f"{label:<{label_w}}" + "".join(f"  {cells[(label, x)]:>{widths[x]}}" for x in chunk) for label, _ in rows]
            chunk = []
        if c is not None:
            chunk.append(c)
    return out


def metric_tables(records: Sequence[Record]) -> list[str]:
    """One table per binary: a row per case that printed metrics, a column per headline metric."""
    by_binary: dict[str, list[tuple[str, Mapping[str, float]]]] = {}
    several = len({rec.host for rec in records}) > 1
    for rec in records:
        if rec.metrics:
            label = _case_label(rec.nodeid)
            if several:
                label = f"{rec.host} {label}"
            by_binary.setdefault(rec.binary, []).append((label, rec.metrics))
    lines: list[str] = []
    for binary, rows in by_binary.items():
        table = _table(binary, rows)
        if table:
            lines += ["", *table]
    return lines


#: The facts shown per host in a multi-host run, in this order (keys of ``host.report.fact_texts``).
HOST_FACTS = (
    "arch", "kernel", "page_size", "kvm", "tdp", "tdp_mmu", "guest_1g_pages", "maxphyaddr", "ttrem", "arm64_mode",
    "ipa_size", "parange", "s2_granules", "guest_granules", "fwb", "hafdbs", "thp", "page_idle", "hugetlb_free_nr",
)


def host_lines(records: Sequence[Record]) -> list[str]:
    """One line per host of a multi-host run (the last record of a host has its facts): the
    controller's header only describes the controller's own host."""
    facts: dict[str, Mapping[str, str]] = {}
    for rec in records:
        if rec.host_facts is not None:
            facts[rec.host] = rec.host_facts
    if len({rec.host for rec in records}) < 2:
        return []
    return [
        f"{host}: {facts_line(facts[host], HOST_FACTS)}" for host in sorted(facts)
    ] + [""]


def summary_lines(records: Sequence[Record], verbose: bool = False) -> list[str]:
    return host_lines(records) + outcome_lines(records, verbose) + metric_tables(records)


def totals_line(records: Sequence[Record]) -> str:
    """``kvm: 9 passed, 1 xfailed, 121 skipped on vm, lab-arm64-4k``: one line of totals."""
    counts: dict[str, int] = {}
    for rec in records:
        counts[rec.status or "?"] = counts.get(rec.status or "?", 0) + 1
    hosts = sorted({rec.host for rec in records})
    flaky = sum(1 for rec in records if rec.flaky)
    text = ", ".join(f"{n} {s}" for s, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    return f"kvm: {text}" + (f" ({flaky} flaky)" if flaky else "") + f" on {', '.join(hosts)}"


def quiet_lines(records: Sequence[Record]) -> list[str]:
    """``-q``: the tests that did not pass or skip (with their reasons), then the totals."""
    bad = [rec for rec in records if rec.status not in ("passed", "skipped")]
    return [*outcome_lines(bad), totals_line(records)]
