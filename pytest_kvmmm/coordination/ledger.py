"""Sharing one host between the xdist workers of a run: hugetlb pages and timing-sensitive tests.

Hugetlb pools are host-wide: two workers that each need 512 free 2 MiB pages must not
both start on a pool of 600. Every worker of a run shares a run directory (keyed by
xdist's ``testrunuid``); a ledger there, under a file lock, grants pages against the pool
as it was when the run started, so grants never overcommit it. A test waits until its
share is free, or, when the pool could never hold it, is refused at once.

Timing-sensitive (``perf``) tests must not share the host with any other selftest: a
readers-writer lock on a file (``flock``) lets functional tests run together (shared)
and a perf test alone (exclusive). Every taker first passes a turnstile, so a stream of
functional tests cannot starve a waiting perf test.

Locks die with their process (flock, and grants of dead pids are dropped), so a killed
worker never blocks the others.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from filelock import FileLock

from .liveness import pid_alive
from .safefs import private_dir

POLL_S = 0.1


class NeverFits(Exception):
    """The request is larger than the pool could ever grant in this run; the message says so."""


class HostCoordinator:
    """One run's shared state on this host. ``budget`` is the usable pages per hugetlb size (kB)."""

    def __init__(self, run_dir: Path, budget: Mapping[int, int]) -> None:
        self.run_dir = private_dir(run_dir)  # 0700, ours, not a link: else UnsafePath stops the run
        self._ledger = run_dir / "hugetlb.json"
        self._budget_file = run_dir / "hugetlb-budget.json"
        self._holding = False
        self._lock = FileLock(str(run_dir / "hugetlb.lock"))
        with self._lock:
            if not self._budget_file.exists():  # the first worker of the run fixes the budget
                self._write_budget(budget)
            self.budget = self._read_budget()

    def _read_budget(self) -> dict[int, int]:
        """The run's budget (size kB -> usable pages); call it under ``self._lock``."""
        data = json.loads(self._budget_file.read_text())
        return {int(k): int(v) for k, v in data.items()}

    def _write_budget(self, budget: Mapping[int, int]) -> None:
        """Replace the run's budget; call it under ``self._lock``."""
        self._budget_file.write_text(json.dumps({str(k): v for k, v in budget.items()}))

    def add_budget(self, size_kb: int, pages: int) -> None:
        """The pool grew by ``pages`` (--kvm-allow-host-changes): every worker may use them."""
        with self._lock:
            budget = self._read_budget()
            budget[size_kb] = budget.get(size_kb, 0) + pages
            self._write_budget(budget)
            self.budget = budget

    def _grants(self) -> list[dict[str, Any]]:
        try:
            grants = json.loads(self._ledger.read_text())
        except (OSError, ValueError):
            return []
        return [g for g in grants if pid_alive(int(g["pid"]))]  # a killed worker's pages are free again

    def _try_grant(self, pages: Mapping[int, int], who: str) -> bool:
        with self._lock:
            self.budget = self._read_budget()
            grants = self._grants()
            for size_kb, need in pages.items():
                used = sum(int(g["pages"].get(str(size_kb), 0)) for g in grants)
                if used + need > self.budget.get(size_kb, 0):
                    return False
            grants.append({"pid": os.getpid(), "who": who, "pages": {str(k): v for k, v in pages.items()}})
            self._ledger.write_text(json.dumps(grants))
            return True

    def _release(self, who: str) -> None:
        with self._lock:
            grants = [g for g in self._grants() if not (g["pid"] == os.getpid() and g["who"] == who)]
            self._ledger.write_text(json.dumps(grants))

    @contextlib.contextmanager
    def hugetlb(self, pages: Mapping[int, int], who: str) -> Iterator[float]:
        """Hold ``pages`` (size kB -> count) for the duration; yields the seconds waited."""
        pages = {k: v for k, v in pages.items() if v > 0}
        if pages:
            with self._lock:
                self.budget = self._read_budget()
        for size_kb, need in pages.items():
            if need > self.budget.get(size_kb, 0):
                raise NeverFits(
                    f"needs {need} {size_kb // 1024} MiB hugepages, but this run's pool holds "
                    f"{self.budget.get(size_kb, 0)} usable ones in all"
                )
        t0 = time.monotonic()
        while pages and not self._try_grant(pages, who):
            time.sleep(POLL_S)
        try:
            yield time.monotonic() - t0
        finally:
            if pages:
                self._release(who)

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
