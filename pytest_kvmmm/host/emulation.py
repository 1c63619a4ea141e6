"""Honest emulation: results from emulated hosts say so, and are never timed against real ones.

A kvmmm lab host (``kvmmm-lab``) runs under QEMU's TCG: its KVM is real code on an emulated
CPU, so its verdicts count but its timings measure the emulator. Its /init exports
``KVMMM_EMULATED=tcg``; every record of that host carries the host fact ``emulated: tcg``.
A before/after whose two sides differ in that fact is refused (``baseline/``), and so is a
comparison of emulated timings: an emulated run is compared only with emulated runs of the
same kind of host.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

ENV = "KVMMM_EMULATED"
#: The ways a host can be emulated that the plugin knows; anything else is ignored (a stray
#: environment variable must not relabel a physical host's results arbitrarily).
KNOWN = ("tcg",)


def emulated_by(environ: Mapping[str, str] | None = None) -> str | None:
    """How this host is emulated ("tcg"), None for a real host (or a hardware-virtualized one)."""
    value = (os.environ if environ is None else environ).get(ENV, "").strip()
    return value if value in KNOWN else None
