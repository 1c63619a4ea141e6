"""Sharing one host between the xdist workers of a run: timing-sensitive tests.

Timing-sensitive (``perf``) tests must not share the host with any other selftest: a
readers-writer lock on a file (``flock``) lets functional tests run together (shared)
and a perf test alone (exclusive). Every taker first passes a turnstile, so a stream of
functional tests cannot starve a waiting perf test. The run's workers share a run
directory (keyed by xdist's ``testrunuid``) for these locks.

Hugetlb pages are shared host-wide, across runs, by ``hostwide.py``.

Locks die with their process (flock), so a killed worker never blocks the others.
"""

from __future__ import annotations

import contextlib
import fcntl
import time
from collections.abc import Iterator
from pathlib import Path

from .safefs import private_dir


class HostCoordinator:
    """One run's shared state on this host: the perf lock."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = private_dir(run_dir)  # 0700, ours, not a link: else UnsafePath stops the run
        self._holding = False

    @contextlib.contextmanager
    def host(self, exclusive: bool) -> Iterator[float]:
        """Shared (functional) or exclusive (perf) use of the host; yields the seconds waited.

        Re-entrant in a process: a test that holds the host (it changed a module parameter)
        runs its selftests inside that hold instead of deadlocking on its own flock.
        """
        if self._holding:
            yield 0.0
            return
        t0 = time.monotonic()
        with open(self.run_dir / "turnstile.lock", "w") as turnstile, open(self.run_dir / "host.lock", "w") as lock:
            fcntl.flock(turnstile, fcntl.LOCK_EX)
            try:
                fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            finally:
                fcntl.flock(turnstile, fcntl.LOCK_UN)
            self._holding = True
            try:
                yield time.monotonic() - t0
            finally:
                self._holding = False
                fcntl.flock(lock, fcntl.LOCK_UN)
