"""One process's view of the host: probed once, when first needed; probed again after the
plugin changed the host; its hugetlb pools read again before a hugetlb case.

The engine and the pytest adapter share one ``HostView``, so the engine refreshes the facts
itself instead of calling back into the plugin. How the first facts are had is the owner's
choice (``first``): the adapter hands them to local xdist workers or shares one probe per
machine; by default they are probed from ``root``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .model import HostFacts
from .probe import probe_host, with_fresh_pools


class HostView:
    def __init__(self, root: Path, first: Callable[[], HostFacts] | None = None) -> None:
        self.root = root
        self._first = first or (lambda: probe_host(root))
        self._facts: HostFacts | None = None
        #: Counts the whole probes: what was computed from the facts (their text, say) is
        #: computed again after a reprobe, not after a pool re-read.
        self.generation = 0

    @property
    def probed(self) -> bool:
        """Whether the facts were had already (before, nothing on the host was read)."""
        return self._facts is not None

    def facts(self) -> HostFacts:
        if self._facts is None:
            self._facts = self._first()
            self.generation += 1
        return self._facts

    def reprobe(self) -> None:
        """After the plugin changed the host (--kvm-allow-host-changes, a module parameter):
        the tests after it see the host as it is now."""
        self._facts = probe_host(self.root)
        self.generation += 1

    def reread_pools(self) -> None:
        """Before a hugetlb case: other users and runs change the pools during a session."""
        self._facts = with_fresh_pools(self.facts(), self.root)
