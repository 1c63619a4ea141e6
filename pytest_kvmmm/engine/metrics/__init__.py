"""Metrics from selftest output: pure text in, ``{name: number}`` out.

One parser per binary, looked up by name in ``PARSERS`` (aliases share a parser:
``max_guest_memory_test`` became ``mmu_stress_test`` in 6.14). Binaries that print no
numbers (memslot_modification_stress_test, set_memory_region_test, the page-splitting
test) have none: their pass is the signal and the plugin times them itself.

Names, so that a reader of ``--kvm-results`` never guesses a unit:

* stable snake_case ASCII made from the binary's own wording (``Populate memory time``
  -> ``populate_memory``), except the page-table test's ``KVM_CREATE_MAPPINGS`` etc.,
  kept as the selftest and its cover letters spell them;
* a plain name is a value in **seconds**; any other unit is the name's suffix
  (``UNIT_SUFFIXES``): ``overall_demand_paging_rate_pgs_per_s``, ``dirty_bits_checked``,
  ``dirtied_pages``, ``completed_iterations`` (see ``metric_unit``);
* a per-iteration series is indexed, ``iteration_1/dirty_memory``, and its summary lines
  are metrics of their own (``get_dirty_log_total``, ``get_dirty_log_avg``); the same
  for memslot_perf_test's sub-tests and runs (``map/run_1/slot_setup``);
* when one invocation runs several guest modes (no ``-m`` on arm64), each section starts
  with ``Testing guest mode: ...`` and its metrics become ``<mode>/<metric>`` with the
  mode's stable name (``p40v48_4k``); dirty_log_test ``-M all`` likewise prefixes the
  log mode (``dirty_ring/...``). A single section keeps plain names.

Tolerated format drift, 6.1 to 6.16: ``Random seed:`` lines anywhere; demand_paging_test's
space-separated (<= 6.9) and tab-separated (6.10+) lines and its 6.10 per-vCPU rate;
access_tracking_perf_test's ``%-30s`` padding and 6.16's ``Mark memory idle (page_idle)``
/ ``(lru_gen)`` labels; max_guest_memory_test's ``run2 =  `` (two spaces) and
mmu_stress_test's ``ro = ..., rw = ...``; the ``\\r`` progress lines of both; and
dirty_log_test's 2025 rework (per-iteration ``dirty/clean/writes`` lines, no
``track_next``). A line that is garbled, truncated or holds a number that does not
parse gives no metric; parsing never raises.

One module per binary family: ``stages.py`` (the perf tests' stage times), ``stress.py``
(max_guest_memory_test), ``memslot.py``, ``dirty_log.py``; what they share is ``text.py``. A
new binary's parser goes in its family's module and gets a line in ``PARSERS``.
"""

from __future__ import annotations

from .dirty_log import dirty_log
from .memslot import memslot_perf
from .stages import (
    access_tracking_section,
    demand_paging_section,
    dirty_log_perf_section,
    page_table_section,
)
from .stress import max_guest_memory
from .text import UNIT_SUFFIXES, Metrics, Parser, guest_mode_name, metric_unit, per_mode

__all__ = ["PARSERS", "UNIT_SUFFIXES", "Metrics", "Parser", "guest_mode_name", "metric_unit", "parse_metrics"]

PARSERS: dict[str, Parser] = {
    "kvm_page_table_test": per_mode(page_table_section),
    "dirty_log_perf_test": per_mode(dirty_log_perf_section),
    "access_tracking_perf_test": per_mode(access_tracking_section),
    "demand_paging_test": per_mode(demand_paging_section),
    "max_guest_memory_test": max_guest_memory,
    "mmu_stress_test": max_guest_memory,
    "memslot_perf_test": memslot_perf,
    "dirty_log_test": dirty_log,
}


def parse_metrics(binary: str, stdout: str) -> Metrics:
    """The metrics of ``binary``'s output; ``{}`` for binaries without a parser or on garbage.

    ``binary`` may carry its arch directory (``x86_64/...``): only the file name counts.
    """
    parser = PARSERS.get(binary.rsplit("/", 1)[-1])
    if parser is None:
        return {}
    try:
        return parser(stdout)
    except (ValueError, IndexError):  # belt and braces: each line is already checked
        return {}
