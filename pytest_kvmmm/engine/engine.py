"""One selftest invocation, from a name to a ``SelftestResult``: the engine behind the marker.

Resolve the binary, check the host requirements, take the case's share of the host, run it
(``repeat`` times for perf tests), and hand what happened to ``judge``. The engine is built in
one step from its ``EngineSettings`` and the ``HostView`` it shares with its owner; it calls
nothing back. No pytest here: the pytest layer (``pytest/engine_setup.py`` builds it,
``pytest/fixtures.py`` runs it) turns the result into a pass, skip or failure.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from ..coordination.host_changes import HostChanges, PoolTarget
from ..coordination.hostwide import HostLedger, LedgerError, NeverFits, WaitedTooLong
from ..coordination.ledger import HostCoordinator
from ..host.model import HostFacts
from ..host.view import HostView
from . import process as runner
from .counters import Counters, CounterSession
from .counters.setup import counter_session
from .discovery import Found, NotFound, SearchRoot, find_binary
from .host_share import HostShare
from .judge import Ran, judge
from .kernel_health import Health, KernelWatch
from .outcome import Status
from .requirements import HugetlbPages, Requirement, first_unmet, specialise, wrong_arch
from .result import SelftestResult, combine


@dataclass(frozen=True)
class EngineSettings:
    """What one process's engine is told, once, when it is built (resolved from the options by
    ``pytest/engine_setup.py``)."""

    #: Where binaries are searched, in order (called once, on first use).
    roots: Callable[[], Sequence[SearchRoot]]
    default_timeout: float
    #: Runs per timing-sensitive test (``--kvm-repeat``); callers pass it for perf tests.
    perf_repeat: int = 1
    #: Where a missing program fails instead of skipping: set when the user named the selftests
    #: directory (a lab's build that lacks a program is misconfigured); never with --kvm-allow-missing.
    missing_fails: bool = False
    #: A program that exists but cannot be executed fails (off with --kvm-allow-missing).
    unrunnable_fails: bool = False
    machine: str | None = None
    env: Mapping[str, str] | None = None
    #: The kernel log to watch around each run (None: not watched), what a complaint does
    #: ("fail" or "report") and the lines that are known noise.
    kmsg: Path | None = None
    kernel_mode: str = "fail"
    kernel_noise: Sequence[re.Pattern[str]] = ()
    #: ``--kvm-counters``: the sets and events to count for the architecture ``arch`` (empty: none).
    counters: tuple[str, ...] = ()
    arch: str = ""
    #: Makes the host-wide ledger (hugetlb grants, who else runs selftests), on first use.
    ledger: Callable[[], HostLedger] | None = None


@dataclass(frozen=True)
class _Call:
    """One ``run`` call, as each of its repetitions sees it."""

    name: str
    args: tuple[str, ...]
    requires: tuple[Requirement, ...]
    notes: tuple[str, ...]
    timeout: float | None
    exclusive: bool
    who: str
    expected_kernel: tuple[str, ...]

    @property
    def short(self) -> str:
        return Path(self.name).name


class SelftestEngine:
    """Runs selftests for one process. Host facts and search roots are had once; the hugetlb
    pools are read again before each hugetlb case. Nothing on the host is touched before
    ``start`` (the kernel-log watch, the counters, the run's coordinator)."""

    def __init__(self, settings: EngineSettings, view: HostView, host_changes: HostChanges | None = None) -> None:
        self.settings = settings
        #: The host facts, shared with the engine's owner (they see what the engine re-probes).
        self.view = view
        self.share = HostShare(view, host_changes, settings.ledger)
        self.perf_repeat = settings.perf_repeat
        #: The kernel-log watch once started (its ``reason`` says why it cannot watch).
        self.kernel_watch: KernelWatch | None = None
        #: ``--kvm-counters``, once started.
        self.counters: CounterSession | None = None
        self._roots: Sequence[SearchRoot] | None = None

    def watch(self) -> None:
        """Open the kernel-log watch and the counters (once): before the header describes them."""
        s = self.settings
        if self.kernel_watch is None and s.kmsg is not None:
            self.kernel_watch = KernelWatch(kmsg=s.kmsg, noise=s.kernel_noise)
        if self.counters is None and s.counters:
            self.counters = counter_session(s.counters, s.arch, self.host_changes)

    def start(self, coordinator: HostCoordinator | None = None) -> None:
        """The run needs the host: watch, and share it with the run's other workers (xdist)."""
        self.watch()
        self.share.coordinator = coordinator

    def close(self) -> None:
        if self.kernel_watch is not None:
            self.kernel_watch.close()

    @property
    def host_changes(self) -> HostChanges | None:
        """The journal host changes are made through, with --kvm-allow-host-changes; else None."""
        return self.share.changes

    @property
    def coordinator(self) -> HostCoordinator | None:
        return self.share.coordinator

    def host(self) -> HostFacts:
        return self.view.facts()

    def prepare_host(self, requires: Sequence[Requirement]) -> str | None:
        return self.share.prepare_host(requires)

    def granted(self, requires: Sequence[Requirement]) -> list[HugetlbPages]:
        return self.share.granted(requires)

    def pool_floor(self) -> AbstractContextManager[PoolTarget]:
        return self.share.pool_floor()

    def hold(self, exclusive: bool) -> AbstractContextManager[float]:
        return self.share.hold(exclusive)

    def search_roots(self) -> Sequence[SearchRoot]:
        if self._roots is None:
            self._roots = tuple(self.settings.roots())
        return self._roots

    def resolve(self, name: str) -> Found | NotFound:
        if os.sep in name:  # an explicit path to a binary of the user's own
            path = Path(name)
            ok = path.is_file() and os.access(path, os.X_OK)
            root = SearchRoot(path.parent, "explicit path")
            if ok:
                return Found(path, root, path.name)
            return NotFound(path.name, (root,), path if path.is_file() else None)
        return find_binary(name, self.search_roots(), self.settings.machine)

    def misconfigured(self, found: NotFound) -> str | None:
        """Why a missing program fails the run rather than skipping: never green by accident."""
        hint = "--kvm-allow-missing skips instead"
        if found.not_executable is not None and self.settings.unrunnable_fails:
            return f"{found.reason()}; a build whose program cannot run is broken ({hint})"
        if found.not_executable is None and self.settings.missing_fails and not found.absent_by_design():
            named = found.searched[0].origin if found.searched else "the option"
            return f"{found.reason()}; {named} names this build, and it lacks the program ({hint})"
        return None

    @staticmethod
    def unsafe(path: Path) -> str | None:
        """As root, never run what anyone could have replaced: a world-writable binary or one in a
        world-writable directory without the sticky bit (like /tmp has)."""
        if os.geteuid() != 0:
            return None
        st = path.stat()
        if st.st_mode & 0o002:
            return f"refusing to run {path} as root: it is world-writable (chmod o-w {path})"
        parent = path.parent.stat()
        if parent.st_mode & 0o002 and not parent.st_mode & 0o1000:
            return f"refusing to run {path} as root: its directory is world-writable (chmod o-w {path.parent})"
        return None

    def run(
        self,
        name: str,
        args: Sequence[str] = (),
        *,
        timeout: float | None = None,
        requires: Sequence[Requirement] = (),
        notes: Sequence[str] = (),
        exclusive: bool = False,
        who: str = "",
        repeat: int = 1,
        found: Found | NotFound | None = None,
        expected_kernel: Sequence[str] = (),
    ) -> SelftestResult:
        """Run ``name`` ``repeat`` times (stopping at the first run that does not pass) and keep
        every sample: single runs lie on shared hosts, medians over samples lie less. The binary is
        resolved once: ``found``, where the caller already resolved ``name``, is not looked up again.
        ``exclusive`` (perf tests) keeps every other selftest of the run off the host."""
        found = self.resolve(name) if found is None else found
        call = _Call(name, tuple(str(a) for a in args), tuple(requires), tuple(notes),
                     timeout, exclusive, who, tuple(expected_kernel))  # fmt: skip
        results = []
        for _ in range(max(repeat, 1)):
            results.append(self._run_once(found, call))
            if not results[-1].passed:
                break
        return combine(results)

    def _run_once(self, found: Found | NotFound, call: _Call) -> SelftestResult:
        """One run: why it cannot run, or what it did, judged."""
        if isinstance(found, NotFound):
            return self._not_found(found, call)
        argv = (str(found.path), *call.args)
        requires = specialise(list(call.requires), found.path)

        def stop(status: Status, reason: str, notes: Sequence[str] = call.notes) -> SelftestResult:
            return SelftestResult(call.short, argv, status, reason, binary=str(found.path), notes=tuple(notes))

        unsafe = self.unsafe(found.path)
        if unsafe:
            return stop(Status.ERROR, unsafe)
        # Hugetlb pages are the ledger's to grant: the live pool includes what other selftests
        # (this run's and other sessions') use right now, so only the ledger knows what is ours.
        huge = self.granted(requires)
        notes = call.notes
        try:
            ledger = self.share.ledger()
        except LedgerError as exc:
            if huge:
                return stop(Status.ERROR, str(exc))
            ledger, notes = None, (*notes, f"cannot tell who else runs selftests on this host: {exc}")
        self.share.check_pools(requires)
        checked = [r for r in requires if r not in huge]
        unmet = first_unmet(checked, self.host()) if checked else None
        if unmet and self.host_changes is not None:
            unmet = self.prepare_host(checked)
        if unmet:
            return stop(Status.SKIPPED, unmet, notes)
        limit = self.settings.default_timeout if call.timeout is None else call.timeout
        pages = {r.size_kb: r.pages for r in huge if r.size_kb}
        try:
            ran, meanwhile = self._execute(found, argv, limit, ledger, pages, call)
        except NeverFits as exc:
            self.view.reread_pools()
            return stop(Status.SKIPPED, first_unmet(list(huge), self.host()) or str(exc), notes)
        except WaitedTooLong as exc:
            return stop(Status.SKIPPED, str(exc), notes)
        notes = (*notes, *meanwhile)
        return judge(call.short, found, argv, ran, notes, self.settings.kernel_mode, call.expected_kernel)

    def _not_found(self, found: NotFound, call: _Call) -> SelftestResult:
        """A program that is not there: skipped, or failed when the build should have had it."""
        argv, notes = (call.name, *call.args), call.notes
        arch = wrong_arch(list(call.requires), self.host())
        if arch:
            return SelftestResult(call.short, argv, Status.SKIPPED, arch, notes=notes)
        broken = self.misconfigured(found)
        unmet = first_unmet(list(call.requires), self.host()) if broken and call.requires else None
        if unmet:  # a host that cannot run the case at all (no usable /dev/kvm) says so first
            return SelftestResult(call.short, argv, Status.SKIPPED, unmet, notes=notes)
        if broken:
            return SelftestResult(call.short, argv, Status.ERROR, broken, notes=notes)
        return SelftestResult(call.short, argv, Status.MISSING, found.reason(), notes=notes)

    def _execute(
        self, found: Found, argv: tuple[str, ...], limit: float, ledger: HostLedger | None,
        pages: dict[int, int], call: _Call,
    ) -> tuple[Ran, tuple[str, ...]]:  # fmt: skip
        """Run the process in the case's share of the host, counted and watched; returns what
        happened and the notes about it (counting failed, waited for the host)."""
        kernel = self.kernel_watch if self.kernel_watch is not None and self.kernel_watch.active else None
        with self.share.slot(ledger, pages, call.exclusive, call.who, limit) as (waited, presence):
            taint = kernel.start() if kernel else 0
            proc, counts, counting_note = self._run_counted(found.name, argv, limit, found.path.parent)
            health = kernel.finish(taint) if kernel else Health()
        # Without a ledger to ask, an engine of its own is alone; one whose ledger failed is not.
        alone = presence.alone if presence is not None else self.settings.ledger is None
        notes = (counting_note,) if counting_note else ()
        if waited >= 0.5:
            held = "alone" if call.exclusive else "shared"
            notes = (*notes, f"waited {waited:.1f}s for the host ({held}) and hugetlb pages")
        return Ran(proc, limit, counts, health, alone), notes

    def _run_counted(
        self, binary: str, argv: tuple[str, ...], limit: float, cwd: Path
    ) -> tuple[runner.ProcessResult, Counters | None, str]:
        """``runner.run``, with the counters (if any) opened just before the fork and read at
        each stage's line; returns the counts and a note when counting this run failed."""
        env = self.settings.env
        counting = self.counters.start(binary) if self.counters is not None else None
        if counting is None:
            proc = runner.run(argv, timeout=limit, cwd=cwd, env=env)
            return proc, None, ""
        try:
            proc = runner.run(argv, timeout=limit, cwd=cwd, env=env, on_line=counting.on_line)
            runs = counting.finish()
        finally:
            counting.close()
        assert self.counters is not None
        if runs is None or counting.error:
            return proc, None, f"not counted: {counting.error}"
        return proc, self.counters.counters(runs), counting.note
