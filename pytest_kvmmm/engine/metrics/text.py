"""What every metrics parser shares: complete output lines, numbers that parse, snake_case
names, and sections (one per guest mode, per log mode) whose metrics get their name as a
prefix. The patterns here and in the parsers run in time linear in the output (see
``engine/textsafe.py``)."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from typing import Callable

from ..textsafe import MAX_PARSE_LINE

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
S = r"(\d+\.\d{9})s"
#: ``%f`` and ``%lu``: digits only, so ``inf``, ``nan`` and ``1.2.3`` never match.
NUM = r"(\d+(?:\.\d+)?)"
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


def lines(text: str) -> Iterator[str]:
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


def snake(label: str) -> str:
    """``"Re-populating memory"`` -> ``"re_populating_memory"`` (lowercase ASCII words)."""
    return "_".join(re.findall(r"[a-z0-9]+", label.lower()))


def put(out: Metrics, name: str, raw: str | None, *, add: bool = False) -> None:
    """Store ``raw`` as a finite float under ``name``; anything else is no metric."""
    if raw is None:
        return
    try:
        value = float(raw)
    except ValueError:
        return
    if math.isfinite(value):
        out[name] = out.get(name, 0.0) + value if add else value


Namer = Callable[["re.Match[str]", int], str]


def split_at(text: str, marks: re.Pattern[str], name: Namer, least: int) -> Iterator[tuple[str | None, str]]:
    """Cut ``text`` at each match of ``marks``; with fewer than ``least``, one unnamed section."""
    found = list(marks.finditer(text))
    if len(found) < max(least, 1):
        yield None, text
        return
    for i, m in enumerate(found):
        end = found[i + 1].start() if i + 1 < len(found) else len(text)
        yield name(m, i), text[m.start():end]


def sectioned(parse_section: Parser, marks: re.Pattern[str], name: Namer, least: int = 2) -> Parser:
    """A parser applying ``parse_section`` to each section, names prefixed from ``least`` on."""

    def parse(text: str) -> Metrics:
        out: Metrics = {}
        for prefix, section in split_at(text, marks, name, least):
            for metric, value in parse_section(section).items():
                out[f"{prefix}/{metric}" if prefix else metric] = value
        return out

    return parse


def per_mode(parse_section: Parser) -> Parser:
    """Apply a section parser to each guest-mode section, prefixing names when there are several."""
    return sectioned(
        parse_section, _MODE_LINE, lambda m, i: guest_mode_name(m.group("mode")) or f"mode{i}"
    )
