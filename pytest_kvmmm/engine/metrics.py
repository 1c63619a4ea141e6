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
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from typing import Callable

from .textsafe import MAX_PARSE_LINE

Metrics = dict[str, float]
Parser = Callable[[str], Metrics]

#: Units other than seconds, as name suffixes. A name with none of them is in seconds.
UNIT_SUFFIXES = ("_pgs_per_s", "_bits_checked", "_pages", "_iterations", "_writes")

#: Patterns applied to a whole output are anchored at a line start and end in a greedy run
#: of one class, so they run in time linear in the output; per-line patterns only ever see
#: lines of at most ``textsafe.MAX_PARSE_LINE`` characters, and none of their quantified
#: parts can match the same characters as the part after it.
_MODE_LINE = re.compile(r"^Testing guest mode: (?P<mode>PA-bits:[^\n]*)", re.MULTILINE)
_MODE_STRING = re.compile(
    r"PA-bits:\s*(?P<pa>ANY|\d+),\s*VA-bits:\s*(?P<va>\d+(?: or \d+)?),\s*(?P<page>\d+)K pages"
)
#: ``%ld.%.9lds`` (or ``%09ld``): nanoseconds always have 9 digits, a shorter fraction is garbage.
_S = r"(\d+\.\d{9})s"
#: ``%f`` and ``%lu``: digits only, so ``inf``, ``nan`` and ``1.2.3`` never match.
_NUM = r"(\d+(?:\.\d+)?)"
#: ``runner._Capture`` keeps the head and the tail of a huge output, joined by this line.
_DROPPED = re.compile(r"\[\.\.\. pytest-kvmmm dropped \d+ bytes of output \.\.\.\]")


def guest_mode_name(mode_string: str) -> str | None:
    """``"PA-bits:52,  VA-bits:48,  4K pages"`` -> ``"p52v48_4k"``; ANY -> ``pxx``.

    These are the names of the kernel's ``enum vm_guest_mode`` (VM_MODE_P52V48_4K ...),
    stable across versions, unlike the numeric ids. The 6.19 x86 string
    ``VA-bits:48 or 57`` maps to ``pxxvyy_4k`` as the enum was renamed then.
    """
    m = _MODE_STRING.search(mode_string)
    if not m:
        return None
    pa = "xx" if m.group("pa") == "ANY" else m.group("pa")
    va = "yy" if " or " in m.group("va") else m.group("va")
    return f"p{pa}v{va}_{m.group('page')}k"


def metric_unit(name: str) -> str:
    """The unit a metric name announces: ``"pgs_per_s"``, ``"pages"`` ... or ``"s"``."""
    last = "_" + name.rsplit("/", 1)[-1]  # "iteration_2/writes" ends in "_writes" too
    return next((unit[1:] for unit in UNIT_SUFFIXES if last.endswith(unit)), "s")


def _lines(text: str) -> Iterator[str]:
    """Stripped complete output lines. A bare ``\\r`` ends a line too: max_guest_memory_test
    redraws ``N vCPUs haven't rendezvoused...`` with it. Cut lines are left out: the text
    after the last newline (a timeout or a kill may stop a binary mid-line, ``writes: 5271``
    read as ``writes: 52``; ``pr_info`` lines always end in one) and the two lines around
    the runner's marker where it dropped the middle of a huge output."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")[:-1]
    if "pytest-kvmmm dropped" in text:
        for i in [i for i, line in enumerate(lines) if _DROPPED.fullmatch(line)]:
            for j in range(max(i - 1, 0), min(i + 2, len(lines))):
                lines[j] = ""
    # Blank lines match nothing, and go in C; a line longer than any metric line never
    # reaches a pattern.
    return (line for line in filter(None, map(str.strip, lines)) if len(line) <= MAX_PARSE_LINE)


def _snake(label: str) -> str:
    """``"Re-populating memory"`` -> ``"re_populating_memory"`` (lowercase ASCII words)."""
    return "_".join(re.findall(r"[a-z0-9]+", label.lower()))


def _put(out: Metrics, name: str, raw: str | None, *, add: bool = False) -> None:
    """Store ``raw`` as a finite float under ``name``; anything else is no metric."""
    if raw is None:
        return
    try:
        value = float(raw)
    except ValueError:
        return
    if math.isfinite(value):
        out[name] = out.get(name, 0.0) + value if add else value


_Namer = Callable[["re.Match[str]", int], str]


def _split(text: str, marks: re.Pattern[str], name: _Namer, least: int) -> Iterator[tuple[str | None, str]]:
    """Cut ``text`` at each match of ``marks``; with fewer than ``least``, one unnamed section."""
    found = list(marks.finditer(text))
    if len(found) < max(least, 1):
        yield None, text
        return
    for i, m in enumerate(found):
        end = found[i + 1].start() if i + 1 < len(found) else len(text)
        yield name(m, i), text[m.start():end]


def _sectioned(parse_section: Parser, marks: re.Pattern[str], name: _Namer, least: int = 2) -> Parser:
    """A parser applying ``parse_section`` to each section, names prefixed from ``least`` on."""

    def parse(text: str) -> Metrics:
        out: Metrics = {}
        for prefix, section in _split(text, marks, name, least):
            for metric, value in parse_section(section).items():
                out[f"{prefix}/{metric}" if prefix else metric] = value
        return out

    return parse


def per_mode(parse_section: Parser) -> Parser:
    """Apply a section parser to each guest-mode section, prefixing names when there are several."""
    return _sectioned(
        parse_section, _MODE_LINE, lambda m, i: guest_mode_name(m.group("mode")) or f"mode{i}"
    )


# --- kvm_page_table_test ------------------------------------------------------------

_PAGE_TABLE_STAGE = re.compile(rf"(KVM_(?:CREATE|UPDATE|ADJUST)_MAPPINGS): total execution time: {_S}")


def _page_table_section(text: str) -> Metrics:
    out: Metrics = {}
    for line in _lines(text):
        m = _PAGE_TABLE_STAGE.fullmatch(line)
        if m:
            _put(out, m.group(1), m.group(2))
    return out


# --- dirty_log_perf_test --------------------------------------------------------------

_DLP_STAGES = {
    "Populate memory": "populate_memory",
    "Enabling dirty logging": "enable_dirty_logging",
    "Disabling dirty logging": "disable_dirty_logging",
}
_DLP_STAGE = re.compile(rf"({'|'.join(_DLP_STAGES)}) time: {_S}")
_DLP_ITERATION = re.compile(rf"Iteration (\d+) (dirty memory|get dirty log|clear dirty log) time: {_S}")
_DLP_SUMMARY = re.compile(rf"(Get|Clear) dirty log over \d+ iterations took {_S}\. \(Avg {_S}/iteration\)")


def _dirty_log_perf_section(text: str) -> Metrics:
    out: Metrics = {}
    for line in _lines(text):
        if m := _DLP_STAGE.fullmatch(line):
            _put(out, _DLP_STAGES[m.group(1)], m.group(2))
        elif m := _DLP_ITERATION.fullmatch(line):
            _put(out, f"iteration_{int(m.group(1))}/{_snake(m.group(2))}", m.group(3))
        elif m := _DLP_SUMMARY.fullmatch(line):
            what = m.group(1).lower()
            _put(out, f"{what}_dirty_log_total", m.group(2))
            _put(out, f"{what}_dirty_log_avg", m.group(3))
    return out


# --- access_tracking_perf_test ---------------------------------------------------------

#: ``pr_info("%-30s: %ld.%09lds\n", description, ...)``; the label may be padded.
_AT_STAGE = re.compile(rf"([A-Z][A-Za-z ()_-]*): {_S}")


def _access_tracking_section(text: str) -> Metrics:
    """6.16's ``(page_idle)`` label is dropped, so ``mark_memory_idle`` compares with older
    kernels; ``(lru_gen)`` is kept (``mark_memory_idle_lru_gen``): another mechanism with
    another cost. The idle marking runs twice: the second is ``mark_memory_idle_2``."""
    out: Metrics = {}
    seen: dict[str, int] = {}
    for line in _lines(text):
        m = _AT_STAGE.fullmatch(line)
        if not m:
            continue
        name = _snake(m.group(1).rstrip().replace("(page_idle)", ""))
        seen[name] = seen.get(name, 0) + 1
        _put(out, name if seen[name] == 1 else f"{name}_{seen[name]}", m.group(2))
    return out


# --- demand_paging_test -------------------------------------------------------------

_DP_TOTAL = re.compile(rf"Total guest execution time:\s+{_S}")
_DP_PER_VCPU = re.compile(rf"Per-vcpu demand paging rate:\s+{_NUM} pgs/sec/vcpu")
_DP_OVERALL = re.compile(rf"Overall demand paging rate:\s+{_NUM} pgs/sec")


def _demand_paging_section(text: str) -> Metrics:
    """Rates are not comparable across versions: until ~6.4 the nanoseconds were divided
    by 1e8 (fractions of a second counted tenfold, rates too low), and since 6.10
    "overall" is vCPU 0's rate times the vCPUs."""
    out: Metrics = {}
    for line in _lines(text):
        if m := _DP_TOTAL.fullmatch(line):
            _put(out, "total_guest_execution", m.group(1))
        elif m := _DP_PER_VCPU.fullmatch(line):
            _put(out, "per_vcpu_demand_paging_rate_pgs_per_s", m.group(1))
        elif m := _DP_OVERALL.fullmatch(line):
            _put(out, "overall_demand_paging_rate_pgs_per_s", m.group(1))
    return out


# --- max_guest_memory_test / mmu_stress_test ----------------------------------------------

_MGM_FIELD = rf"\w+ = +{_S}"
_MGM_LINE = re.compile(rf"run1 = +{_S}(?:, {_MGM_FIELD})*")
_MGM_FIELDS = re.compile(rf"(?:^|, )(\w+) = +{_S}")


def _max_guest_memory(text: str) -> Metrics:
    """``run1``, ``reset``, ``run2`` (+ 6.14's ``ro``, ``rw``): one line, whole or nothing."""
    out: Metrics = {}
    for line in _lines(text):
        if _MGM_LINE.fullmatch(line):
            for key, value in _MGM_FIELDS.findall(line):
                _put(out, _snake(key), value)
    return out


# --- memslot_perf_test --------------------------------------------------------------------

_MS_TEST = re.compile(r"Testing (.+?) performance with \d+ runs, \d+ seconds each")
_MS_TOOK = re.compile(rf"Test took {_S} for slot setup \+ {_S} all iterations")
_MS_DONE = re.compile(rf"Done (\d+) iterations, avg {_S} each")
_MS_BEST = re.compile(rf"Best runtime result was {_S} per iteration \(with (\d+) iterations\)")
_MS_BEST_SETUP = re.compile(rf"Best slot setup time for the whole test area was {_S}")


def _memslot_perf(text: str) -> Metrics:
    """Per sub-test (``map``, ``unmap``, ``move_active_area`` ... ``rw``) and run:
    ``<test>/run_<k>/slot_setup``, ``.../guest_runtime`` (all iterations),
    ``.../completed_iterations``, ``.../iteration_avg``; then the best run's
    ``<test>/best_iteration_avg`` and ``<test>/best_completed_iterations``, and the overall
    ``best_slot_setup``. A run that printed "Memslot count too high" has no metrics (see
    ``output_checks``)."""
    out: Metrics = {}
    test: str | None = None
    run = 0
    for line in _lines(text):
        if m := _MS_TEST.fullmatch(line):
            test, run = _snake(m.group(1)), 0
        elif m := _MS_BEST_SETUP.fullmatch(line):
            _put(out, "best_slot_setup", m.group(1))
        elif test is None:
            continue  # the head was cut off: nothing to attribute these lines to
        elif m := _MS_TOOK.fullmatch(line):
            run += 1
            _put(out, f"{test}/run_{run}/slot_setup", m.group(1))
            _put(out, f"{test}/run_{run}/guest_runtime", m.group(2))
        elif (m := _MS_DONE.fullmatch(line)) and run:
            _put(out, f"{test}/run_{run}/completed_iterations", m.group(1))
            _put(out, f"{test}/run_{run}/iteration_avg", m.group(2))
        elif m := _MS_BEST.fullmatch(line):
            _put(out, f"{test}/best_iteration_avg", m.group(1))
            _put(out, f"{test}/best_completed_iterations", m.group(2))
    return out


# --- dirty_log_test -------------------------------------------------------------------------

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
    for line in _lines(text):
        if m := _DL_BITS.fullmatch(line):
            for word, raw in zip(("dirty", "clear", "track_next"), m.groups()):
                if raw is not None:
                    _put(out, f"{word}_bits_checked", raw)
        elif m := _DL_DIRTIED.fullmatch(line):
            _put(out, "dirtied_pages", m.group(1))
        elif m := _DL_COLLECTED.fullmatch(line):
            _put(out, f"iteration_{int(m.group(1))}/collected_pages", m.group(2), add=True)
        elif m := _DL_ITERATION.fullmatch(line):
            prefix = f"iteration_{int(m.group(1))}"
            _put(out, f"{prefix}/dirty_pages", m.group(2))
            _put(out, f"{prefix}/clean_pages", m.group(3))
            if m.group(4) is not None:
                _put(out, f"{prefix}/writes", m.group(4))
    return out


#: ``-M all`` runs each log mode in turn, each with its own guest-mode sections. Only
#: ``-M all`` prints ``Testing Log Mode``, so one such line is enough to prefix: output
#: cut short after the first mode keeps the names the whole run has.
_dirty_log = _sectioned(
    per_mode(_dirty_log_section), _DL_LOG_MODE, lambda m, i: _snake(m.group("mode")) or f"log_mode{i}", 1
)

PARSERS: dict[str, Parser] = {
    "kvm_page_table_test": per_mode(_page_table_section),
    "dirty_log_perf_test": per_mode(_dirty_log_perf_section),
    "access_tracking_perf_test": per_mode(_access_tracking_section),
    "demand_paging_test": per_mode(_demand_paging_section),
    "max_guest_memory_test": _max_guest_memory,
    "mmu_stress_test": _max_guest_memory,
    "memslot_perf_test": _memslot_perf,
    "dirty_log_test": _dirty_log,
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
