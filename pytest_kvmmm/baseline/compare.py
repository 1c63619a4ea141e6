"""Compare two runs (saved baselines, or a saved one and the running session): rows of metric changes.

Pure: baselines in, a ``Comparison`` out; ``table.py`` renders it. Tests are matched by
(host, test id). A test id's directory depends on where pytest ran from
(``pytest_kvmmm/suite/test_mm.py::...`` at the repository root, ``test_mm.py::...``
elsewhere with ``--pyargs``), so an id that has no exact match is matched by its file name
and the rest, when that is unambiguous. When each run has exactly one host and their names differ (a lab host
renamed, or two machines on purpose), that one pair is compared, and the fingerprint check
decides whether its verdicts count.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from .counts import CountChange, count_changes
from .fingerprint import (
    Difference,
    Fingerprint,
    compared_differences,
    machine_differences,
    unforceable,
)
from .stats import MetricChange, Verdict, compare_samples, is_headline, seed_for
from .store import Baseline, TestRun


@dataclass(frozen=True)
class HostPair:
    before: str
    after: str
    #: Differences of the machine: verdicts are refused unless forced.
    machine: tuple[Difference, ...]
    #: Differences a before/after is about (kernel, selftests build): shown only.
    compared: tuple[Difference, ...]

    @property
    def label(self) -> str:
        return self.after if self.before == self.after else f"{self.before} -> {self.after}"


@dataclass(frozen=True)
class Row:
    host: str
    nodeid: str
    binary: str
    change: MetricChange


@dataclass(frozen=True)
class CountRow:
    host: str
    nodeid: str
    binary: str
    change: CountChange


@dataclass(frozen=True)
class Comparison:
    before: Baseline
    after: Baseline
    pairs: tuple[HostPair, ...]
    rows: tuple[Row, ...]
    forced: bool = False
    #: (host, nodeid) of tests with samples on one side only.
    only_before: tuple[tuple[str, str], ...] = ()
    only_after: tuple[tuple[str, str], ...] = ()
    #: Event counts (``--kvm-counters`` on both sides), with their own verdict rule.
    count_rows: tuple[CountRow, ...] = ()

    @property
    def mismatched(self) -> tuple[HostPair, ...]:
        return tuple(p for p in self.pairs if p.machine)

    @property
    def several_hosts(self) -> bool:
        return len(self.pairs) > 1


def pair_hosts(before: Sequence[str], after: Sequence[str]) -> list[tuple[str, str]]:
    """Same names pair up; a single host on each side pairs up whatever its name."""
    common = [h for h in after if h in before]
    if not common and len(before) == 1 and len(after) == 1:
        return [(before[0], after[0])]
    return [(h, h) for h in common]


def short_id(nodeid: str) -> str:
    """``pytest_kvmmm/suite/test_mm.py::test_x[a]`` -> ``test_mm.py::test_x[a]``."""
    path, sep, rest = nodeid.partition("::")
    return path.rsplit("/", 1)[-1] + sep + rest


def find_test(tests: Mapping[str, TestRun], nodeid: str) -> str | None:
    """The id ``nodeid`` has in ``tests``: the same, else the only one with the same ``short_id``."""
    if nodeid in tests:
        return nodeid
    short = short_id(nodeid)
    found = [n for n in tests if short_id(n) == short]
    return found[0] if len(found) == 1 else None


def metric_changes(
    before: TestRun, after: Mapping[str, Sequence[float]], *, host: str, nodeid: str, refused: bool = False
) -> list[MetricChange]:
    """Every headline metric with a better side that both runs have, in the order the binary prints them."""
    out = []
    for metric, samples in after.items():
        if not is_headline(metric) or not before.samples.get(metric) or not samples:
            continue
        change = compare_samples(metric, before.samples[metric], samples, seed=seed_for(host, nodeid, metric))
        if change is not None:
            if refused:
                change = replace(change, verdict=Verdict.REFUSED)
            out.append(change)
    return out


def compare(before: Baseline, after: Baseline, *, force: bool = False) -> Comparison:
    pairs = []
    rows: list[Row] = []
    count_rows: list[CountRow] = []
    only_before: list[tuple[str, str]] = []
    only_after: list[tuple[str, str]] = []
    for b_host, a_host in pair_hosts(list(before.hosts), list(after.hosts)):
        b_run, a_run = before.hosts[b_host], after.hosts[a_host]
        pair = HostPair(
            b_host,
            a_host,
            tuple(machine_differences(b_run.fingerprint, a_run.fingerprint)),
            tuple(compared_differences(b_run.fingerprint, a_run.fingerprint)),
        )
        pairs.append(pair)
        # An emulated side against a physical one is refused even when forced (emulation.py).
        refused = bool(pair.machine) and (not force or bool(unforceable(pair.machine)))
        matched = set()
        for nodeid, a_test in a_run.tests.items():
            b_id = find_test(b_run.tests, nodeid)
            matched.add(b_id)
            b_test = None if b_id is None else b_run.tests[b_id]
            if b_test is not None:
                for count in count_changes(b_test.counts, a_test.counts, refused=refused):
                    count_rows.append(CountRow(pair.label, nodeid, a_test.binary or b_test.binary, count))
            if b_test is None or not b_test.samples:
                if a_test.samples:
                    only_after.append((a_host, nodeid))
                continue
            if not a_test.samples:
                only_before.append((a_host, nodeid))
                continue
            for change in metric_changes(b_test, a_test.samples, host=a_host, nodeid=nodeid, refused=refused):
                rows.append(Row(pair.label, nodeid, a_test.binary or b_test.binary, change))
        only_before += [(a_host, n) for n, t in b_run.tests.items() if t.samples and n not in matched]
    return Comparison(
        before, after, tuple(pairs), tuple(rows), force, tuple(only_before), tuple(only_after), tuple(count_rows)
    )


def failing(changes: Sequence[MetricChange], thresholds: Mapping[str, float], default: float) -> list[tuple[MetricChange, float]]:
    """The regressions beyond their threshold (``thresholds`` per metric, else ``default``)."""
    out = []
    for change in changes:
        limit = thresholds.get(change.metric, default)
        if change.verdict is Verdict.REGRESSED and change.regression >= limit:
            out.append((change, limit))
    return out


def regressed(
    baseline: Baseline,
    host: str,
    fingerprint: Fingerprint,
    nodeid: str,
    samples: Mapping[str, Sequence[float]],
    thresholds: tuple[float, Mapping[str, float]],
    *,
    force: bool = False,
) -> list[tuple[MetricChange, float]]:
    """One test of the running session (``--kvm-fail-regression``): its metrics that regressed
    beyond their threshold (``thresholds``: default, per metric), each with its threshold. None
    for a host the baseline lacks, a test it lacks or without samples, and a machine that differs
    (unless forced; never an emulated host against a physical one)."""
    pairs = pair_hosts(list(baseline.hosts), [host])
    if not pairs or not samples:
        return []
    run = baseline.hosts[pairs[0][0]]
    diffs = machine_differences(run.fingerprint, fingerprint)
    if diffs and (not force or unforceable(diffs)):
        return []  # refused: the controller says why, loudly
    found = find_test(run.tests, nodeid)
    if found is None:
        return []
    default, per_metric = thresholds
    return failing(metric_changes(run.tests[found], samples, host=host, nodeid=nodeid), per_metric, default)
