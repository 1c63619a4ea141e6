"""Reading the small text files of sysfs and procfs under a root, with reasons instead of exceptions."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable, TypeVar

_BRACKETED = re.compile(r"\[([^\]]+)\]")
#: More CPUs or nodes than any machine has (NR_CPUS is at most 8192): a list beyond is not a host's.
MAX_IDS = 1 << 16


class Unreadable(Exception):
    """A fact's file is missing, unreadable or malformed; the message says which and why."""


def rooted(root: Path, path: str) -> Path:
    """``/sys/x`` under ``root`` (``root`` is ``/`` on the live host, a snapshot directory otherwise)."""
    return root / path.lstrip("/")


def read_text(root: Path, path: str) -> str:
    try:
        return rooted(root, path).read_text(errors="replace")
    except FileNotFoundError:
        raise Unreadable(f"{path} does not exist") from None
    except OSError as exc:
        raise Unreadable(f"cannot read {path}: {exc.strerror or exc}") from None


def read_int(root: Path, path: str) -> int:
    text = read_text(root, path).strip()
    try:
        return int(text, 0)
    except ValueError:
        raise Unreadable(f"{path}: expected a number, found {text[:40]!r}") from None


def selected_word(text: str) -> str | None:
    """The ``[selected]`` word of a THP-style setting's text, e.g. ``always [madvise] never`` -> madvise; None if none is."""
    m = _BRACKETED.search(text)
    return m.group(1) if m else None


def read_selected(root: Path, path: str) -> str:
    """The ``[selected]`` word of a THP-style setting, e.g. ``always [madvise] never`` -> madvise."""
    text = read_text(root, path)
    word = selected_word(text)
    if word is None:
        raise Unreadable(f"{path}: no [selected] value in {text.strip()[:60]!r}")
    return word


def rw_open_error(path: Path) -> str | None:
    """Why this process cannot open ``path`` read-write (the error's text), or None when it can.

    Meaningful on the live host only: a snapshot keeps the answer in the owner-write bit.
    """
    try:
        os.close(os.open(path, os.O_RDWR))
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def parse_meminfo(text: str) -> dict[str, int]:
    """``/proc/meminfo`` as bytes (``kB`` lines) or counts (``HugePages_*``)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if not parts or not parts[0].isdigit():
            continue
        value = int(parts[0])
        out[key.strip()] = value * 1024 if parts[1:2] == ["kB"] else value
    return out


def parse_id_list(text: str) -> tuple[int, ...]:
    """The ids in a kernel list such as ``0-3,8,10-11`` (CPUs, NUMA nodes); Unreadable if malformed."""
    ids: list[int] = []
    for part in text.strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        try:
            first, last = int(lo), int(hi or lo)
        except ValueError:
            raise Unreadable(f"expected a list such as 0-3,8, found {text.strip()[:40]!r}") from None
        if last < first:
            raise Unreadable(f"expected a list such as 0-3,8, found {text.strip()[:40]!r}")
        if len(ids) + last - first + 1 > MAX_IDS:  # checked before expanding: memory stays bounded
            raise Unreadable(
                f"{len(ids) + last - first + 1} ids in {text.strip()[:40]!r}: more than any machine has (at most {MAX_IDS})"
            )
        ids.extend(range(first, last + 1))
    return tuple(ids)


def parse_cpu_list(text: str) -> int:
    """Number of CPUs in a list such as ``0-3,8,10-11``; Unreadable if malformed."""
    return len(parse_id_list(text))


T = TypeVar("T")


class FactReader:
    """Reads facts under one root and remembers why each unreadable one is unknown.

    ``live`` is True when the root is the running host's ``/``: only then do access checks
    (``os.access``, opening a file read-write) mean anything.
    """

    def __init__(self, root: Path, live: bool) -> None:
        self.root = root
        self.live = live
        self.unknown: dict[str, str] = {}

    def get(self, fact: str, read: Callable[[], T]) -> T | None:
        try:
            return read()
        except Unreadable as exc:
            self.unknown[fact] = str(exc)
            return None

    def text(self, path: str) -> str:
        return read_text(self.root, path)

    def int(self, path: str) -> int:
        return read_int(self.root, path)

    def selected(self, path: str) -> str:
        return read_selected(self.root, path)

    def path(self, path: str) -> Path:
        return rooted(self.root, path)

    def writable(self, path: str) -> bool:
        """Whether this process could write the file; a snapshot keeps the answer in the owner-write bit.

        ``os.access`` alone is not enough: it says yes to root for a 0444 sysfs file, whose
        open for writing still fails with EACCES (a read-only module parameter has no store
        method). So the mode must carry a write bit too.
        """
        p = rooted(self.root, path)
        try:
            mode = p.stat().st_mode
        except OSError:
            return False
        if not self.live:
            return bool(mode & 0o200)
        return bool(mode & 0o222) and os.access(p, os.W_OK)
