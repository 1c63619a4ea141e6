"""pytest-timeout's thread method, without orphaned selftests.

On a timeout, pytest-timeout's ``thread`` method dumps the stacks and ends the whole
process with ``os._exit(1)``: no ``finally`` runs, so the runner never kills the selftest
it is waiting for. The binary itself dies with us (``PR_SET_PDEATHSIG``), but a child it
moved out of its session, or a daemon, would live on. This hook takes over the thread
method's timer (pytest-timeout's own hookspec, meant for that): when it fires it first
kills every selftest of this process with everything it started, then hands over to
pytest-timeout's own dump-and-exit. The ``signal`` method needs nothing: it raises in the
main thread, and the runner kills the tree on the way out.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

from ..engine import process as runner


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_timeout_set_timer(item: pytest.Item, settings: Any) -> bool | None:
    """Arm the thread method's timer (None: another method, pytest-timeout arms it)."""
    method = settings.method
    if method == "signal" and threading.current_thread() is not threading.main_thread():
        method = "thread"
    if method != "thread":
        return None
    import pytest_timeout  # type: ignore[import-untyped]

    def expire() -> None:
        # disable_debugger_detection came with pytest-timeout 2.2: before it, the debugger is always detected
        if getattr(settings, "disable_debugger_detection", False) or not pytest_timeout.is_debugging():
            runner.kill_running()
        pytest_timeout.timeout_timer(item, settings)

    timer = threading.Timer(settings.timeout, expire)
    timer.name = f"pytest_kvmmm timeout {item.nodeid}"
    timer.daemon = True

    def cancel() -> None:
        timer.cancel()
        timer.join()

    item.cancel_timeout = cancel  # type: ignore[attr-defined]  # pytest-timeout's cancel hook calls it
    timer.start()
    return True
