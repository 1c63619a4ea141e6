"""Ctrl-C, SIGTERM and SIGHUP held back while a selftest starts, whichever thread gets them.

Raised inside ``Popen``, or after it but before the caller holds the started process, an
interrupt leaves a selftest running with nobody to kill it. Blocking the signals with
``pthread_sigmask`` is not enough: it holds them back only from the thread that blocks them,
and the kernel gives a process-directed signal to any thread that does not (execnet's I/O
threads in an xdist worker, pytest-timeout's thread). Python's C handler then notes it there
and the main thread raises ``KeyboardInterrupt`` at its next bytecode, wherever that is (seen:
8 starts of 20 left their selftest running with one extra thread in the process).

So while the child starts, each Python-level handler of these signals is replaced by one that
only records the signal, and the signals stay blocked on this thread (and in the child until
its exec, which gets the old mask back). ``release`` restores the mask and the handlers, then
calls the handler of each signal that came meanwhile, where the caller can kill the child.
Handlers that are not Python functions (default, ignored, or set outside Python) are left as
they were: the mask alone holds those, as before. No pytest here.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

#: The signals that end a run (SIGTERM and SIGHUP once coordination/signals.py handles them).
HELD = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class HeldSignals:
    """``hold()`` on the main thread before starting a child, ``release()`` once it is held."""

    def __init__(self) -> None:
        #: The signal mask to give back (to the child before its exec, and here at release);
        #: None when nothing is held (off the main thread, or released).
        self.mask: set[int | signal.Signals] | None = None
        self._handlers: dict[int, Any] = {}
        self._came: list[int] = []

    def hold(self) -> HeldSignals:
        if threading.current_thread() is not threading.main_thread():
            return self  # Python raises KeyboardInterrupt on the main thread only
        for sig in HELD:
            handler = signal.getsignal(sig)
            if callable(handler):
                self._handlers[sig] = handler
                signal.signal(sig, self._record)
        self.mask = signal.pthread_sigmask(signal.SIG_BLOCK, set(HELD))
        return self

    def _record(self, signum: int, frame: FrameType | None) -> None:
        if signum not in self._came:
            self._came.append(signum)

    def release(self) -> None:
        """Give back the mask and handlers, then deliver what came meanwhile (its handler may
        raise ``KeyboardInterrupt``). Idempotent."""
        if self.mask is None:
            return
        mask, self.mask = self.mask, None
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # signals pending here reach _record now
        handlers, self._handlers = self._handlers, {}
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        came, self._came = self._came, []
        for sig in came:
            handlers[sig](sig, None)
