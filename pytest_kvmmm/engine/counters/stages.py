"""Where a selftest's stages end, line by line, and how much guest memory it touched.

Pure. A stage ends at the line that prints its time: ``KVM_CREATE_MAPPINGS: total
execution time: ...`` (kvm_page_table_test), ``Iteration 2 dirty memory time: ...``
(dirty_log_perf_test), ``Populating memory : ...`` (access_tracking_perf_test). The metric
parsers already know these lines, so a line is a stage's end when the binary's parser finds
exactly one metric in it, and the stage takes that metric's name (summary lines, two
metrics each, are not stages). Guest modes: a run of several modes prefixes each stage with
its mode, as the metrics are.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from ..metrics import PARSERS, guest_mode_name, parse_metrics

#: Binaries that print a line per stage as the stage ends (others print their numbers at exit).
STAGED = ("kvm_page_table_test", "dirty_log_perf_test", "access_tracking_perf_test")
#: One greedy run to the end of the (stripped) line: linear, where ``.*?\s*$`` was quadratic
#: in a run of blanks inside the line.
_MODE = re.compile(r"Testing guest mode: (PA-bits:.*)")
#: Binaries whose ``-b`` is per vCPU (memstress); kvm_page_table_test's is the total.
_PER_VCPU = ("dirty_log_perf_test", "access_tracking_perf_test", "demand_paging_test", "memslot_modification_stress_test")
_SIZE = re.compile(r"(\d+)([bkmgt]?)", re.IGNORECASE)
_SHIFT = {"": 0, "b": 0, "k": 10, "m": 20, "g": 30, "t": 40}
#: memstress and kvm_page_table_test default to 1 GiB (per vCPU / in total).
DEFAULT_MEMORY = 1 << 30


class StageTracker:
    """Fed the output lines of one run; says which line ends which stage."""

    def __init__(self, binary: str) -> None:
        self.binary = binary.rsplit("/", 1)[-1]
        self.enabled = self.binary in STAGED and self.binary in PARSERS
        self.mode: str | None = None
        self.modes: list[str] = []

    def stage_of(self, line: str) -> tuple[str | None, str] | None:
        """(guest mode or None, stage name) when ``line`` ends a stage, else None."""
        line = line.strip()
        if not self.enabled or not line:  # called per line while the selftest runs: blank is cheap
            return None
        m = _MODE.match(line)
        if m:
            self.mode = guest_mode_name(m.group(1)) or f"mode{len(self.modes)}"
            self.modes.append(self.mode)
            return None
        found = parse_metrics(self.binary, line + "\n")
        if len(found) != 1:
            return None
        return self.mode, next(iter(found))

    def name(self, mode: str | None, stage: str) -> str:
        """The stage's final name: prefixed by its mode when the run had several, as metrics are."""
        return f"{mode}/{stage}" if mode is not None and len(set(self.modes)) > 1 else stage


def _size(text: str) -> int | None:
    m = _SIZE.fullmatch(text.strip())
    return int(m.group(1)) << _SHIFT[m.group(2).lower()] if m else None


def _option(argv: Sequence[str], flag: str) -> str | None:
    """The last value of ``-b 1G`` / ``-b1G`` in ``argv`` (getopt style)."""
    value = None
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(flag) and len(arg) > len(flag):
            value = arg[len(flag):]
    return value


def guest_memory_bytes(binary: str, argv: Sequence[str]) -> int | None:
    """The guest memory a run touched (``-b``, times ``-v`` for memstress tests), None if unknown."""
    name = binary.rsplit("/", 1)[-1]
    if name != "kvm_page_table_test" and name not in _PER_VCPU:
        return None
    raw = _option(argv, "-b")
    size = DEFAULT_MEMORY if raw is None else _size(raw)
    if size is None:
        return None
    if name in _PER_VCPU:
        vcpus = _option(argv, "-v")
        size *= int(vcpus) if vcpus and vcpus.isdigit() else 1
    return size
