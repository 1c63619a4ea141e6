"""Before/after of event counts (``--kvm-counters``): a verdict rule for near-deterministic values.

Pure. Times on a shared host drift by whole runs, so their verdicts need a bootstrap and
a margin (``stats.py``). Counts of the same binary with the same arguments barely move
(ci/bench_counters.py measures their A/A spread), so their rule is direct: a count is
"fewer" or "more" when, with at least ``MIN_COUNT_SAMPLES`` runs a side,

* the medians differ by ``COUNT_MIN_PCT`` or more (a stage's by ``STAGE_MIN_PCT``), and by
  ``COUNT_MIN_ABS`` events or more (2 zaps against 4 is +100 % and means nothing);
* the change holds across repeats: every run of one side lies beyond every run of the other,
  and the gap between the two sides is at least as wide as either side's own spread (most
  KVM counts do not move at all between identical runs; host-side events such as
  ``tlb:tlb_flush`` and MMU-notifier calls do, by tens of percent, and must not cry wolf).

Counts have no better side here: fewer faults may be the point of a series, or a sign that a
path stopped being taken. The verdict says which way they went; the reader judges.

Which counts become rows: the whole run's count of every event that counted anything, and a
stage's count where it got a verdict (a page-table run has three stages times a dozen events:
unchanged ones would bury the rest). Per-iteration stages stay out, as their times do.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..engine.counters.model import split_series
from .stats import Spread, change_pct, is_headline

MIN_COUNT_SAMPLES = 3
COUNT_MIN_PCT = 2.0
#: A stage's count is read when its line reaches pytest, while the binary may already run the
#: next stage: on a loaded host a few percent of a stage's events land in its neighbour
#: (2.5 % measured here), so a stage needs a larger change than a whole run.
STAGE_MIN_PCT = 5.0
COUNT_MIN_ABS = 16


class CountVerdict(enum.Enum):
    FEWER = "fewer"
    MORE = "more"
    NO_CHANGE = "no count change"
    TOO_FEW = "too few samples"
    REFUSED = "no verdict: hosts differ"


@dataclass(frozen=True)
class CountChange:
    #: ``event`` (whole run) or ``<stage>/<event>``.
    name: str
    before: Spread
    after: Spread
    #: Relative to before, in percent (positive = more events).
    change: float
    verdict: CountVerdict


def count_verdict(before: Sequence[float], after: Sequence[float], min_pct: float = COUNT_MIN_PCT) -> tuple[float, CountVerdict]:
    b, a = Spread.of(before), Spread.of(after)
    change = change_pct(b.median, a.median, 1)
    if min(len(before), len(after)) < MIN_COUNT_SAMPLES:
        return change, CountVerdict.TOO_FEW
    big = abs(change) >= min_pct and abs(a.median - b.median) >= COUNT_MIN_ABS
    noise = max(b.high - b.low, a.high - a.low)
    if big and b.low - a.high > 0 and b.low - a.high >= noise:
        return change, CountVerdict.FEWER
    if big and a.low - b.high > 0 and a.low - b.high >= noise:
        return change, CountVerdict.MORE
    return change, CountVerdict.NO_CHANGE


def count_changes(
    before: Mapping[str, Sequence[float]], after: Mapping[str, Sequence[float]], *, refused: bool = False
) -> list[CountChange]:
    """The rows for one test: totals that counted anything, then stages with a verdict."""
    totals: list[CountChange] = []
    stages: list[CountChange] = []
    for name, a in after.items():
        b = before.get(name)
        stage, _ = split_series(name)
        if not b or not a or (stage is not None and not is_headline(stage)):
            continue
        if not any(b) and not any(a):
            continue
        change, verdict = count_verdict(b, a, COUNT_MIN_PCT if stage is None else STAGE_MIN_PCT)
        if refused:
            verdict = CountVerdict.REFUSED
        row = CountChange(name, Spread.of(b), Spread.of(a), change, verdict)
        if stage is None:
            totals.append(row)
        elif verdict in (CountVerdict.FEWER, CountVerdict.MORE):
            stages.append(row)
    return totals + stages
