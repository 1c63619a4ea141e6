"""memslot_perf_test: per sub-test and run, slot setup and guest run times, iterations."""

from __future__ import annotations

import re

from .text import Metrics, S, lines, put, snake

_MS_TEST = re.compile(r"Testing (.+?) performance with \d+ runs, \d+ seconds each")
_MS_TOOK = re.compile(rf"Test took {S} for slot setup \+ {S} all iterations")
_MS_DONE = re.compile(rf"Done (\d+) iterations, avg {S} each")
_MS_BEST = re.compile(rf"Best runtime result was {S} per iteration \(with (\d+) iterations\)")
_MS_BEST_SETUP = re.compile(rf"Best slot setup time for the whole test area was {S}")


def memslot_perf(text: str) -> Metrics:
    """Per sub-test (``map``, ``unmap``, ``move_active_area`` ... ``rw``) and run:
    ``<test>/run_<k>/slot_setup``, ``.../guest_runtime`` (all iterations),
    ``.../completed_iterations``, ``.../iteration_avg``; then the best run's
    ``<test>/best_iteration_avg`` and ``<test>/best_completed_iterations``, and the overall
    ``best_slot_setup``. A run that printed "Memslot count too high" has no metrics (see
    ``output_checks``)."""
    out: Metrics = {}
    test: str | None = None
    run = 0
    for line in lines(text):
        if m := _MS_TEST.fullmatch(line):
            test, run = snake(m.group(1)), 0
        elif m := _MS_BEST_SETUP.fullmatch(line):
            put(out, "best_slot_setup", m.group(1))
        elif test is None:
            continue  # the head was cut off: nothing to attribute these lines to
        elif m := _MS_TOOK.fullmatch(line):
            run += 1
            put(out, f"{test}/run_{run}/slot_setup", m.group(1))
            put(out, f"{test}/run_{run}/guest_runtime", m.group(2))
        elif (m := _MS_DONE.fullmatch(line)) and run:
            put(out, f"{test}/run_{run}/completed_iterations", m.group(1))
            put(out, f"{test}/run_{run}/iteration_avg", m.group(2))
        elif m := _MS_BEST.fullmatch(line):
            put(out, f"{test}/best_iteration_avg", m.group(1))
            put(out, f"{test}/best_completed_iterations", m.group(2))
    return out
