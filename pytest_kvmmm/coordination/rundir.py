"""The directory an xdist run's workers share on one machine: where it is, who made it, when it goes.

Workers of one run (xdist's ``testrunuid``) that look at the same host share a directory under
``$TMPDIR``: the hugetlb ledger, the perf lock and the probed host facts live there. ``/tmp``
is shared with every user, so the directory is created by the run with mode 0700, and one that
already exists is used only when it is ours, private and not a link (``safefs.private_dir``):
someone else's directory there stops the run. The controller removes the run's directories
on this machine when the run ends.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock

from ..host.model import HostFacts
from .safefs import private_problem, read_private, replace_file

PREFIX = "pytest-kvmmm-"
FACTS = "host-facts.json"
FACTS_LIMIT = 4 << 20


def run_dir(testrunuid: str, host_source: str) -> Path:
    """The run directory of workers of run ``testrunuid`` on this machine that look at
    ``host_source`` ("/" or a snapshot): named without probing anything."""
    key = hashlib.sha1(f"{socket.gethostname()}\0{host_source}".encode()).hexdigest()[:12]
    uid = "".join(c for c in testrunuid if c.isalnum())[:64] or "run"
    return Path(tempfile.gettempdir()) / f"{PREFIX}{uid}-{key}"


def run_dir_problem(testrunuid: str, host_source: str) -> str | None:
    """Why the run directory that exists already cannot be used (a link, someone else's, open to
    others), or None (also when it does not exist yet)."""
    path = run_dir(testrunuid, host_source)
    try:
        problem = private_problem(os.lstat(path), want_dir=True)
    except FileNotFoundError:
        return None
    return f"refusing to use {path}: it {problem}" if problem else None


def remove_run_dirs(testrunuid: str) -> list[Path]:
    """Remove the run's directories on this machine that are ours (never a link, never another
    user's); returns what was removed."""
    uid = "".join(c for c in testrunuid if c.isalnum())[:64] or "run"
    removed = []
    for path in Path(tempfile.gettempdir()).glob(f"{PREFIX}{uid}-*"):
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def shared_probe(directory: Path | None, probe: Callable[[], HostFacts]) -> HostFacts:
    """The host's facts, probed once per run directory: the first worker that needs them probes
    (opening /dev/kvm, a scratch VM) and leaves them there for the others; without a run
    directory (no xdist), ``probe()``."""
    if directory is None:
        return probe()
    path = directory / FACTS
    with FileLock(str(directory / "facts.lock")):
        try:
            return HostFacts.from_json(json.loads(read_private(path, FACTS_LIMIT)))
        except FileNotFoundError:
            pass
        except (OSError, ValueError, TypeError, KeyError):
            pass  # damaged: probe again
        facts = probe()
        replace_file(path, json.dumps(facts.to_json()), mode=0o600)
        return facts
