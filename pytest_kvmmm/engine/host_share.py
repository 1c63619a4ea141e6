"""A case's share of the host: what the engine asks of the host around one run, apart from
running it. Hugetlb pages are granted by the host-wide ledger (waiting for pages others hold);
under xdist the run's coordinator keeps perf tests alone; with --kvm-allow-host-changes the
pools are grown or THP enabled for what a case lacks, journalled by ``HostChanges``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager

from ..coordination.host_changes import HostChanges, PoolTarget
from ..coordination.hostwide import HostLedger, LedgerError, Presence
from ..coordination.ledger import HostCoordinator
from ..host.view import HostView
from .requirements import HugetlbPages, Requirement, ThpMadvise, first_unmet


class HostShare:
    def __init__(
        self,
        view: HostView,
        changes: HostChanges | None = None,
        ledger_factory: Callable[[], HostLedger] | None = None,
    ) -> None:
        self.view = view
        #: Set with --kvm-allow-host-changes: grows pools / sets THP, journalled.
        self.changes = changes
        #: Makes the host-wide ledger (hugetlb grants, who else runs selftests), on first use.
        self.ledger_factory = ledger_factory
        #: Set under xdist when the run needs the host: the perf lock between the run's workers.
        self.coordinator: HostCoordinator | None = None
        self._ledger: HostLedger | None = None

    def prepare_host(self, requires: Sequence[Requirement]) -> str | None:
        """--kvm-allow-host-changes: grow hugetlb pools / enable THP for what the case lacks."""
        assert self.changes is not None
        host = self.view.facts()
        for req in requires:
            if req.unmet(host) is None:
                continue
            pool = host.hugetlb_pool(req.size_kb) if isinstance(req, HugetlbPages) and req.size_kb else None
            if isinstance(req, HugetlbPages) and pool is not None:
                _, why = self.changes.grow_hugetlb(
                    pool.nr_path, f"{pool.dir}/free_hugepages", f"{pool.dir}/resv_hugepages", req.pages
                )
            elif isinstance(req, ThpMadvise):
                why = self.changes.set_thp("madvise")
            else:
                continue  # nothing the plugin may change: no need to look at the host again
            if why:
                return f"{req.unmet(host)}; --kvm-allow-host-changes tried: {why}"
            self.view.reprobe()
            host = self.view.facts()
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

    def check_pools(self, requires: Sequence[Requirement]) -> None:
        """Without a ledger (an engine of its own), a hugetlb case checks the pools as they are now."""
        if self.ledger_factory is None and any(isinstance(r, HugetlbPages) for r in requires):
            self.view.reread_pools()

    def _grow(self, size_kb: int, pages: int) -> int:
        """--kvm-allow-host-changes, under the ledger's lock: add ``pages`` to the global pool of
        ``size_kb`` (journalled); returns the pages added."""
        assert self.changes is not None
        base = f"/sys/kernel/mm/hugepages/hugepages-{size_kb}kB"
        files = (f"{base}/nr_hugepages", f"{base}/free_hugepages", f"{base}/resv_hugepages")
        pool = self.view.facts().hugetlb_pool(size_kb)
        if pool is None:
            return 0
        self.view.reread_pools()
        fresh = self.view.facts().hugetlb_pool(size_kb)
        usable = fresh.usable if fresh else pool.usable
        # grow_hugetlb grows until that many pages are free: the usable ones plus the shortfall.
        added, _ = self.changes.grow_hugetlb(*files, max(usable, 0) + pages)
        return added

    def hold(self, exclusive: bool) -> AbstractContextManager[float]:
        """The run's shared or exclusive hold on the host (under xdist; else nothing to wait for)."""
        return self.coordinator.host(exclusive) if self.coordinator is not None else contextlib.nullcontext(0.0)

    @contextlib.contextmanager
    def slot(
        self, ledger: HostLedger | None, pages: dict[int, int], exclusive: bool, who: str, wait_s: float
    ) -> Iterator[tuple[float, Presence | None]]:
        """This case's share of the host: its hugetlb grant (host-wide), the run's shared or
        exclusive hold, and its presence on the host while it runs."""
        with contextlib.ExitStack() as stack:
            waited = 0.0
            if ledger is not None:
                grow = self._grow if self.changes is not None else None
                waited += stack.enter_context(ledger.hugetlb(pages, who, wait_s, grow))
            waited += stack.enter_context(self.hold(exclusive))
            presence = stack.enter_context(ledger.selftest(who)) if ledger is not None else None
            yield waited, presence
