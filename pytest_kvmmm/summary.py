"""The terminal's ``kvm selftests`` section: one line per selftest test, metrics included.

Pure: records in, lines out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def format_metric(value: float) -> str:
    return f"{value:.4f}s" if value < 1000 else f"{value:.0f}"


def summary_lines(records: Sequence[Mapping[str, object]], verbose: bool = False) -> list[str]:
    lines = []
    for rec in records:
        status = str(rec.get("status", "?"))
        duration = rec.get("duration_s") or 0.0
        head = f"{status.upper():8} {float(duration):7.2f}s  {rec.get('nodeid', '?')}"  # type: ignore[arg-type]
        metrics = rec.get("metrics") or {}
        assert isinstance(metrics, Mapping)
        if metrics:
            head += "  " + "  ".join(f"{k}={format_metric(float(v))}" for k, v in metrics.items())
        lines.append(head)
        reason = rec.get("reason")
        if reason and (verbose or status != "passed"):
            lines.append(f"         {reason}")
        for note in rec.get("notes") or ():  # type: ignore[attr-defined]
            lines.append(f"         note: {note}")
    return lines
