"""What a host-change journal read back from disk may make the plugin do: input, not instructions.

A journal left by a killed session is replayed, as root, by the next one. Whoever could write
it could otherwise make root write a chosen value to a chosen path. So an entry is replayed
only when its path is one of the exact files the plugin itself changes, and its values parse
as that kind of change requires; ``problem`` says why any other entry is left alone. Pure:
no I/O (the ownership of the file is checked where it is read, ``safefs.read_private``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

#: The files the plugin changes, by kind of change (paths as on the host, under any root).
PATHS: Mapping[str, tuple[re.Pattern[str], ...]] = {
    "hugetlb": (
        re.compile(r"/sys/kernel/mm/hugepages/hugepages-[1-9][0-9]{0,9}kB/nr_hugepages"),
        re.compile(r"/sys/devices/system/node/node(?:0|[1-9][0-9]{0,4})/hugepages/hugepages-[1-9][0-9]{0,9}kB/nr_hugepages"),
    ),
    "thp": (re.compile(r"/sys/kernel/mm/transparent_hugepage/enabled"),),
    "param": (re.compile(r"/sys/module/kvm[A-Za-z0-9_]{0,32}/parameters/[A-Za-z0-9_]{1,64}"),),
    "mount": (re.compile(r"/sys/kernel/tracing"),),  # --kvm-counters' tracefs
    # a parameter set by reloading its module (modreload.py): KVM's modules only
    "module": (re.compile(r"/sys/module/kvm[A-Za-z0-9_]{0,32}/parameters/[A-Za-z0-9_]{1,64}"),),
}
#: What a "mount" change may have mounted: unmounting anything else is not ours to do.
MOUNT_TYPES = ("tracefs",)
THP_VALUES = ("always", "madvise", "never")
#: A module parameter value the plugin reads and writes back: one short token, no spaces.
PARAM_VALUE = re.compile(r"[A-Za-z0-9_.,:+-]{1,64}")
#: Pages added by one change: more than any machine has.
MAX_PAGES = 1 << 40
#: How many reasons one report line names.
REPORT_REASONS = 4


def problem(entry: Any, fields: Sequence[str]) -> str | None:
    """Why ``entry`` (one decoded journal entry) must not be replayed, or None when it may.

    ``fields`` are the keys a journal entry may have (``Change``'s fields).
    """
    if not isinstance(entry, dict):
        return f"an entry that is not an object ({type(entry).__name__})"
    unknown = sorted(str(k) for k in entry if k not in fields)
    if unknown:
        return f"an entry with unknown keys {', '.join(unknown)[:80]}"
    kind, path = entry.get("kind"), entry.get("path")
    if not isinstance(path, str) or not isinstance(kind, str):
        return "an entry without a kind and a path"
    if kind not in PATHS:
        return f"an unknown kind of change {kind[:40]!r}"
    if len(path) > 200 or not any(p.fullmatch(path) for p in PATHS[kind]):
        return f"{path[:120]!r} is not a file pytest-kvmmm changes ({kind})"
    return _values_problem(kind, entry)


def _values_problem(kind: str, entry: Mapping[str, Any]) -> str | None:
    added, old, new = entry.get("added", 0), entry.get("old", ""), entry.get("new", "")
    if not isinstance(added, int) or isinstance(added, bool) or not 0 <= added <= MAX_PAGES:
        shown = added if isinstance(added, int) and not isinstance(added, bool) else repr(added)[:40]
        return f"{entry['path']}: added pages {shown} is not a page count"
    if not isinstance(old, str) or not isinstance(new, str):
        return f"{entry['path']}: old and new values that are not text"
    for key, value in entry.items():  # fields a later journal format may add: counts are never negative
        if isinstance(value, bool) or (isinstance(value, int) and not 0 <= value <= MAX_PAGES):
            return f"{entry['path']}: {key} {value!r} is not a page count"
        if not isinstance(value, (int, str)) or (isinstance(value, str) and len(value) > 200):
            return f"{entry['path']}: {key} is neither a count nor a short text"
    if kind == "hugetlb":
        if added <= 0:
            return f"{entry['path']}: added pages {added} is not a positive count"
        return None
    if added:
        return f"{entry['path']}: a {kind} change that adds pages"
    if kind == "mount":
        if old or new not in MOUNT_TYPES:
            return f"{entry['path']}: a mount of {new[:20]!r} is not one pytest-kvmmm makes"
        return None
    if kind == "thp":
        if old not in THP_VALUES or new not in THP_VALUES:
            return f"{entry['path']}: THP values {old[:20]!r} -> {new[:20]!r} are not {'/'.join(THP_VALUES)}"
        return None
    if not PARAM_VALUE.fullmatch(old) or not PARAM_VALUE.fullmatch(new):
        return f"{entry['path']}: parameter values {old[:20]!r} -> {new[:20]!r} are not plain values"
    return None


def report_line(reasons: Sequence[str]) -> str:
    """The one line that says what was not replayed, naming at most ``REPORT_REASONS`` reasons."""
    shown = "; ".join(reasons[:REPORT_REASONS])
    more = f"; and {len(reasons) - REPORT_REASONS} more" if len(reasons) > REPORT_REASONS else ""
    return f"host-change journal: not replayed, left as is: {shown}{more}"
