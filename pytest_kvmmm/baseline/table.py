"""The before/after table: the same rows for the terminal (pytest and ``kvmmm-compare``) and as Markdown.

Pure: a ``Comparison`` in, lines out. Numbers read the way cover letters give them:
``KVM_CREATE_MAPPINGS  before 104.35s  after 3.70s  +96.46%`` (positive = better).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ..engine.metrics import metric_unit
from .compare import Comparison, CountRow, Row
from .counts import COUNT_MIN_ABS, COUNT_MIN_PCT, MIN_COUNT_SAMPLES, STAGE_MIN_PCT, CountVerdict
from .fingerprint import unforceable
from .stats import CONFIDENCE, MIN_EFFECT_PCT, MetricChange, Spread, Verdict

LEGEND = (
    "change: relative to before, positive = better (less time, more pages/s); medians of n runs, spread min..max",
    f"verdict: needs the {CONFIDENCE:.0%} bootstrap interval of the "
    f"change to exclude 0, each median outside the other run's min..max, and a change of {MIN_EFFECT_PCT:g}% or more",
)
COUNT_LEGEND = (
    "counts (subsys:event, per stage as stage/subsys:event): change relative to before, + = more events; "
    f"fewer/more needs {MIN_COUNT_SAMPLES}+ runs a side, every run beyond every run of the other side "
    "by at least either side's own spread, "
    f"and a change of {COUNT_MIN_PCT:g}% ({STAGE_MIN_PCT:g}% for a stage) and {COUNT_MIN_ABS} events or more",
)


def format_number(metric: str, value: float) -> str:
    """A value without its unit: ``104.35``, ``0.2542``, ``0.001234``; rates and counts as integers."""
    if metric_unit(metric) != "s":
        return f"{value:,.0f}"
    if value >= 1 or value == 0:
        return f"{value:.2f}"
    decimals = min(9, 3 - int(math.floor(math.log10(abs(value)))))
    return f"{value:.{decimals}f}"


def format_value(metric: str, value: float) -> str:
    """``104.35s``, ``0.2542s``, ``0.001234s`` (four significant digits under a second);
    ``1,234,567 pgs/s``; ``12 iterations``."""
    unit = metric_unit(metric)
    if unit == "s":
        return format_number(metric, value) + "s"
    return f"{format_number(metric, value)} {'pgs/s' if unit == 'pgs_per_s' else unit.replace('_', ' ')}"


def format_change(pct: float) -> str:
    if not math.isfinite(pct):
        return "+inf%" if pct > 0 else "-inf%"
    return f"{0.0 if abs(pct) < 0.005 else pct:+.2f}%"  # never "-0.00%"


def _spread(metric: str, s: Spread, dash: str) -> str:
    return f"{format_number(metric, s.low)}{dash}{format_number(metric, s.high)} n={s.n}"


def row_label(row: Row | CountRow, several_hosts: bool) -> str:
    """``kvm_page_table_test [anonymous]``; a test without parameters by its function name."""
    name = row.nodeid.rsplit("::", 1)[-1]
    case = f"[{name.split('[', 1)[1]}" if "[" in name else f"({name})"
    label = f"{row.binary} {case}" if row.binary else name
    return f"{row.host}: {label}" if several_hosts else label


def _grouped(comparison: Comparison) -> list[tuple[str, list[Row | CountRow]]]:
    """Per test, its metrics, then its counts (beside them, in the same columns)."""
    groups: dict[str, list[Row | CountRow]] = {}
    every: list[Row | CountRow] = [*comparison.rows, *comparison.count_rows]
    for row in every:
        groups.setdefault(row_label(row, comparison.several_hosts), []).append(row)
    return list(groups.items())


def _count(value: float) -> str:
    return f"{value:,.0f}"


def _cells(row: Row | CountRow, dash: str) -> tuple[str, str, str, str, str, str]:
    """name, before, before's spread, after, after's spread, verdict: a metric or a count."""
    if isinstance(row, CountRow):
        c = row.change
        return (
            c.name, _count(c.before.median), f"{_count(c.before.low)}{dash}{_count(c.before.high)} n={c.before.n}",
            _count(c.after.median), f"{_count(c.after.low)}{dash}{_count(c.after.high)} n={c.after.n}", c.verdict.value,
        )
    m = row.change
    return (
        m.metric, format_value(m.metric, m.before.median), _spread(m.metric, m.before, dash),
        format_value(m.metric, m.after.median), _spread(m.metric, m.after, dash), m.verdict.value,
    )


def _legend(comparison: Comparison) -> tuple[str, ...]:
    return (*LEGEND, *(COUNT_LEGEND if comparison.count_rows else ()))


def _when(created_at: str) -> str:
    return created_at.replace("T", " ").replace("Z", " UTC") if created_at else "?"


def header_lines(comparison: Comparison) -> list[str]:
    """What is compared with what: names, dates, repeat counts, kernels and builds, and any
    host mismatch, loudly."""
    b, a = comparison.before, comparison.after
    lines = [
        f"{b.name or '?'!r} ({_when(b.created_at)}, repeat {b.repeat or '?'})"
        f" -> {a.name or '?'!r} ({_when(a.created_at)}, repeat {a.repeat or '?'})"
    ]
    for pair in comparison.pairs:
        what = "; ".join(str(d) for d in pair.compared) or "same kernel and selftests build"
        lines.append(f"host {pair.label}: {what}")
        if pair.machine:
            diffs = "; ".join(str(d) for d in pair.machine)
            if unforceable(pair.machine):
                lines.append(f"WARNING: host {pair.label} differs ({diffs}): timings from an emulated host are "
                             "never compared with a physical host's, so no verdicts, forced or not")
            elif comparison.forced:
                lines.append(f"WARNING: host {pair.label} differs ({diffs}); verdicts forced anyway")
            else:
                lines.append(
                    f"WARNING: host {pair.label} differs ({diffs}): these numbers come from different "
                    "machines or setups, so no verdicts (force them with --kvm-compare-force / --force)"
                )
    if not comparison.pairs:
        lines.append(
            f"no host in common: before has {', '.join(b.hosts) or 'none'}, after has {', '.join(a.hosts) or 'none'}"
        )
    return lines


def terminal_lines(comparison: Comparison, *, legend: bool = True) -> list[str]:
    """The table for a terminal: a heading per test, a row per metric."""
    lines = header_lines(comparison)
    if not comparison.rows and not comparison.count_rows:
        return [*lines, "no metric in common to compare"]
    table: list[tuple[str, ...]] = [("", "before", "", "after", "", "change", "verdict")]
    for label, rows in _grouped(comparison):
        table.append((label,))
        for row in rows:
            name, before, b_spread, after, a_spread, verdict = _cells(row, "..")
            table.append((f"  {name}", before, b_spread, after, a_spread, format_change(row.change.change), verdict))
    cells = [r for r in table if len(r) > 1]
    widths = [max(len(r[i]) for r in cells) for i in range(7)]
    lines.append("")
    for r in table:
        if len(r) == 1:
            lines.append(r[0])
            continue
        left = r[0].ljust(widths[0])
        middle = "  ".join(r[i].rjust(widths[i]) for i in range(1, 6))
        lines.append(f"{left}  {middle}  {r[6]}".rstrip())
    lines += _unmatched(comparison)
    if legend:
        lines += ["", *_legend(comparison)]
    return lines


def _unmatched(comparison: Comparison) -> list[str]:
    out = []
    if comparison.only_before:
        out.append(f"only in before (no metrics now): {', '.join(n for _, n in comparison.only_before)}")
    if comparison.only_after:
        out.append(f"only in after (not in before): {', '.join(n for _, n in comparison.only_after)}")
    return out


def markdown(comparison: Comparison) -> str:
    """The table as Markdown, ready for a cover letter."""
    out = [f"- {line}" for line in header_lines(comparison)]
    out += ["", "| test | metric | before | after | change | verdict |", "|:--|:--|--:|--:|--:|:--|"]
    for label, rows in _grouped(comparison):
        for i, row in enumerate(rows):
            name, before, b_spread, after, a_spread, verdict = _cells(row, "–")
            if row.change.verdict in (Verdict.REGRESSED, Verdict.IMPROVED, CountVerdict.FEWER, CountVerdict.MORE):
                verdict = f"**{verdict}**"
            out.append(
                f"| {label if i == 0 else ''} | {name} | {before} ({b_spread}) | {after} ({a_spread}) "
                f"| {format_change(row.change.change)} | {verdict} |"
            )
    out += [f"- {line}" for line in _unmatched(comparison)]
    out += ["", *(f"_{line}_  " for line in _legend(comparison))]
    return "\n".join(out) + "\n"


def regression_message(name: str, failures: Sequence[tuple[MetricChange, float]]) -> str:
    """Why ``--kvm-fail-regression`` failed a test: the numbers on the first line (pytest's short
    summary shows only that one), then each metric's threshold, interval and spread."""
    head = ", ".join(
        f"{c.metric} before {format_value(c.metric, c.before.median)} -> after "
        f"{format_value(c.metric, c.after.median)} {format_change(c.change)}"
        for c, _ in failures
    )
    lines = [f"regressed against baseline {name!r}: {head}"]
    for c, limit in failures:
        lo, hi = c.interval or (c.change, c.change)
        lines.append(
            f"  {c.metric}: {format_change(c.change)} is beyond the {limit:g}% threshold; "
            f"{CONFIDENCE:.0%} interval {format_change(lo)}..{format_change(hi)}; "
            f"before {_spread(c.metric, c.before, '..')}, after {_spread(c.metric, c.after, '..')}"
        )
    return "\n".join(lines)
