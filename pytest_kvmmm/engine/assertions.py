"""``==== Test Assertion Failure ====`` blocks: found, split into parts, one chosen, summarised.

Pure, and linear in the output. ``test_assert()`` (``tools/testing/selftests/kvm/lib/assert.c``)
writes, on an unbuffered stderr:

1. the banner, ``  file.c:LINE: expression`` and ``  pid=P tid=T errno=E - text`` in *one*
   ``fprintf``, so these three lines always stay together;
2. the stack, by ``system("addr2line -s -e /proc/$PPID/exe -fpai ADDRS | cat -n 1>&2")``:
   numbered frames ``     1\\t0x...: fn at file.c:12`` and ``(inlined by)`` lines, or
   ``  (stack trace empty)``, and addr2line's own complaints (``addr2line: DWARF error ...``,
   ``sh: 1: addr2line: not found``), none of which says what failed;
3. the message, ``  `` + the format + ``\\n`` in three writes, then ``exit(254)``.

When several vCPU threads assert at once their parts interleave (tests/golden
``max_guest_memory_test.no_gbpages``: two headers, two stacks, one message). A header is
never torn, so each banner starts a block; lines after it are that block's until the next
banner. The block shown is the last one holding a message of its own (its header and
message belong together), else the last one.

Bounded: only the last ``MAX_BLOCKS`` banners are looked at, each through at most
``WINDOW`` characters of its start and of its end, and lines longer than
``textsafe.MAX_PARSE_LINE`` are never matched against a pattern.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from . import textsafe

BANNER = "==== Test Assertion Failure ===="
#: Banners looked at, from the last one back: more threads than this never assert at once.
MAX_BLOCKS = 16
#: Characters read from the start and from the end of one block.
WINDOW = 8192
#: Frames and message lines kept in a rendered block.
MAX_FRAMES = 24
MAX_MESSAGE = 8

#: ``cat -n`` numbering, then ``0x...:`` (``-a``) or ``(inlined by)`` (``-i``); the number,
#: the blanks and the address use disjoint characters, so the match cannot backtrack.
_FRAME = re.compile(r"[ \t]*\d+[ \t]+(?:0x[0-9a-fA-F]+:|\(inlined by\))")
_THREAD = re.compile(r"pid=\d+ tid=\d+")


@dataclass(frozen=True)
class Assertion:
    """One thread's block: where it failed, which thread, its stack and its message."""

    where: str  # "lib/kvm_util.c:1000: region->mmap_start != MAP_FAILED"
    thread: str  # "pid=1234 tid=1234 errno=12 - Cannot allocate memory"
    frames: tuple[str, ...]
    message: tuple[str, ...]

    @property
    def summary(self) -> str:
        """``where: last message line``, or ``where`` alone; noise and frames never appear."""
        if not self.where:
            return self.message[-1] if self.message else "assertion failed"
        return f"{self.where}: {self.message[-1]}" if self.message else self.where

    def render(self, others: int = 0) -> str:
        """The block as shown: banner, header, at most ``MAX_FRAMES`` frames, the message."""
        lines = [BANNER, *(f"  {part}" for part in (self.where, self.thread) if part)]
        lines += list(self.frames[:MAX_FRAMES])
        if len(self.frames) > MAX_FRAMES:
            lines.append(f"  [... {len(self.frames) - MAX_FRAMES} more frames ...]")
        lines += [f"  {m}" for m in self.message[-MAX_MESSAGE:]]
        if others:
            lines.append(f"[{others} other assertion block{'s' if others > 1 else ''} of other threads; see the full output]")
        return "\n".join(lines)


def _is_noise(line: str) -> bool:
    """addr2line's and the shell's own lines, and frames it could not resolve."""
    return "addr2line" in line or line.startswith(("BFD:", "?? ", "cat: ", "sh: "))


def _window_lines(text: str) -> list[str]:
    """The lines of ``text``, or of its first and last ``WINDOW`` characters when it is longer."""
    if len(text) <= 2 * WINDOW:
        return text.split("\n")
    head = text[:WINDOW].split("\n")
    return [*(head[:-1] or head), *textsafe.last_lines(text, WINDOW)]


def _parse_block(text: str) -> Assertion:
    """One block, banner excluded: the header lines, then frames, noise and message lines."""
    lines = _window_lines(text)
    where = thread = ""
    frames: list[str] = []
    message: list[str] = []
    for i, raw in enumerate(lines):
        stripped = raw.strip()
        if not stripped:
            continue
        if len(stripped) > textsafe.MAX_PARSE_LINE:
            message.append(stripped)
        elif i <= 1 and not where and not _FRAME.match(raw) and not _THREAD.match(stripped):
            where = stripped  # written with the banner: the line right after it
        elif not thread and _THREAD.match(stripped):
            thread = stripped
        elif _FRAME.match(raw) or stripped == "(stack trace empty)":
            frames.append(raw.rstrip())
        elif not _is_noise(stripped) and not stripped.startswith("===="):
            message.append(stripped)
    return Assertion(where, thread, tuple(frames), tuple(message))


def find_assertions(text: str) -> list[Assertion]:
    """The last ``MAX_BLOCKS`` assertion blocks of ``text``, in order."""
    starts: list[int] = []
    end = len(text)
    while len(starts) < MAX_BLOCKS and (i := text.rfind(BANNER, 0, end)) >= 0:
        starts.append(i)
        end = i
    starts.reverse()
    bounds = [*starts[1:], len(text)]
    return [_parse_block(text[s + len(BANNER) : e]) for s, e in zip(starts, bounds)]


def choose(blocks: list[Assertion]) -> Assertion | None:
    """The block to show: the last with a message of its own, else the last one."""
    with_message = [b for b in blocks if b.message and b.where]
    chosen = with_message or blocks
    return chosen[-1] if chosen else None


@dataclass(frozen=True)
class Report:
    """What a failure report shows of an output's assertion blocks."""

    summary: str  # one line, clean and bounded
    details: str  # the chosen block, clean and bounded


def report(stderr: str, stdout: str = "") -> Report | None:
    """The assertion report of a run (stderr first, where ``test_assert`` writes), or None."""
    for text in (stderr, stdout):
        if BANNER not in text:
            continue
        blocks = find_assertions(text)
        chosen = choose(blocks)
        if chosen is None:
            continue
        others = text.count(BANNER) - 1
        return Report(
            textsafe.line(chosen.summary),
            textsafe.block(chosen.render(others), MAX_FRAMES + MAX_MESSAGE + 5, keep="head"),
        )
    return None
