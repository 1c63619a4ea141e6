"""Counts of one selftest result: per run, in total and per stage; the JSON of ``--kvm-results``.

Pure. A run's stages are named like the metric the stage's line gives
(``KVM_CREATE_MAPPINGS``, ``iteration_2/dirty_memory``), so each stage's time and counts
pair up. Runs stay in order (``--kvm-repeat``): run *i*'s counts belong to sample *i* of
every metric, which is what an A/B by rounds pairs.

The flat ``series`` names a total by its event (``kvmmmu:kvm_mmu_pagetable_walk``) and a
stage's count by ``<stage>/<event>``: event names hold a ``:`` and no ``/``, so neither
can be mistaken for a metric.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..metrics import metric_unit
from .sets import FAULT_EVENTS

GIB = 1 << 30


def is_count(name: str) -> bool:
    """Whether a series name is a count (``[stage/]subsys:event``), not a metric."""
    return ":" in name.rsplit("/", 1)[-1]


def split_series(name: str) -> tuple[str | None, str]:
    """``KVM_CREATE_MAPPINGS/kvm:kvm_exit`` -> (``KVM_CREATE_MAPPINGS``, ``kvm:kvm_exit``)."""
    stage, sep, event = name.rpartition("/")
    return (stage if sep else None), event


@dataclass(frozen=True)
class RunCounts:
    """One run: the counts of the whole run, and of each stage (since the previous stage's line)."""

    total: Mapping[str, int]
    stages: Mapping[str, Mapping[str, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class Counters:
    """The counts of a result: one ``RunCounts`` per passed run, in run order."""

    events: tuple[str, ...]
    runs: tuple[RunCounts, ...]

    @property
    def fault_event(self) -> str | None:
        """The counter standing for "faults" in the derived figures: the first of ``FAULT_EVENTS``
        that counted anything (PVM counts no ``kvm_page_fault`` but its shadow MMU's walks)."""
        totals = self.medians()[0]
        return next((e for e in FAULT_EVENTS if totals.get(e)), None)

    def series(self) -> dict[str, tuple[int, ...]]:
        """Every count per run: ``event`` (whole run) and ``<stage>/<event>``."""
        out: dict[str, tuple[int, ...]] = {}
        for run in self.runs:
            for event, n in run.total.items():
                out[event] = (*out.get(event, ()), n)
            for stage, counts in run.stages.items():
                for event, n in counts.items():
                    key = f"{stage}/{event}"
                    out[key] = (*out.get(key, ()), n)
        return out

    def medians(self) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
        """(total, stages): medians over runs, stages in the order the binary printed them."""
        total: dict[str, float] = {}
        stages: dict[str, dict[str, float]] = {}
        for key, values in self.series().items():
            stage, event = split_series(key)
            value = float(statistics.median(values))
            if stage is None:
                total[event] = value
            else:
                stages.setdefault(stage, {})[event] = value
        return total, stages

    def derived(self, metrics: Mapping[str, float], memory_bytes: int | None) -> dict[str, float]:
        """Time per fault for each timed stage (``<stage>/ns_per_fault``), faults per GiB of guest
        memory for the run and each stage; medians, so they match the tables."""
        fault = self.fault_event
        if fault is None:
            return {}
        total, stages = self.medians()
        out: dict[str, float] = {}
        gib = memory_bytes / GIB if memory_bytes else None
        if gib and total.get(fault):
            out["faults_per_gib"] = round(total[fault] / gib, 3)
        for stage, counts in stages.items():
            faults = counts.get(fault, 0.0)
            if not faults:
                continue
            seconds = metrics.get(stage)
            if seconds is not None and metric_unit(stage) == "s" and math.isfinite(seconds):
                out[f"{stage}/ns_per_fault"] = round(seconds * 1e9 / faults, 3)
            if gib:
                out[f"{stage}/faults_per_gib"] = round(faults / gib, 3)
        return out

    def to_json(self, metrics: Mapping[str, float] | None = None, memory_bytes: int | None = None) -> dict[str, Any]:
        total, stages = self.medians()
        return {
            "events": list(self.events),
            "fault_event": self.fault_event,
            "total": total,
            "stages": stages,
            #: ``--kvm-results`` sorts keys: the order the binary printed its stages in.
            "stage_order": list(stages),
            "runs": [{"total": dict(r.total), "stages": {s: dict(c) for s, c in r.stages.items()}} for r in self.runs],
            "derived": self.derived(metrics or {}, memory_bytes),
            "guest_memory_bytes": memory_bytes,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Counters:
        """Back from a record's ``counters`` (``ValueError``/``TypeError`` on a damaged one)."""
        order = {str(s): i for i, s in enumerate(data.get("stage_order") or ())}
        runs = tuple(
            RunCounts(
                {str(k): int(v) for k, v in (r.get("total") or {}).items()},
                {
                    str(s): {str(k): int(v) for k, v in c.items()}
                    for s, c in sorted((r.get("stages") or {}).items(), key=lambda sc: order.get(str(sc[0]), len(order)))
                },
            )
            for r in data.get("runs") or ()
        )
        return cls(tuple(str(e) for e in data.get("events") or ()), runs)


def combined(parts: Sequence[Counters | None]) -> Counters | None:
    """The counts of repeated runs: every run's, in order (runs without counts left out)."""
    found = [p for p in parts if p is not None]
    if not found:
        return None
    return Counters(found[-1].events, tuple(r for p in found for r in p.runs))
