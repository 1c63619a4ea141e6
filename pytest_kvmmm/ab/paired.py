"""Paired before/after verdicts over interleaved rounds: the drift between rounds cancels.

``kvmmm-ab`` runs the same tests under two KVM builds in rounds on one host, alternating the
order (before, after / after, before / ...), so a host that drifts (this one switches speed
regimes every few seconds) moves both sides of a round alike. Each round gives one change per
metric, ``after`` relative to ``before`` of that round (medians of the round's repeats), and the
verdict is taken over the rounds' changes, not over the pooled samples:

* times and rates (a better side, from ``baseline.stats.direction``): ``regressed`` or
  ``improved`` when every round changed in the same direction and the median change is at least
  ``MIN_EFFECT_PCT``, over at least ``MIN_TIME_ROUNDS`` rounds. Times carry no other evidence than
  their signs: n rounds of one sign by chance have the odds 2 / 2**n (a sign test), 1 in 16 with
  5 rounds, and over three stage times a no-op build got a verdict that way in the CI lab's proof
  (KVM_CREATE_MAPPINGS "regressed" 16 % on rounds of -4 % .. -41 %, TCG's spread); with 6 rounds
  the odds are 1 in 32, below 5 %;
* event counts (``counters``: near-deterministic): ``more`` or ``fewer`` when every round changed by
  at least ``COUNT_EFFECT_PCT`` and ``MIN_COUNT_DELTA`` events in the same direction, over at least
  ``MIN_ROUNDS`` rounds (their A/A spread is far below the threshold, so few rounds suffice);
* counts of the host's own events (not ``kvm:``/``kvmmmu:``/``vm:``) are shown but never judged: they
  follow the run's length (a slower KVM runs longer and the host flushes its TLB more);
* fewer paired rounds than that: ``too few rounds``.

Pure: records in, ``PairedChange`` values out.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from ..baseline.stats import MIN_EFFECT_PCT, Spread, change_pct, direction, is_headline
from ..engine.counters.model import Counters

#: Rounds a count verdict needs.
MIN_ROUNDS = 3
#: Rounds a time verdict needs: the smallest n whose all-one-sign odds, 2 / 2**n, are below 5 %.
MIN_TIME_ROUNDS = 6
#: Event counts barely move between runs of the same binaries: a 2 % change that holds in every
#: round is a real one, if it is also at least ``MIN_COUNT_DELTA`` events (0 -> 3 TLB flushes in a
#: short stage is +inf %, and noise).
COUNT_EFFECT_PCT = 2.0
MIN_COUNT_DELTA = 16

REGRESSED, IMPROVED, MORE, FEWER = "regressed", "improved", "more", "fewer"
NO_CHANGE, TOO_FEW = "no significant change", "too few rounds"
#: Counts of the host's own events (``tlb:tlb_flush``, ...) follow the run's length and everything
#: else on the host: shown, never judged. Only KVM's own subsystems get count verdicts.
HOST_EVENT = "host event, not judged"
KVM_SUBSYSTEMS = ("kvm:", "kvmmmu:", "vm:")  # vm: KVM's per-VM debugfs statistics

#: (host, nodeid): one test on one host.
TestKey = tuple[str, str]


@dataclass(frozen=True)
class RoundRecords:
    """The ``--kvm-results`` records of one side in one round."""

    round: int
    side: str  # "before" or "after"
    records: Sequence[Mapping[str, object]]


@dataclass(frozen=True)
class PairedChange:
    test: TestKey
    metric: str
    #: "metric" (a time or rate) or "count" (an event counter).
    kind: str
    before: Spread  # over the rounds' medians
    after: Spread
    #: Relative to before, positive = better for metrics; for counts, positive = more events.
    change: float
    rounds: tuple[float, ...]  # the change in each round
    verdict: str

    @property
    def flagged(self) -> bool:
        return self.verdict not in (NO_CHANGE, TOO_FEW, HOST_EVENT)


def _numbers(values: object) -> list[float]:
    if isinstance(values, (int, float)) and not isinstance(values, bool):
        values = [values]
    if not isinstance(values, (list, tuple)):
        return []
    return [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]


def record_series(record: Mapping[str, object]) -> dict[tuple[str, str], list[float]]:
    """``{(kind, name): samples}`` of one passed record: metric samples, and the event counts of
    ``--kvm-counters`` per run (``event`` for the whole run, ``<stage>/<event>`` per stage)."""
    if record.get("status") != "passed":
        return {}
    out: dict[tuple[str, str], list[float]] = {}
    samples = record.get("samples") or record.get("metrics") or {}
    if isinstance(samples, Mapping):
        for name, values in samples.items():
            if is_headline(str(name)) and direction(str(name)) != 0 and _numbers(values):
                out[("metric", str(name))] = _numbers(values)
    counters = record.get("counters")
    if isinstance(counters, Mapping):
        try:
            series = Counters.from_json(counters).series()
        except (TypeError, ValueError, AttributeError):
            series = {}
        for name, values in series.items():
            if values:
                out[("count", name)] = [float(v) for v in values]
    return out


def per_round(runs: Iterable[RoundRecords]) -> dict[TestKey, dict[tuple[str, str], dict[str, dict[int, float]]]]:
    """test -> (kind, name) -> side -> round -> the round's median."""
    table: dict[TestKey, dict[tuple[str, str], dict[str, dict[int, float]]]] = {}
    for run in runs:
        for rec in run.records:
            key = (str(rec.get("host") or ""), str(rec.get("nodeid") or ""))
            for series, values in record_series(rec).items():
                table.setdefault(key, {}).setdefault(series, {}).setdefault(run.side, {})[run.round] = statistics.median(values)
    return table


def _count_change(before: float, after: float) -> float:
    if before == 0:
        return 0.0 if after == 0 else math.inf
    return 100.0 * (after - before) / before


def paired_change(test: TestKey, kind: str, name: str, sides: Mapping[str, Mapping[int, float]]) -> PairedChange | None:
    """The verdict for one series of one test, over the rounds both sides have."""
    before, after = sides.get("before", {}), sides.get("after", {})
    common = sorted(set(before) & set(after))
    if not common:
        return None
    b = [before[r] for r in common]
    a = [after[r] for r in common]
    if kind == "count":
        rounds = tuple(_count_change(x, y) for x, y in zip(b, a))
        change = _count_change(statistics.median(b), statistics.median(a))
        effect = COUNT_EFFECT_PCT
        labels = (MORE, FEWER)
    else:
        sign = direction(name)
        rounds = tuple(change_pct(x, y, sign) for x, y in zip(b, a))
        change = change_pct(statistics.median(b), statistics.median(a), sign)
        effect = MIN_EFFECT_PCT
        labels = (IMPROVED, REGRESSED)
    needed = MIN_ROUNDS if kind == "count" else MIN_TIME_ROUNDS
    verdict = TOO_FEW if len(common) < needed else _verdict(kind, rounds, effect, labels)
    if kind == "count" and verdict in labels and min(abs(y - x) for x, y in zip(b, a)) < MIN_COUNT_DELTA:
        verdict = NO_CHANGE
    if kind == "count" and not name.rsplit("/", 1)[-1].startswith(KVM_SUBSYSTEMS):
        verdict = HOST_EVENT
    return PairedChange(test, name, kind, Spread.of(b), Spread.of(a), change, rounds, verdict)


def _verdict(kind: str, rounds: Sequence[float], effect: float, labels: tuple[str, str]) -> str:
    """``labels[0]`` (better, or more events) / ``labels[1]`` when every round agrees, else no change.

    A count must move by ``effect`` in every round; a time or rate must move the same way in
    every round and by ``effect`` at the median round.
    """
    if kind == "count":
        up, down = all(c >= effect for c in rounds), all(c <= -effect for c in rounds)
    else:
        middle = statistics.median(rounds)
        up = all(c > 0 for c in rounds) and middle >= effect
        down = all(c < 0 for c in rounds) and middle <= -effect
    return labels[0] if up else labels[1] if down else NO_CHANGE


def paired_changes(runs: Iterable[RoundRecords]) -> list[PairedChange]:
    """Every test's paired changes, tests in first-seen order, metrics before counts."""
    out = []
    for test, series in per_round(runs).items():
        for (kind, name), sides in sorted(series.items(), key=lambda kv: (kv[0][0] != "metric", kv[0][1])):
            change = paired_change(test, kind, name, sides)
            if change is not None:
                out.append(change)
    return out


def flagged(changes: Sequence[PairedChange]) -> list[PairedChange]:
    return [c for c in changes if c.flagged]
