"""Booting lab hosts under QEMU TCG, and shutting them down by pid (``kvmmm-lab up|down``).

Each host is one QEMU of its kind's architecture, machine and CPU (``hosts.py``): on arm64
``-machine virt,virtualization=on`` boots the kernel at EL2, so KVM runs inside it (VHE with
``-cpu max``, nVHE with ``cortex-a72``); on x86 an AMD EPYC with SVM and NPT, so KVM runs
with TDP. Its only network is QEMU's user networking, whose hostfwd listens on the host's
127.0.0.1:<port> and forwards to the guest's execnet server; its NIC has no option ROM
(``romfile=``), without which QEMU stops on a missing efi-virtio.rom. The results
directory is shared over virtio-9p at the same path as on the host.

The run directory holds ``state.json`` (pid, port, the QEMU command line), each host's
console log and initrd. ``down`` signals only pids whose ``/proc/<pid>/cmdline`` is still
the recorded one, so a recycled pid is never hit.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .hosts import HostKind
from .image import LabError, LabUnavailable, write_json
from .overlay import GUEST_PORT

READY = re.compile(r"kvmmm-lab: ready on port (\d+)")
STATE = "state.json"
DEFAULT_PORT_BASE = 47010
SHARE_TAG = "kvmmm_share"


@dataclass(frozen=True)
class HostSpec:
    """One lab host to boot."""

    name: str  # the guest's hostname, "lab-arm64-4k"
    kind: HostKind
    kernel: Path
    initrd: Path
    port: int  # host side, on 127.0.0.1
    console: Path
    mem: str = "3G"
    smp: int = 2
    share: Path | None = None


def qemu_args(h: HostSpec) -> list[str]:
    """The full QEMU command line of one host (an argument list, never a shell string)."""
    arch = h.kind.arch_info
    args = [
        arch.qemu, "-name", f"kvmmm-lab-{h.name},process=kvmmm-lab-{h.name}",
        "-machine", h.kind.machine, "-cpu", h.kind.cpu, "-accel", h.kind.accel,
        "-smp", str(h.smp), "-m", h.mem,
        "-display", "none", "-monitor", "none", "-serial", f"file:{h.console}",
        "-no-reboot",
        "-kernel", str(h.kernel), "-initrd", str(h.initrd),
        "-append", f"console={arch.console} panic=-1 rdinit=/init log_buf_len=4M {h.kind.cmdline}".strip(),
        "-netdev", f"user,id=net0,hostfwd=tcp:127.0.0.1:{h.port}-:{GUEST_PORT}",
        "-device", "virtio-net-pci,netdev=net0,romfile=",
    ]  # fmt: skip
    if h.share is not None:
        args += ["-fsdev", f"local,id=share0,path={h.share},security_model=none",
                 "-device", f"virtio-9p-pci,fsdev=share0,mount_tag={SHARE_TAG}"]  # fmt: skip
    return args


def port_is_free(port: int) -> bool:
    """Nothing listens on 127.0.0.1:port. SO_REUSEADDR as QEMU's hostfwd has it: the closed
    connections of the previous batch (TIME_WAIT for a minute) do not make the port busy."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def ephemeral_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def choose_ports(
    count: int,
    base: int,
    is_free: Callable[[int], bool] = port_is_free,
    ephemeral: Callable[[], int] = ephemeral_port,
) -> list[int]:
    """``base+1 .. base+count`` (stable, so a documented command line keeps working), each
    checked free on 127.0.0.1; ``base`` 0 takes ports the kernel picks."""
    if base == 0:
        ports: list[int] = []
        while len(ports) < count:
            port = ephemeral()
            if port not in ports:
                ports.append(port)
        return ports
    ports = [base + i for i in range(1, count + 1)]
    if ports[-1] > 65535:
        raise LabError(f"--port-base {base} leaves no room for {count} ports")
    busy = [p for p in ports if not is_free(p)]
    if busy:
        raise LabError(
            f"127.0.0.1:{busy[0]} is in use (a lab already up? `lab.py status`); "
            f"pass --port-base N for ports N+1.., or --port-base 0 for free ones"
        )
    return ports


@dataclass
class HostState:
    name: str
    kind: str
    port: int
    pid: int
    argv: list[str]
    console: str
    started_at: float
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def tx(self) -> str:
        return f"socket=127.0.0.1:{self.port}"


def save_state(run_dir: Path, hosts: Sequence[HostState]) -> None:
    write_json(run_dir / STATE, {"hosts": [asdict(h) for h in hosts]})


def load_state(run_dir: Path) -> list[HostState]:
    try:
        data = json.loads((run_dir / STATE).read_text())
    except (OSError, ValueError):
        return []
    try:
        return [HostState(**h) for h in data.get("hosts", [])]
    except TypeError:  # a state file of another version of the lab
        return []


#: pid -> the Popen of QEMUs this process started, to tell how one ended.
_children: dict[int, subprocess.Popen[bytes]] = {}


def proc_cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return raw.decode(errors="replace").split("\0")[:-1] or None


def is_ours(h: HostState, cmdline: Callable[[int], list[str] | None] = proc_cmdline) -> bool:
    """The pid still runs the QEMU we started (pids are recycled). For a child of this process
    its Popen says so; /proc/<pid>/cmdline is empty for a moment after exec."""
    child = _children.get(h.pid)
    if child is not None:
        return child.poll() is None
    return cmdline(h.pid) == h.argv


def stop(
    hosts: Iterable[HostState],
    timeout: float = 10.0,
    kill: Callable[[int, int], None] = os.kill,
    cmdline: Callable[[int], list[str] | None] = proc_cmdline,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, str]:
    """SIGTERM each host's QEMU by pid (QEMU exits cleanly on it), SIGKILL what is left after
    ``timeout``. Only pids still running their recorded command line. Returns name -> what happened."""
    outcome: dict[str, str] = {}
    pending: dict[str, HostState] = {}
    for h in hosts:
        if not is_ours(h, cmdline):
            outcome[h.name] = "not running"
            continue
        try:
            kill(h.pid, signal.SIGTERM)
            pending[h.name] = h
        except ProcessLookupError:
            outcome[h.name] = "not running"
    deadline = clock() + timeout
    while pending and clock() < deadline:
        for name, h in list(pending.items()):
            if not is_ours(h, cmdline):
                outcome[name] = f"stopped (pid {h.pid}, SIGTERM)"
                del pending[name]
        if pending:
            sleep(0.1)
    for name, h in pending.items():
        try:
            kill(h.pid, signal.SIGKILL)
            outcome[name] = f"killed (pid {h.pid}, SIGKILL after {timeout:g} s)"
        except ProcessLookupError:
            outcome[name] = f"stopped (pid {h.pid}, SIGTERM)"
    return outcome


def concat(parts: Sequence[Path], out: Path) -> None:
    """One initrd from several cpio parts (the kernel unpacks them in turn)."""
    with out.open("wb") as dst:
        for part in parts:
            with part.open("rb") as src:
                while chunk := src.read(1 << 22):
                    dst.write(chunk)


def exit_status(pid: int) -> int | None:
    """The exit status of a QEMU this process started and that has ended, else None."""
    child = _children.get(pid)
    return None if child is None else child.poll()


def launch(h: HostSpec) -> HostState:
    """Start one QEMU in its own session (a Ctrl-C of the terminal reaches only us; we stop it)."""
    h.console.write_text("")
    argv = qemu_args(h)
    log = h.console.with_suffix(".qemu.log")
    with log.open("w") as err:
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=err, stderr=subprocess.STDOUT,
                                    start_new_session=True)  # fmt: skip
        except FileNotFoundError:
            raise LabUnavailable(f"{argv[0]} not found: apt-get install {h.kind.arch_info.qemu_package}") from None
    _children[proc.pid] = proc
    return HostState(h.name, h.kind.name, h.port, proc.pid, argv, str(h.console), time.time())


def wait_ready(states: Sequence[HostState], timeout: float, poll: float = 0.5, keep_going: bool = False) -> dict[str, str]:
    """Until every console says the server listens; a QEMU that died or a timeout is a LabError
    quoting the end of that host's console or QEMU log. With ``keep_going``, the hosts that did
    not come up are returned instead ({name: why}), after waiting for the others."""
    pending = {s.name: s for s in states}
    failed: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    while pending:
        for name, s in list(pending.items()):
            text = _tail(Path(s.console), 64 * 1024)
            why = None
            if READY.search(text):
                del pending[name]
            elif not is_ours(s):
                qemu_log = _tail(Path(s.console).with_suffix(".qemu.log"), 4096).strip()
                how = f"exit status {exit_status(s.pid)}" if exit_status(s.pid) is not None else "gone"
                why = f"{name}: QEMU ended during boot ({how}): {qemu_log or last_lines(text)}"
            elif time.monotonic() > deadline:
                why = f"{name}: not ready after {timeout:g} s; console ends with: {last_lines(_tail(Path(s.console), 4096))}"
            if why is not None:
                if not keep_going:
                    raise LabError(why)
                failed[name] = why
                del pending[name]
        if pending:
            time.sleep(poll)
    return failed


def _tail(path: Path, size: int) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - size))
            return fh.read().decode(errors="replace")
    except OSError:
        return ""


def last_lines(text: str, n: int = 3) -> str:
    lines = [ln.strip() for ln in text.replace("\r", "").splitlines() if ln.strip()]
    return " | ".join(lines[-n:]) or "(nothing)"


REMOTE_FACTS = """
import json, platform
from pytest_kvmmm.host.report import fact_texts
from pytest_kvmmm.engine.discovery import Found, find_binary, search_roots
from pytest_kvmmm.host.emulation import emulated_by
from pytest_kvmmm.engine.guest_modes import read_help_modes
from pytest_kvmmm.host import probe_host
from pytest_kvmmm.provision.cache import default_cache_root

host = probe_host()
facts = host.to_json()
facts["environment"] = fact_texts(host, None, emulated_by())
found = find_binary("kvm_page_table_test", search_roots(None, default_cache_root(), platform.release()))
if isinstance(found, Found):
    modes = read_help_modes(found.path).modes
    facts["lab_supported_modes"] = [name for name, entry in modes.items() if entry.supported]
channel.send(json.dumps(facts))
"""


def remote_facts(port: int, timeout: float = 120.0) -> dict[str, Any]:
    """Ask a host, through its gateway, for its own probe (the plugin's, run there, with its page
    size), and the guest modes its kvm_page_table_test marks supported (the plugin reads ``-h``)."""
    import execnet

    gw = execnet.makegateway(f"socket=127.0.0.1:{port}")
    try:
        channel = gw.remote_exec(REMOTE_FACTS)
        return dict(json.loads(channel.receive(timeout)))
    finally:
        gw.exit()


def facts_of(h: HostState, tries: int = 3) -> dict[str, Any]:
    """``remote_facts`` of a host that is up, tried again when the gateway drops (a loaded
    machine: the first connection after boot was seen to end early); a LabError after that."""
    why = ""
    for _ in range(tries):
        try:
            return remote_facts(h.port)
        except Exception as exc:  # execnet raises EOFError, OSError, its own errors, and timeouts
            why = f"{type(exc).__name__}: {exc}"[:300]
            time.sleep(2)
    raise LabError(f"{h.name}: its gateway did not answer for its facts ({why}); console: {h.console}")


def summary(facts: Mapping[str, Any]) -> str:
    """One line of the facts the lab is about (the results' host facts: TDP, TDP MMU, 1 GiB
    guest pages, FWB, KVM mode, TTRem, page_idle ...) and the guest modes it supports."""
    from ..host.report import facts_line
    from .table import FACT_KEYS

    env = facts.get("environment") or {}
    parts = [f"{facts.get('hostname')}: {env.get('arch')} {env.get('kernel')}"]
    parts.append(facts_line(env, [k for k in FACT_KEYS if k not in ("arch", "kernel")]))
    modes = facts.get("lab_supported_modes")
    if modes is not None:
        parts.append(f"{len(modes)} guest modes supported ({' '.join(modes)})")
    return ", ".join(parts)
