"""One selftest invocation, from a name to a ``SelftestResult``: the engine behind the marker.

Resolve the binary, check the host requirements, run it, classify the exit and parse the
metrics. No pytest here: the pytest layer (``fixtures.py``, ``plugin.py``) turns the
result into a pass, skip or failure.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import statistics
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..coordination.host_changes import HostChanges, PoolTarget
from ..coordination.hostwide import HostLedger, LedgerError, NeverFits, Presence, WaitedTooLong
from ..coordination.ledger import HostCoordinator
from ..host.model import HostFacts
from . import process as runner
from .counters import Counters, CounterSession, guest_memory_bytes
from .counters.model import combined
from .discovery import Found, NotFound, SearchRoot, find_binary
from .kernel_blame import Blame, blame
from .kernel_health import Health, KernelWatch, taint_flags
from .metrics import Metrics, parse_metrics
from .outcome import Outcome, Status, classify
from .output_checks import check_output, notes_without_verdict
from .requirements import HugetlbPages, Requirement, ThpMadvise, first_unmet, specialise, wrong_arch


@dataclass(frozen=True)
class SelftestResult:
    """Everything known about one run of one selftest (or why it did not run)."""

    name: str
    argv: tuple[str, ...]
    status: Status
    reason: str = ""
    details: str = ""
    binary: str | None = None
    returncode: int | None = None
    duration_s: float = 0.0
    stdout: str = ""
    stderr: str = ""
    metrics: Metrics = field(default_factory=dict)
    started_at: float | None = None
    #: Notes a reader of the result should see (e.g. "-v capped from 8 to 2 online CPUs").
    notes: tuple[str, ...] = ()
    #: Every value of every metric over the repeated runs (``--kvm-repeat``); ``metrics`` holds
    #: their medians. A single run has one sample per metric.
    samples: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    #: Kernel complaints (and known-noise lines) logged during the run.
    kernel_log: tuple[str, ...] = ()
    #: ``--kvm-counters``: event counts per run and stage (None when not counted).
    counters: Counters | None = None

    @property
    def passed(self) -> bool:
        return self.status is Status.PASSED

    @property
    def all_samples(self) -> Mapping[str, tuple[float, ...]]:
        """``samples``, or for a result without repeats each metric as its one sample."""
        return self.samples or {k: (v,) for k, v in self.metrics.items()}

    def record(self) -> dict[str, object]:
        """The ``--kvm-results`` fields of this run (JSON-ready)."""
        ended = None if self.started_at is None else self.started_at + self.duration_s
        return {
            "binary": self.name,
            "path": self.binary,
            "argv": list(self.argv),
            "status": self.status.value,
            "returncode": self.returncode,
            "duration_s": round(self.duration_s, 6),
            "reason": self.reason,
            "metrics": dict(self.metrics),
            "samples": {k: list(v) for k, v in self.all_samples.items()},
            "started_at": self.started_at,
            "ended_at": ended,
            "notes": list(self.notes),
            "kernel_log": list(self.kernel_log),
            **({} if self.counters is None else {"counters": self.counters_json()}),
        }

    def counters_json(self) -> dict[str, Any]:
        """The ``counters`` of the record: per run and stage, medians, derived figures."""
        if self.counters is None:
            return {}
        return self.counters.to_json(self.metrics, guest_memory_bytes(self.name, self.argv[1:]))


@dataclass
class SelftestEngine:
    """Runs selftests for one pytest process. Host facts and search roots are computed once;
    the hugetlb pools are read again before each hugetlb case (``pools_changed``)."""

    roots: Callable[[], Sequence[SearchRoot]]
    host: Callable[[], HostFacts]
    default_timeout: float
    machine: str | None = None
    env: Mapping[str, str] | None = None
    #: Set with --kvm-allow-host-changes: grows pools / sets THP, journalled.
    host_changes: HostChanges | None = None
    #: Re-probes the host after the plugin changed it.
    host_changed: Callable[[], None] | None = None
    #: Re-reads only the hugetlb pools, which others change during a session.
    pools_changed: Callable[[], None] | None = None
    #: The kernel-log watch, when it can watch; ``kernel_mode`` "fail" or "report".
    kernel: KernelWatch | None = None
    kernel_mode: str = "fail"
    #: Runs per timing-sensitive test (``--kvm-repeat``); callers pass it for perf tests.
    perf_repeat: int = 1
    #: Where a missing program fails instead of skipping: set when the user named the selftests
    #: directory (a lab's build that lacks a program is misconfigured); never with --kvm-allow-missing.
    missing_fails: bool = False
    #: A program that exists but cannot be executed fails (off with --kvm-allow-missing).
    unrunnable_fails: bool = False
    #: Set under xdist: the perf lock between the run's workers.
    coordinator: HostCoordinator | None = None
    #: ``--kvm-counters``: counts each run's tracepoints (None: not asked for).
    counters: CounterSession | None = None
    #: Makes the host-wide ledger (hugetlb grants, who else runs selftests), on first use.
    ledger_factory: Callable[[], HostLedger] | None = None
    _ledger: HostLedger | None = field(default=None, init=False, repr=False)
    _roots_cache: Sequence[SearchRoot] | None = field(default=None, init=False, repr=False)

    def prepare_host(self, requires: Sequence[Requirement]) -> str | None:
        """--kvm-allow-host-changes: grow hugetlb pools / enable THP for what the case lacks."""
        assert self.host_changes is not None
        host = self.host()
        for req in requires:
            if req.unmet(host) is None:
                continue
            pool = host.hugetlb_pool(req.size_kb) if isinstance(req, HugetlbPages) and req.size_kb else None
            if isinstance(req, HugetlbPages) and pool is not None:
                _, why = self.host_changes.grow_hugetlb(
                    pool.nr_path, f"{pool.dir}/free_hugepages", f"{pool.dir}/resv_hugepages", req.pages
                )
            elif isinstance(req, ThpMadvise):
                why = self.host_changes.set_thp("madvise")
            else:
                continue  # nothing the plugin may change: no need to look at the host again
            if why:
                return f"{req.unmet(host)}; --kvm-allow-host-changes tried: {why}"
            if self.host_changed is not None:
                self.host_changed()
                host = self.host()
        return first_unmet(list(requires), host)

    def ledger(self) -> HostLedger | None:
        """The host-wide ledger, made on first use (LedgerError: its directory is not trustworthy)."""
        if self._ledger is None and self.ledger_factory is not None:
            self._ledger = self.ledger_factory()
        return self._ledger

    def granted(self, requires: Sequence[Requirement]) -> list[HugetlbPages]:
        """The hugetlb requirements the host-wide ledger decides when the case runs (waiting for
        pages others hold), not a check against the pool as it looked earlier."""
        if self.ledger_factory is None:
            return []
        return [r for r in requires if isinstance(r, HugetlbPages) and r.size_kb]

    def pool_floor(self) -> AbstractContextManager[PoolTarget]:
        """For shrinking pools back: the ledger's ``restoring`` (pages granted to other sessions stay)."""
        try:
            ledger = self.ledger()
        except LedgerError:
            ledger = None
        return ledger.restoring() if ledger is not None else contextlib.nullcontext(lambda path, now, back: back)

    def _grow(self, size_kb: int, pages: int) -> int:
        """--kvm-allow-host-changes, under the ledger's lock: add ``pages`` to the global pool of
        ``size_kb`` (journalled); returns the pages added."""
        assert self.host_changes is not None
        base = f"/sys/kernel/mm/hugepages/hugepages-{size_kb}kB"
        files = (f"{base}/nr_hugepages", f"{base}/free_hugepages", f"{base}/resv_hugepages")
        pool = self.host().hugetlb_pool(size_kb)
        if pool is None:
            return 0
        usable = pool.usable
        if self.pools_changed is not None:
            self.pools_changed()
            fresh = self.host().hugetlb_pool(size_kb)
            usable = fresh.usable if fresh else usable
        # grow_hugetlb grows until that many pages are free: the usable ones plus the shortfall.
        added, _ = self.host_changes.grow_hugetlb(*files, max(usable, 0) + pages)
        return added

    @contextlib.contextmanager
    def _slot(
        self, ledger: HostLedger | None, pages: dict[int, int], exclusive: bool, who: str, wait_s: float
    ) -> Iterator[tuple[float, Presence | None]]:
        """This case's share of the host: its hugetlb grant (host-wide), the run's shared or
        exclusive hold, and its presence on the host while it runs."""
        with contextlib.ExitStack() as stack:
            waited = 0.0
            if ledger is not None:
                grow = self._grow if self.host_changes is not None else None
                waited += stack.enter_context(ledger.hugetlb(pages, who, wait_s, grow))
            if self.coordinator is not None:
                waited += stack.enter_context(self.coordinator.host(exclusive))
            presence = stack.enter_context(ledger.selftest(who)) if ledger is not None else None
            yield waited, presence

    def search_roots(self) -> Sequence[SearchRoot]:
        if self._roots_cache is None:
            self._roots_cache = tuple(self.roots())
        return self._roots_cache

    def resolve(self, name: str) -> Found | NotFound:
        if os.sep in name:  # an explicit path to a binary of the user's own
            path = Path(name)
            ok = path.is_file() and os.access(path, os.X_OK)
            root = SearchRoot(path.parent, "explicit path")
            if ok:
                return Found(path, root, path.name)
            return NotFound(path.name, (root,), path if path.is_file() else None)
        return find_binary(name, self.search_roots(), self.machine)

    def misconfigured(self, found: NotFound) -> str | None:
        """Why a missing program fails the run rather than skipping: never green by accident."""
        hint = "--kvm-allow-missing skips instead"
        if found.not_executable is not None and self.unrunnable_fails:
            return f"{found.reason()}; a build whose program cannot run is broken ({hint})"
        if found.not_executable is None and self.missing_fails and not found.absent_by_design():
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
        resolved once: ``found``, where the caller already resolved ``name``, is not looked up again."""
        found = self.resolve(name) if found is None else found
        results = []
        for _ in range(max(repeat, 1)):
            results.append(self._run_once(name, found, args, timeout, requires, notes, exclusive, who, expected_kernel))
            if not results[-1].passed:
                break
        return combine(results)

    def _run_once(
        self,
        name: str,
        found: Found | NotFound,
        args: Sequence[str],
        timeout: float | None,
        requires: Sequence[Requirement],
        notes: Sequence[str],
        exclusive: bool,
        who: str,
        expected_kernel: Sequence[str] = (),
    ) -> SelftestResult:
        """One run; ``exclusive`` (perf tests) keeps every other selftest of the run off the host."""
        args = tuple(str(a) for a in args)
        short = Path(name).name
        if isinstance(found, NotFound):
            arch = wrong_arch(list(requires), self.host())
            if arch:
                return SelftestResult(short, (name, *args), Status.SKIPPED, arch, notes=tuple(notes))
            broken = self.misconfigured(found)
            unmet = first_unmet(list(requires), self.host()) if broken and requires else None
            if unmet:  # a host that cannot run the case at all (no usable /dev/kvm) says so first
                return SelftestResult(short, (name, *args), Status.SKIPPED, unmet, notes=tuple(notes))
            if broken:
                return SelftestResult(short, (name, *args), Status.ERROR, broken, notes=tuple(notes))
            return SelftestResult(short, (name, *args), Status.MISSING, found.reason(), notes=tuple(notes))
        requires = specialise(list(requires), found.path)
        argv = (str(found.path), *args)
        unsafe = self.unsafe(found.path)
        if unsafe:
            return SelftestResult(short, argv, Status.ERROR, unsafe, binary=str(found.path), notes=tuple(notes))
        # Hugetlb pages are the ledger's to grant: the live pool includes what other selftests
        # (this run's and other sessions') use right now, so only the ledger knows what is ours.
        huge = self.granted(requires)
        try:
            ledger = self.ledger()
        except LedgerError as exc:
            if huge:
                return SelftestResult(short, argv, Status.ERROR, str(exc), binary=str(found.path), notes=tuple(notes))
            ledger, notes = None, (*notes, f"cannot tell who else runs selftests on this host: {exc}")
        if self.ledger_factory is None and self.pools_changed is not None and any(
            isinstance(r, HugetlbPages) for r in requires
        ):
            self.pools_changed()  # no ledger (an engine of its own): check the pool as it is now
        checked = [r for r in requires if r not in huge]
        unmet = first_unmet(checked, self.host()) if checked else None
        if unmet and self.host_changes is not None:
            unmet = self.prepare_host(checked)
        if unmet:
            return SelftestResult(
                short, argv, Status.SKIPPED, unmet, binary=str(found.path), notes=tuple(notes)
            )
        limit = self.default_timeout if timeout is None else timeout
        pages = {r.size_kb: r.pages for r in huge if r.size_kb}
        try:
            with self._slot(ledger, pages, exclusive, who, limit) as (waited, presence):
                taint = self.kernel.start() if self.kernel else 0
                proc, counts, counting_note = self._run_counted(found.name, argv, limit, found.path.parent)
                health = self.kernel.finish(taint) if self.kernel else Health()
        except NeverFits as exc:
            if self.pools_changed is not None:
                self.pools_changed()
            why = first_unmet(list(huge), self.host()) or str(exc)
            return SelftestResult(short, argv, Status.SKIPPED, why, binary=str(found.path), notes=tuple(notes))
        except WaitedTooLong as exc:
            return SelftestResult(short, argv, Status.SKIPPED, str(exc), binary=str(found.path), notes=tuple(notes))
        if counting_note:
            notes = (*notes, counting_note)
        if waited >= 0.5:
            notes = (*notes, f"waited {waited:.1f}s for the host ({'alone' if exclusive else 'shared'}) and hugetlb pages")
        outcome: Outcome = classify(proc, limit)
        verdict = check_output(found.name, proc.stdout, proc.stderr)
        extra_notes = () if verdict is not None else notes_without_verdict(found.name, proc.stdout, proc.stderr)
        if outcome.status is Status.PASSED and verdict is not None:
            # Some binaries exit 0 after a logical failure or a skip (memslot_perf_test's
            # "Memslot count too high", dirty_log_test's unsupported log mode).
            outcome = Outcome(Status(verdict.status), f"{short} exit 0 but: {verdict.reason}"
                              if verdict.status == "failed" else verdict.reason)
        outcome = left_behind(outcome, short, proc.left_behind)
        # Without a ledger to ask, an engine of its own is alone; one whose ledger failed is not.
        alone = presence.alone if presence is not None else self.ledger_factory is None
        judged = blame(health, proc.pids, found.path.name, alone, [re.compile(p) for p in expected_kernel])
        outcome, kernel_notes = kernel_verdict(outcome, judged, self.kernel_mode, short)
        extra_notes = (*extra_notes, *kernel_notes)
        health = judged.mine
        return SelftestResult(
            name=short,
            argv=argv,
            status=outcome.status,
            reason=outcome.reason,
            details=outcome.details,
            binary=str(found.path),
            returncode=proc.returncode,
            duration_s=proc.duration_s,
            stdout=proc.stdout,
            stderr=proc.stderr,
            metrics=parse_metrics(found.name, proc.stdout),
            started_at=proc.started_at,
            notes=(
                *notes,
                *extra_notes,
                *(("output truncated to its head and tail",) if proc.truncated else ()),
            ),
            kernel_log=(*(line for _, line in health.complaints), *health.noise),
            counters=counts,
        )

    def _run_counted(
        self, binary: str, argv: tuple[str, ...], limit: float, cwd: Path
    ) -> tuple[runner.ProcessResult, Counters | None, str]:
        """``runner.run``, with the counters (if any) opened just before the fork and read at
        each stage's line; returns the counts and a note when counting this run failed."""
        counting = self.counters.start(binary) if self.counters is not None else None
        if counting is None:
            proc = runner.run(argv, timeout=limit, cwd=cwd, env=self.env)
            return proc, None, ""
        try:
            proc = runner.run(argv, timeout=limit, cwd=cwd, env=self.env, on_line=counting.on_line)
            runs = counting.finish()
        finally:
            counting.close()
        assert self.counters is not None
        if runs is None or counting.error:
            return proc, None, f"not counted: {counting.error}"
        return proc, self.counters.counters(runs), counting.note


def kernel_verdict(outcome: Outcome, judged: Blame, mode: str, short: str) -> tuple[Outcome, tuple[str, ...]]:
    """The outcome once the kernel log is read (``mode`` "fail" or "report"), and the notes to show:
    this run's own complaints fail it; what others did meanwhile and what the selftest provokes
    on purpose are notes."""
    health = judged.mine
    notes: tuple[str, ...] = ()
    if health.bad and mode == "fail":
        if outcome.status is Status.PASSED:
            outcome = Outcome(Status.FAILED, f"{short} passed, but {health.summary()}", health.report())
        else:
            outcome = Outcome(outcome.status, outcome.reason,
                              f"{outcome.details}\n\nkernel log during the run:\n{health.report()}")
    elif health.bad or health.noise:
        notes = (*(f"kernel: {line}" for line in (health.report() or "").splitlines()),
                 *(f"kernel (known noise): {line}" for line in health.noise))
    if judged.taint_meanwhile:
        notes = (*notes, f"kernel (seen on the host meanwhile): became tainted ({taint_flags(judged.taint_meanwhile)})")
    return outcome, (
        *notes,
        *(f"kernel (seen on the host meanwhile): {line}" for line in judged.meanwhile[:20]),
        *(f"kernel (expected from {short}): {line}" for line in judged.expected[:5]),
    )


def left_behind(outcome: Outcome, short: str, left: Sequence[str]) -> Outcome:
    """A selftest that leaves processes running fails (they were killed): a passing one with
    ``left N processes behind: PID CMDLINE``, a failing one keeps its reason and says it too."""
    if not left:
        return outcome
    shown = "; ".join(left[:5]) + (f"; and {len(left) - 5} more" if len(left) > 5 else "")
    line = f"left {len(left)} processes behind: {shown}"
    if outcome.status in (Status.PASSED, Status.SKIPPED):
        return Outcome(Status.FAILED, f"{short} {line}", outcome.details)
    return Outcome(outcome.status, f"{outcome.reason}; {line}", outcome.details)


def combine(results: Sequence[SelftestResult]) -> SelftestResult:
    """One result for repeated runs: the last run's outcome, medians of every metric, all samples.

    A failing repetition decides the outcome (the loop stops there); the samples are those of
    the runs that passed.
    """
    last = results[-1]
    if len(results) == 1:
        return last
    passed = [r for r in results if r.passed]
    samples: dict[str, tuple[float, ...]] = {}
    for r in passed:
        for k, v in r.metrics.items():
            samples[k] = (*samples.get(k, ()), v)
    return dataclasses.replace(
        last,
        metrics={k: statistics.median(v) for k, v in samples.items()},
        samples=samples,
        counters=combined([r.counters for r in passed]),
        started_at=results[0].started_at,
        duration_s=sum(r.duration_s for r in results),
        notes=(*last.notes, f"{len(results)} runs: metrics are medians, samples in the results"),
    )
