"""One host, many sessions: a host-wide hugetlb ledger, and who else runs selftests now.

Hugetlb pools belong to the host, not to a pytest run: two sessions (or the workers of one
``-n 2`` run, or a session beside a user's own ``echo N > nr_hugepages``) that each see 512
free pages must not both start a 512-page selftest. Every pytest-kvmmm process on the host
shares one ledger in a well-known place (``/run/lock/pytest-kvmmm/`` as root, a private
per-user directory otherwise), under one ``flock``:

* grants: pages handed to a running case, checked against the pool as it is *now*: its
  capacity is ``nr_hugepages`` less the pages others use (measured whenever no grant is
  out, never less than what the live pool shows). A grant dies with its process: a
  zombie (``/proc/PID/stat`` state ``Z``) is dead, and a PID reused by another process is
  told apart by its start time;
* debts: pages a session added (``--kvm-allow-host-changes``) and could not take back at
  its end because another session held grants on them (pages in use are never at risk:
  the kernel keeps them as surplus until they are freed; a grant not yet mapped is);
  whoever finds them free later shrinks the pool, so the host is still left as found;
* presence: every process that runs selftests, and every selftest running now, so the
  kernel-log check can ask whether a test ran alone on the host.

Everything in the directory is the running user's, the directory is 0700, nothing is
followed through a link, and a directory owned by someone else stops the run.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..host.sysfs import rooted
from . import safefs
from .liveness import alive, proc_stat

#: The ledger of a live host when running as root.
ROOT_DIR = Path("/run/lock/pytest-kvmmm")
#: Another ledger directory (tests; a lab sharing a host through a common directory).
DIR_ENV = "KVMMM_LEDGER_DIR"
POLL_S = 0.1
_MAX_LEDGER = 1 << 20
_GLOBAL_NR = re.compile(r"/sys/kernel/mm/hugepages/hugepages-(\d{1,9})kB/nr_hugepages")


class LedgerError(Exception):
    """The ledger directory cannot be trusted or used; the message says what to do."""


class NeverFits(Exception):
    """The request is larger than the pool could grant even with nothing else out."""


class WaitedTooLong(Exception):
    """Others held the pages for longer than the case may wait; the message names them."""


def ledger_dir(root: Path = Path("/")) -> Path:
    """The host's ledger directory, created private if missing and checked if found.

    Live as root: ``/run/lock/pytest-kvmmm``. Live as another user: ``$XDG_RUNTIME_DIR`` or
    ``$TMPDIR``, per user (such a session cannot change pools, and shares with its own
    sessions). A fake host root gets its own directory, keyed by its path.
    """
    uid = os.geteuid()
    tmp = Path(tempfile.gettempdir())
    if os.environ.get(DIR_ENV):
        path = Path(os.environ[DIR_ENV])
    elif root.resolve() != Path("/"):
        key = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]
        path = tmp / f"pytest-kvmmm-{uid}-ledger-{key}"
    elif uid == 0:
        path = ROOT_DIR
    else:
        runtime = os.environ.get("XDG_RUNTIME_DIR")
        path = Path(runtime) / "pytest-kvmmm" if runtime else tmp / f"pytest-kvmmm-{uid}-ledger"
    private_dir(path)
    return path


def private_dir(path: Path) -> None:
    """Create ``path`` 0700, or accept it only as a real directory of ours that no one else may write."""
    try:
        safefs.private_dir(path)
    except safefs.UnsafePath as exc:
        raise LedgerError(f"{exc}: no host-wide hugetlb ledger there (remove it)") from None
    except OSError as exc:
        raise LedgerError(f"cannot use {path} for the host-wide hugetlb ledger: {exc.strerror or exc}") from None


@dataclass(frozen=True)
class Pool:
    """A global hugetlb pool as read now."""

    nr: int
    free: int
    resv: int

    @property
    def in_use(self) -> int:
        return self.nr - self.free + self.resv


def read_pool(root: Path, size_kb: int) -> Pool | None:
    base = f"/sys/kernel/mm/hugepages/hugepages-{size_kb}kB"
    try:
        return Pool(*(int(rooted(root, f"{base}/{n}_hugepages").read_text()) for n in ("nr", "free", "resv")))
    except (OSError, ValueError):
        return None


@dataclass
class Presence:
    """Whether a selftest had the host to itself: set when its ``selftest()`` block ends."""

    alone: bool = False
    others: str = ""


Me = tuple[int, int]  # (pid, start time)


def _me() -> Me:
    st = proc_stat(os.getpid())
    return (os.getpid(), st.starttime if st else 0)


def _live(entry: Any) -> bool:
    return isinstance(entry, dict) and alive(int(entry.get("pid", 0)), int(entry.get("start", -1)))


@dataclass
class HostLedger:
    """This process's view of the host-wide ledger in ``directory`` for the host at ``root``."""

    directory: Path
    root: Path
    session: str
    _me: Me = field(default_factory=_me)
    _registered: bool = False
    _held: dict[str, Any] | None = field(default=None, repr=False)

    # --- the locked state ------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self, pay: bool = True) -> Iterator[dict[str, Any]]:
        """The ledger under the host-wide flock, pruned of dead processes; written back after, and
        debts paid where they can be (not while a restore is being written: ``pay``)."""
        if self._held is not None:  # re-entered (a signal handler restoring pools): same lock, same state
            yield self._held
            return
        fd = os.open(self.directory / "ledger.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            state = self._read()
            for key in ("procs", "running", "grants"):
                state[key] = [e for e in state[key] if _live(e)]
            if not self._registered:
                state["procs"].append({"pid": self._me[0], "start": self._me[1], "session": self.session})
                state["epoch"] += 1
                self._registered = True
            self._held = state
            try:
                yield state
            finally:
                self._held = None
            if pay:
                self._pay_debts(state)
            self._write(state)
        finally:
            os.close(fd)

    def _read(self) -> dict[str, Any]:
        empty: dict[str, Any] = {"procs": [], "running": [], "grants": [], "foreign": {}, "debts": {}, "epoch": 0}
        try:
            fd = os.open(self.directory / "ledger.json", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return empty
        try:
            if os.fstat(fd).st_uid != os.geteuid():
                return empty
            data = json.loads(os.read(fd, _MAX_LEDGER))
        except (OSError, ValueError):
            return empty  # a torn or hostile ledger counts as empty: grants are re-made as cases start
        finally:
            os.close(fd)
        if not isinstance(data, dict):
            return empty
        for key, kind in (("procs", list), ("running", list), ("grants", list), ("foreign", dict), ("debts", dict)):
            if isinstance(data.get(key), kind):
                empty[key] = data[key]
        if isinstance(data.get("epoch"), int):
            empty["epoch"] = data["epoch"]
        return empty

    def _write(self, state: Mapping[str, Any]) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".ledger-")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(state, f)
            os.replace(tmp, self.directory / "ledger.json")
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    # --- hugetlb -----------------------------------------------------------------------

    def _room(self, state: dict[str, Any], size_kb: int) -> tuple[int, int, Pool] | None:
        """(capacity, granted) of the pool of ``size_kb`` now; None when there is no such pool."""
        pool = read_pool(self.root, size_kb)
        if pool is None:
            return None
        key = str(size_kb)
        granted = sum(_pages(g, key) for g in state["grants"])
        foreign = pool.in_use if granted == 0 else max(_int(state["foreign"].get(key)), pool.in_use - granted)
        state["foreign"][key] = foreign
        return pool.nr - foreign, granted, pool

    def _try_grant(
        self, pages: Mapping[int, int], who: str, grow: Callable[[int, int], int] | None
    ) -> str | None:
        """Grant ``pages`` now (None), or say why not; NeverFits when it never could."""
        with self._locked() as state:
            for size_kb, need in pages.items():
                room = self._room(state, size_kb)
                if room is None:
                    raise NeverFits(f"no {size_kb} kB hugetlb pool on this host")
                capacity, granted, pool = room
                if need > capacity - granted and grow is not None:
                    grow(size_kb, need - (capacity - granted))
                    room = self._room(state, size_kb)
                    assert room is not None
                    capacity, granted, pool = room
                if need > capacity and granted == 0:
                    raise NeverFits(f"needs {need} {size_kb // 1024} MiB hugepages, the pool has {capacity} usable "
                                    f"(nr={pool.nr} free={pool.free} resv={pool.resv})")
                if need > capacity - granted:
                    holders = ", ".join(sorted({f"{g.get('who') or '?'} (pid {g.get('pid')})"
                                                for g in state["grants"] if _pages(g, str(size_kb))}))
                    return f"{granted} of {capacity} {size_kb // 1024} MiB hugepages are held by {holders}"
            state["grants"].append({"pid": self._me[0], "start": self._me[1], "session": self.session,
                                    "who": who, "pages": {str(k): v for k, v in pages.items()}})
            return None

    @contextlib.contextmanager
    def hugetlb(
        self, pages: Mapping[int, int], who: str, wait_s: float, grow: Callable[[int, int], int] | None = None
    ) -> Iterator[float]:
        """Hold ``pages`` (size kB -> count) for the block; yields the seconds waited. Waits at most
        ``wait_s`` for others to release theirs (WaitedTooLong), never when it cannot fit (NeverFits).
        ``grow(size_kb, pages)`` may add pages to a pool first (--kvm-allow-host-changes)."""
        pages = {k: v for k, v in pages.items() if v > 0}
        if not pages:
            yield 0.0
            return
        t0 = time.monotonic()
        while (why := self._try_grant(pages, who, grow)) is not None:
            if time.monotonic() - t0 >= wait_s:
                raise WaitedTooLong(f"waited {time.monotonic() - t0:.0f}s for hugepages: {why}")
            time.sleep(POLL_S)
        try:
            yield time.monotonic() - t0
        finally:
            with self._locked() as state:
                state["grants"] = [g for g in state["grants"] if not _mine(g, self._me, who)]

    def _pay_debts(self, state: dict[str, Any]) -> None:
        """Shrink pools by pages a finished session added and could not take back, as far as no
        live grant needs them (called under the lock)."""
        for path, owed in list(state["debts"].items()):
            m = _GLOBAL_NR.fullmatch(str(path))
            if m is None or not isinstance(owed, int) or owed <= 0:
                del state["debts"][path]
                continue
            room = self._room(state, int(m.group(1)))
            if room is None:
                del state["debts"][path]
                continue
            _, granted, pool = room
            pay = min(owed, _removable(pool, granted))
            if pay <= 0:
                continue
            try:
                rooted(self.root, path).write_text(f"{pool.nr - pay}\n")
            except OSError:
                continue
            if owed - pay > 0:
                state["debts"][path] = owed - pay
            else:
                del state["debts"][path]

    @contextlib.contextmanager
    def restoring(self) -> Iterator[Callable[[str, int, int], int]]:
        """For undoing pool growth: yields ``target(path, now, back)``, the value to write instead
        of ``back`` so that pages granted to others stay; the rest becomes a debt, paid later."""
        with self._locked(pay=False) as state:
            def target(path: str, now: int, back: int) -> int:
                m = _GLOBAL_NR.fullmatch(path)
                room = self._room(state, int(m.group(1))) if m else None
                if room is None:
                    return back
                _, granted, pool = room
                floor = pool.nr - _removable(pool, granted)
                if back >= floor:
                    return back
                state["debts"][path] = _int(state["debts"].get(path)) + (floor - back)
                return floor

            yield target

    # --- presence ----------------------------------------------------------------------

    @contextlib.contextmanager
    def selftest(self, who: str = "") -> Iterator[Presence]:
        """Mark a selftest of this process as running; at the end, ``alone`` tells whether no other
        selftest (of this run or another) and no other pytest-kvmmm session was on the host."""
        presence = Presence()
        with self._locked() as state:
            state["epoch"] += 1
            epoch = state["epoch"]
            others = _others(state, self._me, self.session)
            state["running"].append({"pid": self._me[0], "start": self._me[1], "session": self.session, "who": who})
        try:
            yield presence
        finally:
            with self._locked() as state:
                state["running"] = [r for r in state["running"] if not _mine(r, self._me, who)]
                later = _others(state, self._me, self.session)
                presence.alone = not others and not later and state["epoch"] == epoch
                presence.others = others or later or ("" if presence.alone else "another selftest ran meanwhile")


def _removable(pool: Pool, granted: int) -> int:
    """Pages a shrink may take from the pool now. Pages in use are safe from any shrink (the kernel
    keeps them as surplus and frees them when they are released), so only grants not yet mapped
    can be hurt: with grants out, keep every page they might still need."""
    if granted == 0:
        return pool.nr
    return max(pool.nr - pool.in_use - granted, 0)


def _others(state: Mapping[str, Any], me: Me, session: str) -> str:
    """What else is on the host: other selftests running, or other sessions' processes."""
    running = [r for r in state["running"] if (r.get("pid"), r.get("start")) != me]
    sessions = {p.get("session") for p in state["procs"] if p.get("session") != session}
    parts = []
    if running:
        parts.append(f"{len(running)} other selftest(s) running ({', '.join(str(r.get('who') or r.get('pid')) for r in running[:3])})")
    if sessions:
        parts.append(f"{len(sessions)} other pytest-kvmmm session(s)")
    return "; ".join(parts)


def _mine(entry: Mapping[str, Any], me: Me, who: str) -> bool:
    return (entry.get("pid"), entry.get("start")) == me and entry.get("who", "") == who


def _pages(grant: Mapping[str, Any], key: str) -> int:
    pages = grant.get("pages")
    return _int(pages.get(key)) if isinstance(pages, dict) else 0


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0
