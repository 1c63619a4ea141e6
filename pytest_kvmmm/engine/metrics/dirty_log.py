"""dirty_log_test: correctness counters (bits checked, pages dirtied and collected), per log
mode (``-M all``) and guest mode."""

from __future__ import annotations

import re

from .text import Metrics, lines, per_mode, put, sectioned, snake

_DL_LOG_MODE = re.compile(r"^Testing Log Mode '(?P<mode>[^'\n]*)'[ \t\r]*$", re.MULTILINE)
_DL_BITS = re.compile(r"Total bits checked: dirty \((\d+)\), clear \((\d+)\)(?:, track_next \((\d+)\))?")
_DL_DIRTIED = re.compile(r"Dirtied (\d+) pages")
_DL_COLLECTED = re.compile(r"Iteration (\d+) collected (\d+) pages")
_DL_ITERATION = re.compile(r"Iteration +(\d+): dirty: (\d+) +clean: (\d+)(?: +writes: (\d+))?")


def _dirty_log_section(text: str) -> Metrics:
    """Correctness counters, not timings. Up to 6.13: ``dirty/clear/track_next_bits_checked``,
    ``dirtied_pages`` and, for the dirty ring, ``iteration_<i>/collected_pages``. The 2025
    rework dropped those two and ``track_next`` and prints ``iteration_<i>/dirty_pages``,
    ``clean_pages`` and ``writes``; it may collect a ring several times per iteration,
    so collections of one iteration add up."""
    out: Metrics = {}
    for line in lines(text):
        if m := _DL_BITS.fullmatch(line):
            for word, raw in zip(("dirty", "clear", "track_next"), m.groups()):
                if raw is not None:
                    put(out, f"{word}_bits_checked", raw)
        elif m := _DL_DIRTIED.fullmatch(line):
            put(out, "dirtied_pages", m.group(1))
        elif m := _DL_COLLECTED.fullmatch(line):
            put(out, f"iteration_{int(m.group(1))}/collected_pages", m.group(2), add=True)
        elif m := _DL_ITERATION.fullmatch(line):
            prefix = f"iteration_{int(m.group(1))}"
            put(out, f"{prefix}/dirty_pages", m.group(2))
            put(out, f"{prefix}/clean_pages", m.group(3))
            if m.group(4) is not None:
                put(out, f"{prefix}/writes", m.group(4))
    return out


#: ``-M all`` runs each log mode in turn, each with its own guest-mode sections. Only
#: ``-M all`` prints ``Testing Log Mode``, so one such line is enough to prefix: output
#: cut short after the first mode keeps the names the whole run has.
dirty_log = sectioned(
    per_mode(_dirty_log_section), _DL_LOG_MODE, lambda m, i: snake(m.group("mode")) or f"log_mode{i}", 1
)
