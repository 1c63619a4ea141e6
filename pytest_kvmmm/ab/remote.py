"""Running the rounds on another host through an execnet gateway (a lab host, or ``ssh=``).

The module swap must happen on the host whose KVM is measured; building and judging need not.
So ``kvmmm-ab --on socket=127.0.0.1:PORT`` builds here for the remote's kernel release, sends the
module files over the gateway, and the remote only swaps modules and runs the rounds
(``remote_main``, executed there with the pytest-kvmmm installed on that host); the records come
back and the verdicts and the table are made here.
"""

from __future__ import annotations

import platform
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from .paired import RoundRecords

#: What the gateway runs: the remote half, from the pytest-kvmmm installed on that host.
REMOTE = "from pytest_kvmmm.ab.remote import remote_main; remote_main(channel)"


class RemoteError(Exception):
    """The remote host could not run the rounds; the message is one line."""


def _gateway(spec: str) -> Any:
    import execnet

    try:
        return execnet.makegateway(spec)
    except (OSError, execnet.HostNotFound) as exc:
        raise RemoteError(f"cannot reach {spec}: {exc}") from None


def remote_release(spec: str) -> tuple[str, str]:
    """``(uname -r, uname -m)`` of the remote host."""
    gw = _gateway(spec)
    try:
        ch = gw.remote_exec("import platform; channel.send((platform.release(), platform.machine()))")
        release, machine = ch.receive(60)
        return str(release), str(machine)
    finally:
        gw.exit()


def pack(directory: Path | None) -> dict[str, bytes] | None:
    """A build directory's ``.ko`` files and manifest, to send."""
    if directory is None:
        return None
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.suffix == ".ko" or p.name == "manifest.json"}


def run_remote(
    spec: str,
    sides: Mapping[str, tuple[str, dict[str, bytes] | None]],
    rounds: int,
    pytest_args: Sequence[str],
    workdir: str,
    params: Mapping[str, Mapping[str, str]],
    progress: TextIO | None,
    timeout: float = 6 * 3600,
) -> list[RoundRecords]:
    """Swap and run the rounds on ``spec``; returns the rounds' records."""
    gw = _gateway(spec)
    try:
        ch = gw.remote_exec(REMOTE)
        ch.send({"sides": {k: [d, f] for k, (d, f) in sides.items()}, "rounds": rounds, "pytest_args": list(pytest_args),
                 "workdir": workdir, "params": {m: dict(p) for m, p in params.items()}})  # fmt: skip
        while True:
            try:
                kind, payload = ch.receive(timeout)
            except (EOFError, OSError) as exc:
                raise RemoteError(
                    f"lost the connection to {spec} ({type(exc).__name__}) during the rounds: if that host still runs, "
                    "its next kvmmm-ab puts its stock KVM modules back first"
                ) from None
            if kind == "progress" and progress is not None:
                print(payload, file=progress, flush=True)
            elif kind == "error":
                raise RemoteError(f"on {spec}: {payload}")
            elif kind == "done":
                return [RoundRecords(int(r), str(s), list(recs)) for r, s, recs in payload]
    finally:
        gw.exit()


def remote_main(channel: Any) -> None:
    """The remote half: write the sent modules, restore any stale swap, run the rounds, send the records."""
    import tempfile

    from ..provision.cache import default_cache_root
    from .modules import ModuleSwap, SwapError, build_files, loaded, restore_stale
    from .rounds import RoundError, Side, run_rounds

    class Progress:
        def write(self, text: str) -> int:
            if text.strip():
                channel.send(("progress", text.rstrip("\n")))
            return len(text)

        def flush(self) -> None:
            pass

    job = channel.receive()
    try:
        journal_dir = default_cache_root() / "journal"
        for line in restore_stale(journal_dir):
            channel.send(("progress", f"kvmmm-ab: {line} (left by a kvmmm-ab that died)"))
        state = loaded()
        if state is None:
            raise SwapError("KVM is not loaded as modules on this host: nothing to swap")
        base = Path(tempfile.mkdtemp(prefix="kvmmm-ab-"))
        sides = {}
        for name, (describe, files) in job["sides"].items():
            directory = None
            if files:
                directory = base / name
                directory.mkdir()
                for fname, data in files.items():
                    (directory / fname).write_bytes(data)
            sides[name] = Side(name, describe, build_files(directory, state.vendor) if directory else None, job["params"])
        with ModuleSwap(journal_dir, platform.release()) as swap:
            runs = run_rounds(sides, job["rounds"], job["pytest_args"], Path(job["workdir"]), swap, Progress())  # type: ignore[arg-type]
        channel.send(("done", [[r.round, r.side, list(r.records)] for r in runs]))
    except (SwapError, RoundError, OSError) as exc:
        channel.send(("error", str(exc)))

