"""Metrics from selftest output: pure text in, ``{name: number}`` out.

One parser per binary, looked up by name (aliases share a parser). Times are seconds.
The formats are those of ``pr_info`` in the selftests (``%ld.%.9lds``), unchanged from
6.1 to 6.16 for the page-table test.

When a binary runs several guest modes in one invocation (no ``-m`` on arm64), each
section starts with ``Testing guest mode: ...``; its metrics are then named
``<mode>/<metric>`` with the mode's stable name (``p40v48_4k``). With a single section
the names stay plain, so x86 and single-mode runs read ``KVM_CREATE_MAPPINGS``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Callable

Metrics = dict[str, float]
Parser = Callable[[str], Metrics]

_MODE_LINE = re.compile(r"^Testing guest mode: (?P<mode>PA-bits:.*?)\s*$", re.MULTILINE)
_MODE_STRING = re.compile(
    r"PA-bits:\s*(?P<pa>ANY|\d+),\s*VA-bits:\s*(?P<va>\d+(?: or \d+)?),\s*(?P<page>\d+)K pages"
)


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


def _sections(text: str) -> Iterator[tuple[str | None, str]]:
    """Split output at ``Testing guest mode:`` lines; yields (mode name or None, section text)."""
    marks = list(_MODE_LINE.finditer(text))
    if len(marks) <= 1:
        yield None, text
        return
    for i, m in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        mode = guest_mode_name(m.group("mode")) or f"mode{i}"
        yield mode, text[m.start():end]


def per_mode(parse_section: Parser) -> Parser:
    """Apply a section parser to each guest-mode section, prefixing names when there are several."""

    def parse(text: str) -> Metrics:
        out: Metrics = {}
        for mode, section in _sections(text):
            for name, value in parse_section(section).items():
                out[f"{mode}/{name}" if mode else name] = value
        return out

    return parse


_PAGE_TABLE_STAGE = re.compile(
    r"^(?P<stage>KVM_(?:CREATE|UPDATE|ADJUST)_MAPPINGS): total execution time: (?P<s>\d+\.\d+)s\s*$",
    re.MULTILINE,
)


def _page_table_section(text: str) -> Metrics:
    return {m.group("stage"): float(m.group("s")) for m in _PAGE_TABLE_STAGE.finditer(text)}


PARSERS: dict[str, Parser] = {
    "kvm_page_table_test": per_mode(_page_table_section),
}


def parse_metrics(binary: str, stdout: str) -> Metrics:
    """The metrics of ``binary``'s output; ``{}`` for binaries without a parser or on garbage."""
    parser = PARSERS.get(binary)
    if parser is None:
        return {}
    try:
        return parser(stdout)
    except (ValueError, IndexError):  # a truncated or garbled number is not a metric
        return {}
