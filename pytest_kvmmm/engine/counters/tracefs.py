"""Which tracepoints this host offers, and their perf ids: tracefs, read under a root.

Pure apart from reading files under ``root`` (``/`` live, a fake root in tests). A counter
is named ``subsys:event``; an arm64 guest-fault class adds its class in brackets
(``kvm:kvm_guest_fault[translation]``: the same tracepoint with a perf filter on the ESR).

tracefs is mounted at ``/sys/kernel/tracing`` on most distributions, or only reachable as
``/sys/kernel/debug/tracing`` (older ones, with debugfs mounted). A directory there that is
not a tracefs mount (per ``/proc/self/mounts``) is never read: as root, an ``id`` file
someone else wrote would point a counter at another event.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ...host.sysfs import rooted

#: Where tracefs is looked for, in this order.
TRACEFS_DIRS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
MOUNTS = "/proc/self/mounts"
_NAME = re.compile(r"[a-z0-9_]+:[a-z0-9_*?]+(?:\[[a-z_]+\])?")
_MAX_ID_BYTES = 32


@dataclass(frozen=True)
class Tracefs:
    """A tracefs found under ``root`` (``path`` as on the host), or why none was."""

    root: Path
    path: str | None
    problem: str = ""

    def events_dir(self) -> Path | None:
        return None if self.path is None else rooted(self.root, self.path) / "events"


def mounted_tracefs(root: Path) -> list[str]:
    """Mount points of tracefs, from ``/proc/self/mounts`` under ``root`` (bounded read)."""
    try:
        with rooted(root, MOUNTS).open(errors="replace") as f:
            text = f.read(1 << 20)
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[2] == "tracefs":
            out.append(parts[1].replace("\\040", " "))
    return out


def find_tracefs(root: Path) -> Tracefs:
    """The first usable tracefs; the problem names what to do when there is none.

    Looking below ``/sys/kernel/debug/tracing`` first makes the kernel automount tracefs there
    (where debugfs is mounted), so it shows in the mount table (a ``stat`` of the directory
    itself does not trigger an automount)."""
    for path in TRACEFS_DIRS:
        (rooted(root, path) / "events").is_dir()
    mounts = set(mounted_tracefs(root))
    for path in TRACEFS_DIRS:
        if path in mounts:
            events = rooted(root, path) / "events"
            if events.is_dir():
                return Tracefs(root, path)
            return Tracefs(root, None, f"{path}/events is not readable (are you root?)")
    return Tracefs(
        root,
        None,
        "tracefs is not mounted (mount -t tracefs nodev /sys/kernel/tracing, "
        "or let the plugin do it for the run with --kvm-allow-host-changes)",
    )


@dataclass(frozen=True)
class EventIds:
    """The tracepoints of one host: ``subsys:event`` -> perf id (``events/<subsys>/<event>/id``)."""

    ids: Mapping[str, int] = field(default_factory=dict)

    def matching(self, pattern: str) -> list[str]:
        """Names matching ``pattern`` (``kvmmmu:*``), sorted; an exact name is itself or nothing."""
        if any(c in pattern for c in "*?"):
            return sorted(n for n in self.ids if fnmatch.fnmatchcase(n, pattern))
        return [pattern] if pattern in self.ids else []


def read_ids(events: Path, subsystems: Iterable[str]) -> EventIds:
    """The ids of every event of ``subsystems`` that has one (a bounded read per file)."""
    ids: dict[str, int] = {}
    for subsys in sorted(set(subsystems)):
        directory = events / subsys
        try:
            entries = sorted(p for p in directory.iterdir() if p.is_dir())
        except OSError:
            continue
        for entry in entries:
            value = _read_id(entry / "id")
            if value is not None:
                ids[f"{subsys}:{entry.name}"] = value
    return EventIds(ids)


def _read_id(path: Path) -> int | None:
    try:
        with path.open("rb") as f:
            raw = f.read(_MAX_ID_BYTES)
    except OSError:
        return None
    text = raw.decode("ascii", errors="replace").strip()
    return int(text) if text.isdigit() else None


def valid_name(name: str) -> bool:
    """``subsys:event`` (globs allowed in the event), optionally with a ``[class]``."""
    return bool(_NAME.fullmatch(name))


def split_class(name: str) -> tuple[str, str | None]:
    """``kvm:kvm_guest_fault[translation]`` -> (``kvm:kvm_guest_fault``, ``translation``)."""
    if name.endswith("]") and "[" in name:
        base, _, cls = name[:-1].partition("[")
        return base, cls
    return name, None


def subsystems(names: Sequence[str]) -> set[str]:
    return {split_class(n)[0].split(":", 1)[0] for n in names}
