"""max_guest_memory_test (mmu_stress_test since 6.14): one line of run times."""

from __future__ import annotations

import re

from .text import Metrics, S, lines, put, snake

_MGM_FIELD = rf"\w+ = +{S}"
_MGM_LINE = re.compile(rf"run1 = +{S}(?:, {_MGM_FIELD})*")
_MGM_FIELDS = re.compile(rf"(?:^|, )(\w+) = +{S}")


def max_guest_memory(text: str) -> Metrics:
    """``run1``, ``reset``, ``run2`` (+ 6.14's ``ro``, ``rw``): one line, whole or nothing."""
    out: Metrics = {}
    for line in lines(text):
        if _MGM_LINE.fullmatch(line):
            for key, value in _MGM_FIELDS.findall(line):
                put(out, snake(key), value)
    return out
