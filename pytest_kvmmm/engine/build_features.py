"""What a selftest build can do, read from the binary itself.

Versions do not answer it reliably: a user's own build has no version, and distributions
backport. The binary's strings do: a 6.16+ ``access_tracking_perf_test`` has an MGLRU path
and says ``lru_gen``; earlier ones only know page_idle.
"""

from __future__ import annotations

import functools
from pathlib import Path


def binary_mentions(path: Path, needle: bytes) -> bool | None:
    """Whether the binary at ``path`` contains ``needle``; None when it cannot be read."""
    try:
        st = path.stat()
    except OSError:
        return None
    return _mentions(str(path), st.st_mtime_ns, st.st_size, needle)


@functools.lru_cache(maxsize=64)
def _mentions(path: str, mtime_ns: int, size: int, needle: bytes) -> bool | None:
    """Cached per file version (path, mtime, size): a rebuilt binary is read again."""
    try:
        with open(path, "rb") as f:
            return needle in f.read()
    except OSError:
        return None


def has_mglru_aging(path: Path) -> bool | None:
    """``access_tracking_perf_test`` can age with MGLRU (6.16+: ``lib/lru_gen_util.c``)."""
    return binary_mentions(path, b"lru_gen")
