"""Whose kernel complaint is it? Blame a test only for what its own selftest caused.

The kernel log is host-wide: beside other sessions (or this run's other xdist workers), a
WARN from someone else's selftest lands in every test's window. Dumps name the task that
hit them (``WARNING: CPU: 0 PID: 11749 at ...``, ``CPU: 0 UID: 0 PID: 11749 Comm:
dirty_log_test ...``, ``soft lockup - CPU#1 stuck for 22s! [comm:4242]``, ``task
comm:4242 blocked for more than``); the PID there is the thread's id. So:

* a line that names a process fails the test whose selftest tree had that PID (the runner
  remembers every process and thread it saw). A PID it did not see, with the selftest's
  own command name, is still ours when the test ran alone on the host (a thread too
  short-lived to be seen); any other PID is someone else's;
* a line that names no process (``kvm-pvm: INTERNAL_ERROR ...``) and a new taint fail the
  test only when it ran alone on the host: no other selftest of this run, no other
  pytest-kvmmm session;
* a line the catalogue says this selftest provokes on purpose is expected, never a failure.

Everything not blamed is reported as seen on the host meanwhile. Pure: no I/O, no pytest.
"""

from __future__ import annotations

import re
from collections.abc import Sequence, Set
from dataclasses import dataclass

from .kernel_health import Health, KernelLine

#: ``WARNING: CPU: 0 PID: 11749 at ...`` and ``CPU: 0 UID: 0 PID: 11749 Comm: dirty_log_test ...``.
_CPU_PID = re.compile(r"\bCPU: \d{1,6} (?:UID: \d{1,10} )?PID: (\d{1,10}) (?:Comm: (\S{1,64})|at )")
#: ``watchdog: BUG: soft lockup - CPU#1 stuck for 22s! [kvm_page_table_:4242]``.
_LOCKUP = re.compile(r"stuck for \d{1,9}s! \[([^\[\]]{1,64}):(\d{1,10})\]")
#: ``INFO: task kvm_page_table_:4242 blocked for more than 120 seconds.``
_HUNG = re.compile(r"\btask ([^\s]{1,64}):(\d{1,10}) blocked for more than")
_CUT = "------------[ cut here ]------------"
#: How far after a complaint the dump names its task (BUG -> #PF, PGD, Oops -> CPU: line).
LOOKAHEAD = 12
#: Kinds whose line is never followed by a dump of the task (do not borrow a later dump's PID).
_NO_DUMP = ("KVM internal error",)
#: The kernel keeps 15 characters of a task's name (TASK_COMM_LEN).
COMM_LEN = 15


@dataclass(frozen=True)
class Owner:
    pid: int
    comm: str | None


def named(text: str) -> Owner | None:
    """The task a kernel line names, if any."""
    m = _CPU_PID.search(text)
    if m:
        return Owner(int(m.group(1)), m.group(2))
    m = _LOCKUP.search(text) or _HUNG.search(text)
    if m:
        return Owner(int(m.group(2)), m.group(1))
    return None


def owner(lines: Sequence[KernelLine], i: int, kind: str) -> Owner | None:
    """The task the complaint ``lines[i]`` belongs to: named on the line, or in the dump that
    follows it (up to the next ``cut here``, at most ``LOOKAHEAD`` lines)."""
    found = named(lines[i].text)
    if found is not None or kind in _NO_DUMP:
        return found
    pid: int | None = None
    for line in lines[i + 1:i + 1 + LOOKAHEAD]:
        if line.text.startswith(_CUT):
            break
        found = named(line.text)
        if found is None:
            continue
        if found.comm is not None:  # the CPU:/Comm: line: the fullest answer
            return found if pid is None or pid == found.pid else Owner(pid, None)
        pid = pid if pid is not None else found.pid
    return Owner(pid, None) if pid is not None else None


@dataclass(frozen=True)
class Blame:
    """A run's kernel health split by whose it is."""

    #: What fails this test (its own complaints, and line/taint it alone can have caused).
    mine: Health
    #: Lines of other tasks, or unattributed lines while others ran: reported, never failing.
    meanwhile: tuple[str, ...] = ()
    #: Lines the catalogue says this selftest provokes on purpose.
    expected: tuple[str, ...] = ()
    #: A taint that appeared while others ran (reported, not failing).
    taint_meanwhile: int = 0


def blame(
    health: Health,
    pids: Set[int],
    comm: str,
    alone: bool,
    expected: Sequence[re.Pattern[str]] = (),
) -> Blame:
    """Split ``health`` into what this selftest caused and what others did meanwhile."""
    kinds = {text: kind for kind, text in health.complaints}
    lines = list(health.lines) or [KernelLine(i, 4, text) for i, (_, text) in enumerate(health.complaints)]
    mine: list[tuple[str, str]] = []
    meanwhile: list[str] = []
    wanted: list[str] = []
    others_named = False
    for i, line in enumerate(lines):
        kind = kinds.get(line.text)
        if kind is None:
            continue
        if any(p.search(line.text) for p in expected):
            wanted.append(line.text)
            continue
        who = owner(lines, i, kind)
        if who is None:
            ours = alone
        else:
            ours = who.pid in pids or (alone and who.comm is not None and who.comm == comm[:COMM_LEN])
            others_named = others_named or not ours
        if ours:
            mine.append((kind, line.text))
        else:
            meanwhile.append(line.text)
    # A new taint names no task: ours only when alone, and not when it came with another task's
    # dump and none of ours (a WARN taints the kernel W).
    taint_ours = alone and not (others_named and not mine)
    return Blame(
        mine=Health(health.lines, tuple(mine), health.new_taint if taint_ours else 0, health.noise),
        meanwhile=tuple(meanwhile),
        expected=tuple(wanted),
        taint_meanwhile=0 if taint_ours else health.new_taint,
    )
