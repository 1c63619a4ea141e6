"""KVM event counts per selftest run and per stage (``--kvm-counters``): tracepoints counted
with perf, inherited by the selftest; see ``session.py``."""

from .model import Counters, RunCounts, is_count, split_series
from .session import CounterSession, RunCounter
from .sets import SET_NAMES, parse_selection
from .stages import guest_memory_bytes

__all__ = [
    "SET_NAMES", "CounterSession", "Counters", "RunCounter", "RunCounts", "guest_memory_bytes", "is_count",
    "parse_selection", "split_series",
]
