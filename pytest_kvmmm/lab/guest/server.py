"""kvmmm lab host: an execnet socket server for pytest-xdist ``--tx socket=HOST:PORT`` gateways.

It speaks the protocol of execnet's ``socketserver.py`` (one line: the ``repr`` of the
bootstrap source, which is then executed with ``clientsock`` and ``execmodel``), but forks a
fresh process per connection, so every pytest run gets clean modules. Runs as PID 1 of the
guest, so it also reaps orphans. Reachable only through QEMU's hostfwd on the host's
127.0.0.1: whoever connects runs code as root in this throwaway VM.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import traceback


def reap(*_: object) -> None:
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def serve_one(conn: socket.socket, address: tuple[str, int]) -> None:
    from execnet.gateway_base import get_execmodel

    with conn.makefile("rb") as fh:
        line = fh.readline().rstrip()
    if not line:  # a probe (is this host still up?) or a client that gave up: nothing to run
        return
    source = eval(line)  # execnet's framing: a Python string literal
    namespace = {"clientsock": conn, "address": address, "execmodel": get_execmodel("main_thread_only")}
    exec(compile(source + "\n", "<kvmmm-lab socket server>", "exec"), namespace)


def main() -> None:
    port = int(sys.argv[1])
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("0.0.0.0", port))
    server.listen(16)
    signal.signal(signal.SIGCHLD, reap)
    print(f"kvmmm-lab: ready on port {port}", flush=True)
    while True:
        conn, address = server.accept()
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                server.close()
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                os.setsid()
                serve_one(conn, address)
            except BaseException:
                traceback.print_exc()
                code = 1
            finally:
                os._exit(code)
        conn.close()


if __name__ == "__main__":
    main()
