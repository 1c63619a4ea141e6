"""``kvmmm-compare --png``: a before/after bar chart, one panel per unit. matplotlib is an optional
extra (``pip install 'pytest-kvmmm[plot]'``), imported only when a chart is asked for."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from ..engine.metrics import metric_unit
from .compare import Comparison
from .table import format_change, row_label

INSTALL_HINT = "the PNG chart needs matplotlib: pip install 'pytest-kvmmm[plot]' (or pip install matplotlib)"


class PlotError(Exception):
    """No chart: matplotlib is missing, or the file cannot be written; one line."""


def write_png(comparison: Comparison, path: Path) -> None:
    """Horizontal bars of the medians (before, after) with min..max whiskers, per test and metric."""
    try:
        # Through importlib: the extra may be missing, and its types are not this package's business.
        matplotlib: Any = importlib.import_module("matplotlib")
        matplotlib.use("Agg")
        plt: Any = importlib.import_module("matplotlib.pyplot")
    except ImportError:
        raise PlotError(INSTALL_HINT) from None
    panels: dict[str, list[Any]] = {}
    for row in comparison.rows:
        panels.setdefault(metric_unit(row.change.metric), []).append(row)
    if not panels:
        raise PlotError("nothing to plot: the runs have no metric in common")
    heights = [max(1.5, 0.55 * len(rows) + 1.0) for rows in panels.values()]
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, sum(heights)), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    for ax, (unit, rows) in zip(axes[:, 0], panels.items()):
        labels = [f"{row_label(r, comparison.several_hosts)}  {r.change.metric}" for r in rows]
        ys = list(range(len(rows)))
        for offset, side, name, color in ((-0.2, "before", comparison.before.name, "#9aa5b1"),
                                          (0.2, "after", comparison.after.name, "#1f6feb")):
            spreads = [getattr(r.change, side) for r in rows]
            ax.barh([y + offset for y in ys], [s.median for s in spreads], height=0.38, color=color,
                    label=side if name == side else f"{side}: {name}",
                    xerr=[[s.median - s.low for s in spreads], [s.high - s.median for s in spreads]],
                    error_kw={"elinewidth": 0.8, "capsize": 2})
        for y, r in zip(ys, rows):
            c = r.change
            ax.annotate(f" {format_change(c.change)} {c.verdict.value}", (max(c.before.high, c.after.high), y),
                        va="center", fontsize=8)
        ax.set_yticks(ys)
        ax.set_yticklabels(labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel({"s": "seconds (median, min..max)", "pgs_per_s": "pages/s (median, min..max)"}.get(unit, unit))
        ax.margins(x=0.35)
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(f"{comparison.before.name} -> {comparison.after.name} (positive change = better)", fontsize=10)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=120)
    except OSError as exc:
        raise PlotError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)
