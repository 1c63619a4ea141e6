"""Sizes in bytes and the selftests' size text (``64M``, ``1G``): the host's facts are reported
with them and the suite builds its arguments with them, so they live at the bottom, here."""

from __future__ import annotations

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB


def parse_size(text: str) -> int:
    """``64M`` / ``1G`` / ``512K`` / ``4096`` -> bytes (the suffixes the selftests' ``parse_size`` takes)."""
    text = text.strip()
    units = {"K": KIB, "M": MIB, "G": GIB, "T": GIB * 1024}
    unit = units.get(text[-1:].upper())
    number = text[:-1] if unit else text
    if not number.isdigit():
        raise ValueError(f"not a size: {text!r} (use e.g. 64M, 1G)")
    return int(number) * (unit or 1)


def format_size(size: int) -> str:
    """Bytes -> the shortest exact selftest size argument (``1G``, ``64M``, ``4096``)."""
    for suffix, unit in (("G", GIB), ("M", MIB), ("K", KIB)):
        if size >= unit and size % unit == 0:
            return f"{size // unit}{suffix}"
    return str(size)
