"""Whether a remote xdist gateway's host is still there after its worker died.

Why: when a worker dies, xdist starts a new one on the same gateway spec. For a lab host
(``--tx socket=127.0.0.1:PORT``) whose guest kernel panicked, QEMU has ended and nothing
listens any more: the new gateway's connect raises inside xdist's loop, and the whole run
ends in an INTERNALERROR, taking the healthy hosts' tests down with it. Asking the address
first tells a dead host (no replacement: its remaining tests are lost, the other hosts go
on) from a worker that died on a live host (xdist replaces it as usual). Only socket
gateways can be asked cheaply; for the others the answer is "unknown" (None).
"""

from __future__ import annotations

import socket

#: Seconds to wait for a connection: a live lab host accepts at once (QEMU's hostfwd).
CONNECT_TIMEOUT = 3.0


def socket_address(spec: object) -> tuple[str, int] | None:
    """``(host, port)`` of an execnet ``socket=HOST:PORT`` spec; None for other gateways."""
    value = getattr(spec, "socket", None)
    if not isinstance(value, str) or ":" not in value:
        return None
    host, _, port = value.rpartition(":")
    try:
        return host, int(port)
    except ValueError:
        return None


def unreachable(address: tuple[str, int], timeout: float = CONNECT_TIMEOUT) -> str | None:
    """Why nothing accepts a connection at ``address``; None when something does.

    The probe connects and closes without a word; the lab's guest server ignores such a
    connection (an empty first line)."""
    try:
        with socket.create_connection(address, timeout=timeout):
            return None
    except OSError as exc:
        return exc.strerror or str(exc) or type(exc).__name__
