"""The perf tests that print a time per stage (and per guest mode): kvm_page_table_test,
dirty_log_perf_test, access_tracking_perf_test, demand_paging_test."""

from __future__ import annotations

import re

from .text import NUM, Metrics, S, lines, put, snake

_PAGE_TABLE_STAGE = re.compile(rf"(KVM_(?:CREATE|UPDATE|ADJUST)_MAPPINGS): total execution time: {S}")


def page_table_section(text: str) -> Metrics:
    out: Metrics = {}
    for line in lines(text):
        m = _PAGE_TABLE_STAGE.fullmatch(line)
        if m:
            put(out, m.group(1), m.group(2))
    return out


_DLP_STAGES = {
    "Populate memory": "populate_memory",
    "Enabling dirty logging": "enable_dirty_logging",
    "Disabling dirty logging": "disable_dirty_logging",
}
_DLP_STAGE = re.compile(rf"({'|'.join(_DLP_STAGES)}) time: {S}")
_DLP_ITERATION = re.compile(rf"Iteration (\d+) (dirty memory|get dirty log|clear dirty log) time: {S}")
_DLP_SUMMARY = re.compile(rf"(Get|Clear) dirty log over \d+ iterations took {S}\. \(Avg {S}/iteration\)")


def dirty_log_perf_section(text: str) -> Metrics:
    out: Metrics = {}
    for line in lines(text):
        if m := _DLP_STAGE.fullmatch(line):
            put(out, _DLP_STAGES[m.group(1)], m.group(2))
        elif m := _DLP_ITERATION.fullmatch(line):
            put(out, f"iteration_{int(m.group(1))}/{snake(m.group(2))}", m.group(3))
        elif m := _DLP_SUMMARY.fullmatch(line):
            what = m.group(1).lower()
            put(out, f"{what}_dirty_log_total", m.group(2))
            put(out, f"{what}_dirty_log_avg", m.group(3))
    return out


#: ``pr_info("%-30s: %ld.%09lds\n", description, ...)``; the label may be padded.
_AT_STAGE = re.compile(rf"([A-Z][A-Za-z ()_-]*): {S}")


def access_tracking_section(text: str) -> Metrics:
    """6.16's ``(page_idle)`` label is dropped, so ``mark_memory_idle`` compares with older
    kernels; ``(lru_gen)`` is kept (``mark_memory_idle_lru_gen``): another mechanism with
    another cost. The idle marking runs twice: the second is ``mark_memory_idle_2``."""
    out: Metrics = {}
    seen: dict[str, int] = {}
    for line in lines(text):
        m = _AT_STAGE.fullmatch(line)
        if not m:
            continue
        name = snake(m.group(1).rstrip().replace("(page_idle)", ""))
        seen[name] = seen.get(name, 0) + 1
        put(out, name if seen[name] == 1 else f"{name}_{seen[name]}", m.group(2))
    return out


_DP_TOTAL = re.compile(rf"Total guest execution time:\s+{S}")
_DP_PER_VCPU = re.compile(rf"Per-vcpu demand paging rate:\s+{NUM} pgs/sec/vcpu")
_DP_OVERALL = re.compile(rf"Overall demand paging rate:\s+{NUM} pgs/sec")


def demand_paging_section(text: str) -> Metrics:
    """Rates are not comparable across versions: until ~6.4 the nanoseconds were divided
    by 1e8 (fractions of a second counted tenfold, rates too low), and since 6.10
    "overall" is vCPU 0's rate times the vCPUs."""
    out: Metrics = {}
    for line in lines(text):
        if m := _DP_TOTAL.fullmatch(line):
            put(out, "total_guest_execution", m.group(1))
        elif m := _DP_PER_VCPU.fullmatch(line):
            put(out, "per_vcpu_demand_paging_rate_pgs_per_s", m.group(1))
        elif m := _DP_OVERALL.fullmatch(line):
            put(out, "overall_demand_paging_rate_pgs_per_s", m.group(1))
    return out
