"""SIGTERM and SIGHUP end a run the way Ctrl-C does: host restored, finished results kept.

CI timeouts send SIGTERM and a closed terminal sends SIGHUP; by default either kills pytest
on the spot, leaving a grown hugetlb pool or a changed module parameter behind. Once the
run needs the host, the first of them raises ``KeyboardInterrupt`` in the main thread, so
everything Ctrl-C does happens: the running selftest's process group is killed, the session
finishes as interrupted (exit code 2), host changes are undone and the results file keeps
every finished test. Later signals, and any signal while the host is being restored
(``quiet``), are noted but do not interrupt the restoration. A signal someone set to be
ignored (``nohup``) or handled by another handler is left alone.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class SignalGuard:
    def __init__(self) -> None:
        self._previous: dict[signal.Signals, object] = {}
        self._quiet = 0
        #: The name of the first signal received, if any.
        self.received: str | None = None

    def install(self) -> None:
        """Turn SIGTERM and SIGHUP into ``KeyboardInterrupt`` (main thread only; idempotent)."""
        if self._previous or threading.current_thread() is not threading.main_thread():
            return
        for sig in SIGNALS:
            if signal.getsignal(sig) is signal.SIG_DFL:
                self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)  # type: ignore[arg-type]
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None or self._quiet:
            self.received = self.received or signal.Signals(signum).name
            return
        self.received = signal.Signals(signum).name
        raise KeyboardInterrupt(f"{self.received}: the run was interrupted (host changes are restored)")

    @contextlib.contextmanager
    def quiet(self) -> Iterator[None]:
        """While the host is being restored: a signal is noted, never raised in the middle."""
        self._quiet += 1
        try:
            yield
        finally:
            self._quiet -= 1
