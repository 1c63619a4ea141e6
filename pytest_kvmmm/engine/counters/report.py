"""Counts for people: the header line, the terminal's count tables, Allure's table attachment.

Pure: a session or records in, lines out. A table per binary has a row per case and stage
(``total`` first, then the stages as the binary printed them) and a column per event that
counted anything; ``ns/fault`` is a stage's time over its faults.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .session import CounterSession

MAX_WIDTH = 120
#: The record key saying why a host that ran the test counted nothing (``--kvm-counters`` given).
COUNTERS_OFF = "counters_off"


def counters_header(session: CounterSession) -> str:
    """``kvmmm: counters: 23 events (...)``, or why counting is off and how to turn it on."""
    if not session.active:
        return f"kvmmm: {session.note}"
    names = list(session.events)
    shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
    extra = f"; {session.note}" if session.note else ""
    return f"kvmmm: counters: {len(names)} events ({shown}){extra}"


def short(event: str) -> str:
    """``kvmmmu:kvm_mmu_pagetable_walk`` -> ``kvm_mmu_pagetable_walk`` (the table's column); a
    per-VM statistic keeps its ``vm:`` (``vm:exits`` is not ``kvm_exit``)."""
    return event if event.startswith("vm:") else event.split(":", 1)[-1]


def _case_label(nodeid: str) -> str:
    name = nodeid.rsplit("::", 1)[-1]
    return name[name.index("[") :] if "[" in name else name


def _rows(rec: Mapping[str, Any], label: str) -> list[tuple[str, Mapping[str, float], float | None]]:
    counts = rec.get("counters")
    if not isinstance(counts, Mapping):
        return []
    derived = counts.get("derived") or {}
    rows: list[tuple[str, Mapping[str, float], float | None]] = [(f"{label} total", counts.get("total") or {}, None)]
    stages = counts.get("stages") or {}
    for stage in counts.get("stage_order") or stages:
        values = stages.get(stage) or {}
        rows.append((f"{label} {stage}", values, derived.get(f"{stage}/ns_per_fault")))
    return rows


def _format(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _chunks(label_w: int, columns: list[str], widths: Mapping[str, int]) -> list[list[str]]:
    out: list[list[str]] = [[]]
    used = label_w
    for c in columns:
        if out[-1] and used + widths[c] + 2 > MAX_WIDTH:
            out.append([])
            used = label_w
        out[-1].append(c)
        used += widths[c] + 2
    return out


def count_table(binary: str, rows: Sequence[tuple[str, Mapping[str, float], float | None]]) -> list[str]:
    events = list(dict.fromkeys(e for _, values, _ in rows for e, v in values.items() if v))
    if not events:
        return []
    columns = [*events, *(["ns/fault"] if any(r[2] is not None for r in rows) else [])]
    cells = {
        (label, c): _format(nsf if c == "ns/fault" else values.get(c)) for label, values, nsf in rows for c in columns
    }
    head = f"{binary} counts"
    label_w = max(len(head), *(len(label) for label, _, _ in rows))
    widths = {c: max(len(short(c)), *(len(cells[(label, c)]) for label, _, _ in rows)) for c in columns}
    lines: list[str] = []
    for chunk in _chunks(label_w, columns, widths):
        lines.append(head.ljust(label_w) + "".join(f"  {short(c):>{widths[c]}}" for c in chunk))
        lines += [label.ljust(label_w) + "".join(f"  {cells[(label, c)]:>{widths[c]}}" for c in chunk) for label, _, _ in rows]
    return lines


def count_tables(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """One table per binary over every record that has counts (medians over repeats)."""
    several = len({rec.get("host") for rec in records}) > 1
    by_binary: dict[str, list[tuple[str, Mapping[str, float], float | None]]] = {}
    for rec in records:
        label = _case_label(str(rec.get("nodeid")))
        if several:
            label = f"{rec.get('host')} {label}"
        by_binary.setdefault(str(rec.get("binary")), []).extend(_rows(rec, label))
    lines: list[str] = []
    for binary, rows in by_binary.items():
        table = count_table(binary, rows)
        if table:
            lines += ["", *table]
    return lines


def attachment_text(counts: Mapping[str, Any]) -> str:
    """An Allure text attachment: the same table for one test, and the counts of every run."""
    rows = _rows({"counters": counts}, "")
    lines = count_table("", [(label.strip(), values, nsf) for label, values, nsf in rows])
    runs = counts.get("runs") or []
    if len(runs) > 1:
        lines += ["", f"{len(runs)} runs (medians above); per run:"]
        for i, run in enumerate(runs, 1):
            lines.append(f"run {i}: " + ", ".join(f"{short(e)} {n:,}" for e, n in (run.get("total") or {}).items() if n))
    derived = counts.get("derived") or {}
    if derived:
        lines += ["", *(f"{k}: {v:,.3f}" for k, v in derived.items())]
    return "\n".join(lines) + "\n"


def off_lines(records: Sequence[Mapping[str, Any]], header_host: str | None) -> list[str]:
    """One line per host whose counting was off, except the host whose header said so already
    (the controller's own): lab hosts' headers are never shown."""
    off: dict[str, str] = {}
    for rec in records:
        host = str(rec.get("host"))
        if rec.get(COUNTERS_OFF) and host != header_host:
            off.setdefault(host, str(rec[COUNTERS_OFF]))
    return [f"kvmmm: {host}: {note}" for host, note in sorted(off.items())]
