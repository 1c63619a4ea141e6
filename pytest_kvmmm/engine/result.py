"""What one selftest invocation gave (``SelftestResult``), and one result for repeated runs
(``combine``: medians over the samples). Pure data: the engine makes results, the pytest layer
and the reports read them.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .counters import Counters, guest_memory_bytes
from .counters.model import combined
from .metrics import Metrics
from .outcome import Status


@dataclass(frozen=True)
class SelftestResult:
    """Everything known about one run of one selftest (or why it did not run)."""

    name: str
    argv: tuple[str, ...]
    status: Status
    reason: str = ""
    details: str = ""
    binary: str | None = None
    returncode: int | None = None
    duration_s: float = 0.0
    stdout: str = ""
    stderr: str = ""
    metrics: Metrics = field(default_factory=dict)
    started_at: float | None = None
    #: Notes a reader of the result should see (e.g. "-v capped from 8 to 2 online CPUs").
    notes: tuple[str, ...] = ()
    #: Every value of every metric over the repeated runs (``--kvm-repeat``); ``metrics`` holds
    #: their medians. A single run has one sample per metric.
    samples: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    #: Kernel complaints (and known-noise lines) logged during the run.
    kernel_log: tuple[str, ...] = ()
    #: ``--kvm-counters``: event counts per run and stage (None when not counted).
    counters: Counters | None = None

    @property
    def passed(self) -> bool:
        return self.status is Status.PASSED

    @property
    def all_samples(self) -> Mapping[str, tuple[float, ...]]:
        """``samples``, or for a result without repeats each metric as its one sample."""
        return self.samples or {k: (v,) for k, v in self.metrics.items()}

    def counters_json(self) -> dict[str, Any]:
        """The ``counters`` of its record (``reports/record.py``): per run and stage, medians, derived figures."""
        if self.counters is None:
            return {}
        return self.counters.to_json(self.metrics, guest_memory_bytes(self.name, self.argv[1:]))


def combine(results: Sequence[SelftestResult]) -> SelftestResult:
    """One result for repeated runs: the last run's outcome, medians of every metric, all samples.

    A failing repetition decides the outcome (the loop stops there); the samples are those of
    the runs that passed.
    """
    last = results[-1]
    if len(results) == 1:
        return last
    passed = [r for r in results if r.passed]
    samples: dict[str, tuple[float, ...]] = {}
    for r in passed:
        for k, v in r.metrics.items():
            samples[k] = (*samples.get(k, ()), v)
    return dataclasses.replace(
        last,
        metrics={k: statistics.median(v) for k, v in samples.items()},
        samples=samples,
        counters=combined([r.counters for r in passed]),
        started_at=results[0].started_at,
        duration_s=sum(r.duration_s for r in results),
        notes=(*last.notes, f"{len(results)} runs: metrics are medians, samples in the results"),
    )
