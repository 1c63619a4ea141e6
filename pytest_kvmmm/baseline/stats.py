"""Before/after statistics for one metric: direction, medians, spread, a bootstrap interval, a verdict.

Pure and deterministic: the bootstrap's random generator is seeded from the metric's key,
so the terminal, the Markdown table and the failure message agree, run after run.

The change is given the way KVM cover letters give it: relative to *before*, positive when
the new kernel is better (``before 104.35s -> after 3.70s +96.46%``). A time that drops is
an improvement; a rate (``_pgs_per_s``) or a count of completed iterations that drops is a
regression. Correctness counters (``_pages``, ``_bits_checked``, ``_writes``) have no
better side and get no verdict.

Method, for runs whose samples are taken back to back (``--kvm-repeat``): the medians of both
sides, and a 95 % percentile bootstrap interval of the change (both sides resampled
independently, ``RESAMPLES`` times, seeded). A verdict, "regressed" or "improved", needs all
of:

* the interval excludes zero (the change is larger than the sampling noise of the medians);
* each median lies outside the other run's min..max (the change stands out from everything
  either run saw: a host that drifts between runs moves whole runs, which the interval
  alone cannot see, and a reader can check this one by eye in the table);
* the change is at least ``MIN_EFFECT_PCT``.

Otherwise "no significant change". With fewer than ``MIN_SAMPLES`` samples on a side there is
no spread to judge by: "too few samples".
"""

from __future__ import annotations

import enum
import math
import random
import re
import statistics
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from ..engine.metrics import metric_unit

RESAMPLES = 2000
CONFIDENCE = 0.95
MIN_SAMPLES = 3
#: Changes smaller than this are never called a regression or an improvement: on a quiet
#: host, run-to-run drift of a few percent is the norm; on a shared one it is much more.
MIN_EFFECT_PCT = 5.0

#: Units whose larger values are better; every other unit with a direction is a time.
_HIGHER_IS_BETTER = {"pgs_per_s", "iterations"}
#: Units without a better side: correctness counters.
_NO_DIRECTION = {"pages", "bits_checked", "writes"}
#: Parts of a metric name that index a series (per iteration, per run): not headline numbers.
_SERIES = re.compile(r"(iteration|run)_\d+")


class Verdict(enum.Enum):
    REGRESSED = "regressed"
    IMPROVED = "improved"
    NO_CHANGE = "no significant change"
    TOO_FEW = "too few samples"
    #: The hosts' fingerprints differ and the comparison was not forced.
    REFUSED = "no verdict: hosts differ"


def direction(metric: str) -> int:
    """+1 when a larger value is better (rates, completed iterations), -1 when a smaller one
    is (times: every plain name), 0 for counters without a better side."""
    unit = metric_unit(metric)
    if unit in _NO_DIRECTION:
        return 0
    return 1 if unit in _HIGHER_IS_BETTER else -1


def is_headline(metric: str) -> bool:
    """Whether a metric is a headline number (not one point of a per-iteration or per-run series)."""
    return not any(_SERIES.fullmatch(part) for part in metric.split("/"))


def change_pct(before: float, after: float, sign: int) -> float:
    """Improvement relative to before, in percent (positive = better); ``sign`` from ``direction``."""
    if before == 0:
        return 0.0 if after == 0 else math.copysign(math.inf, sign * after)
    return 100.0 * sign * (after - before) / abs(before)


@dataclass(frozen=True)
class Spread:
    n: int
    median: float
    low: float
    high: float

    @classmethod
    def of(cls, samples: Sequence[float]) -> Spread:
        return cls(len(samples), statistics.median(samples), min(samples), max(samples))


@dataclass(frozen=True)
class MetricChange:
    metric: str
    before: Spread
    after: Spread
    #: +1 larger is better, -1 smaller is better.
    sign: int
    #: Improvement in percent relative to before (positive = better).
    change: float
    #: The bootstrap interval of ``change`` (None with too few samples).
    interval: tuple[float, float] | None
    verdict: Verdict

    @property
    def regression(self) -> float:
        """How much worse, in percent (0 when better)."""
        return max(-self.change, 0.0)


def seed_for(*key: str) -> int:
    """A stable seed (``hash()`` is salted per process)."""
    return zlib.crc32("\0".join(key).encode())


def bootstrap_interval(
    before: Sequence[float],
    after: Sequence[float],
    sign: int,
    rng: random.Random,
    resamples: int = RESAMPLES,
    confidence: float = CONFIDENCE,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``change_pct`` between the medians."""
    median = statistics.median
    changes = sorted(
        change_pct(median(rng.choices(before, k=len(before))), median(rng.choices(after, k=len(after))), sign)
        for _ in range(resamples)
    )
    tail = (1.0 - confidence) / 2
    lo = changes[int(tail * (resamples - 1))]
    hi = changes[int(math.ceil((1.0 - tail) * (resamples - 1)))]
    return lo, hi


def compare_samples(
    metric: str,
    before: Sequence[float],
    after: Sequence[float],
    *,
    seed: int = 0,
) -> MetricChange | None:
    """The change of one metric; None for a metric without a better side or without samples."""
    sign = direction(metric)
    if sign == 0 or not before or not after:
        return None
    b, a = Spread.of(before), Spread.of(after)
    change = change_pct(b.median, a.median, sign)
    if min(len(before), len(after)) < MIN_SAMPLES:
        return MetricChange(metric, b, a, sign, change, None, Verdict.TOO_FEW)
    lo, hi = bootstrap_interval(before, after, sign, random.Random(seed))
    apart = a.median > b.high and b.median < a.low or a.median < b.low and b.median > a.high
    if not apart or abs(change) < MIN_EFFECT_PCT or lo <= 0 <= hi:
        verdict = Verdict.NO_CHANGE
    else:
        verdict = Verdict.IMPROVED if change > 0 else Verdict.REGRESSED
    return MetricChange(metric, b, a, sign, change, (lo, hi), verdict)
