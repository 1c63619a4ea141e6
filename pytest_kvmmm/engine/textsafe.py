"""Selftest output made safe to show: no terminal control sequences, bounded size, binary named.

Pure, and the one place that turns untrusted output into the text of a reason or a detail
(terminal, ``--kvm-results``, JUnit, Allure). A selftest is not hostile on purpose, but a
crashed one prints garbage, a confused one prints a megabyte on one line, and an escape
sequence in a reason would redraw the terminal of whoever reads the run's summary. The
full output stays attached where it is attached (Allure); what is *shown* is at most
``MAX_LINES`` lines of at most ``MAX_WIDTH`` characters.

Every function here runs in time linear in its input: the one regular expression matches
escape sequences whose every part is greedy and optional after the introducer, so a match
never has to be retried from a later point of the same sequence. ``lines_with`` finds the
lines holding a fixed string with ``str.find``, so parsers can look at a few candidate
lines instead of matching patterns against megabytes.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

#: Characters of one shown line; the rest is replaced by a count.
MAX_WIDTH = 240
#: Lines of a shown detail block (output tail, assertion block).
MAX_LINES = 40
#: A line longer than this is no line any selftest prints on purpose: parsers skip it.
MAX_PARSE_LINE = 1024

_ESCAPES = re.compile(
    "\x1b\\[[0-?]*[ -/]*[@-~]?"  # CSI: colours, cursor moves, clear screen
    "|\x9b[0-?]*[ -/]*[@-~]?"  # 8-bit CSI
    "|\x1b[\\]PX^_][^\x07\x1b\x9c]*(?:\x07|\x1b\\\\|\x9c)?"  # OSC, DCS, SOS, PM, APC (titles, links)
    "|\x1b[ -/]*[0-~]?"  # any other escape (charset switches, keypad modes, RIS)
)
#: C0 controls but tab and newline, DEL, C1 controls; Unicode bidirectional overrides and
#: isolates, which reorder what a reader sees (CVE-2021-42574).
_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
#: What marks text as not text: NUL, other controls but whitespace, undecodable bytes.
_NON_TEXT = re.compile("[\x00-\x08\x0e-\x1f\x7f\ufffd]")
#: A run of blanks folded to one space in a shown line. Shorter runs are kept: the kernel
#: writes "No such file or directory.  Is KVM loaded" with two.
_BLANKS = re.compile("[ \t]{8,}")
#: Sample taken to judge whether a stream is text (as git judges a file binary).
_SAMPLE = 8192


def clean(text: str) -> str:
    """``text`` without escape sequences and control characters; ``\\r`` ends a line."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return _CONTROLS.sub("", _ESCAPES.sub("", text))


def is_binary(text: str) -> bool:
    """Whether ``text`` (bytes decoded with ``errors="replace"``) is not text: a NUL in it, or
    more than a tenth of non-printables in its first and last ``_SAMPLE`` characters."""
    if "\x00" in text:
        return True
    sample = text if len(text) <= 2 * _SAMPLE else text[:_SAMPLE] + text[-_SAMPLE:]
    return bool(sample) and len(_NON_TEXT.findall(sample)) * 10 > len(sample)


def byte_count(text: str) -> int:
    """About how many bytes ``text`` was: each U+FFFD stood for one undecodable byte."""
    return len(text.encode("utf-8", errors="replace")) - 2 * text.count("\ufffd")


def binary_summary(text: str) -> str:
    return f"binary output, {byte_count(text)} bytes"


def _cut(one: str, width: int, total: int) -> str:
    """``one`` cut to ``width``; ``total`` is the length of the line it came from."""
    if total <= width:
        return one
    return one[:width].rstrip() + f" [... {total} characters in all]"


def line(text: str, width: int = MAX_WIDTH) -> str:
    """One shown line: clean, stripped, newlines as `` | ``, at most ``width`` characters
    (plus a note of the length); a run of 8 blanks or more is one space (a padded column, a
    line of spaces). Binary text is named, not shown."""
    if is_binary(text):
        return binary_summary(text)
    text = _BLANKS.sub(" ", text.strip())
    head = text[: width * 4]  # the rest is never shown, so never cleaned
    out = " | ".join(p for p in (s.strip() for s in clean(head).split("\n")) if p)
    return _cut(out, width, len(out) if len(head) == len(text) else len(text))


def last_lines(text: str, chars: int) -> list[str]:
    """The lines of the last ``chars`` characters of ``text``: the first, cut, is left out,
    unless it is all there is (a last line longer than ``chars`` is shown by its end)."""
    if len(text) <= chars:
        return text.split("\n")
    lines = text[-chars:].split("\n")
    return lines[1:] if any(lines[1:]) else lines


def block(text: str, max_lines: int = MAX_LINES, width: int = MAX_WIDTH, *, keep: str = "tail") -> str:
    """A shown block: at most ``max_lines`` clean lines of at most ``width`` characters, the
    last ones (``keep="tail"``) or the first ones (``"head"``), and a line saying how many
    were left out. Only the end (start) that can be shown is cleaned and split; the lines
    before it are counted in C. Trailing blank lines are dropped. Binary text is named."""
    if is_binary(text):
        return binary_summary(text)
    text = text.rstrip()
    budget = (max_lines + 1) * (width + 1) * 4
    tail = keep == "tail"
    longest = 0  # the length of a line longer than the window, shown by one end
    if len(text) <= budget:
        lines, unseen = text.split("\n"), 0
    elif tail:  # a line cut at the window's start is left out, unless it is the only one
        part = text[-budget:].split("\n")
        whole = any(part[1:])
        lines = part[1:] if whole else part
        unseen = text.count("\n", 0, len(text) - budget) + whole
        longest = 0 if whole else len(text) - text.rfind("\n", 0, len(text) - budget) - 1
    else:
        part = text[:budget].split("\n")
        lines = part[:-1] if len(part) > 1 else part
        unseen = text.count("\n", budget) + (len(part) > 1)
        first_end = text.find("\n")
        longest = 0 if len(part) > 1 else (len(text) if first_end < 0 else first_end)
    lines = [ln.rstrip() for ln in clean("\n".join(lines)).split("\n")]
    left = unseen + max(len(lines) - max_lines, 0)
    lines = lines[-max_lines:] if tail else lines[:max_lines]
    shown = [_cut(ln, width, len(ln)) for ln in lines]
    if longest and shown:  # the only line of a tail window, the first of a head window
        shown[0] = _cut(lines[0], width, max(longest, len(lines[0]) + 1))
    if not left:
        return "\n".join(shown)
    note = f"[... {left} {'earlier' if tail else 'further'} line{'s' if left > 1 else ''} left out ...]"
    return "\n".join([note, *shown] if tail else [*shown, note])


def lines_with(text: str, *needles: str, reverse: bool = False) -> Iterator[str]:
    """Each whole line of ``text`` that contains one of ``needles``, once, in order (last
    first with ``reverse``, for one needle). Linear: each needle is searched for from where
    the line before ended, never from the start again."""
    if reverse:
        (needle,) = needles
        end = len(text)
        while (i := text.rfind(needle, 0, end)) >= 0:
            start = text.rfind("\n", 0, i) + 1
            stop = text.find("\n", i)
            yield text[start : len(text) if stop < 0 else stop]
            end = start
        return
    pos = 0
    hits = {needle: text.find(needle) for needle in needles}
    while True:
        for needle, at in hits.items():
            if 0 <= at < pos:
                hits[needle] = text.find(needle, pos)
        i = min((at for at in hits.values() if at >= 0), default=-1)
        if i < 0:
            return
        start = text.rfind("\n", 0, i) + 1
        stop = text.find("\n", i)
        stop = len(text) if stop < 0 else stop
        yield text[start:stop]
        pos = stop + 1
