"""``--kvm-counters`` for one pytest process: resolve once, count each selftest run.

``CounterSession.create`` resolves the selection against this host's tracefs and opens
every counter once, to find out up front whether counting works (permissions, filters):
when it does not, ``note`` says why and how to enable it, the session counts nothing and
no test fails for it. ``vm`` stats (``vmstats.py``) are KVM's own per-VM statistics from
debugfs, beside the tracepoints or alone. ``RunCounter`` counts one run: open just before the selftest is
forked (so nothing the plugin does itself, such as the scratch-VM probe, is counted), a read
at each stage's line, a last read after the exit.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .model import Counters, RunCounts
from .perf import CounterSpec, CountingError, LinuxSyscalls, OpenCounters, Syscalls
from .sets import FAULT_CLASSES, expand, resolve
from .stages import StageTracker
from .tracefs import find_tracefs, read_ids, split_class, subsystems
from .vmstats import VmSampler, find_kvm_dir, offered, wanted

_FORMAT_FIELD_BYTES = 1 << 16
#: Tries of a read while the selftest runs.
READ_ATTEMPTS = 5
#: Tries of the last read, after the selftest exited.
FINAL_ATTEMPTS = 10


@dataclass
class CounterSession:
    specs: Mapping[str, CounterSpec]
    syscalls: Syscalls | None
    #: Why counting is off or partial, for the header (empty when all is well).
    note: str = ""
    #: A failure while counting a run (the first one), reported once at the end.
    failures: list[str] = field(default_factory=list)
    #: ``vm:`` stats to sample from debugfs, and where (None: not asked for, or not possible).
    vm_names: tuple[str, ...] = ()
    kvm_dir: Path | None = None

    @property
    def active(self) -> bool:
        return self.counting or self.sampling

    @property
    def counting(self) -> bool:
        return bool(self.specs) and self.syscalls is not None

    @property
    def sampling(self) -> bool:
        return bool(self.vm_names) and self.kvm_dir is not None

    @property
    def events(self) -> tuple[str, ...]:
        return (*(self.specs if self.counting else ()), *(self.vm_names if self.sampling else ()))

    @classmethod
    def create(
        cls,
        selection: Sequence[str],
        arch: str,
        root: Path = Path("/"),
        syscalls: Callable[[], Syscalls] = LinuxSyscalls,
        euid: int | None = None,
    ) -> CounterSession:
        vm_names, rest = wanted(selection, arch)
        session = cls._tracepoints(rest, arch, root, syscalls) if rest else cls({}, None)
        if not vm_names:
            return session
        kvm_dir, why = find_kvm_dir(root, euid=euid)
        if kvm_dir is not None:
            found = offered(kvm_dir, vm_names)
            session.vm_names, session.kvm_dir = found.names, kvm_dir
            why = found.note() if found.names else f"per-VM stats off: {found.note()}"
        session.note = "; ".join(n for n in (session.note, why) if n)
        return session

    @classmethod
    def _tracepoints(
        cls, selection: Sequence[str], arch: str, root: Path, syscalls: Callable[[], Syscalls]
    ) -> CounterSession:
        tracefs = find_tracefs(root)
        events = tracefs.events_dir()
        if events is None:
            return cls({}, None, f"counters off: {tracefs.problem}")
        patterns = [p for group in expand(selection, arch) for p in group]
        ids = read_ids(events, subsystems(patterns))
        resolved = resolve(selection, arch, ids)
        notes = [f"not on this host: {', '.join(resolved.missing)}"] if resolved.missing else []
        specs: dict[str, CounterSpec] = {}
        for name, event_id in resolved.counters.items():
            base, cls_name = split_class(name)
            if cls_name is None:
                specs[name] = CounterSpec(event_id)
                continue
            esr = _esr_field(events, base)
            if esr is None:
                notes.append(f"{name}: {base} has no ESR field in its format")
                continue
            specs[name] = CounterSpec(event_id, FAULT_CLASSES[cls_name].format(f=esr))
        if not specs:
            return cls({}, None, "counters off: none of " + ", ".join(selection) + f" is offered by {tracefs.path}/events")
        try:
            sys = syscalls()
            OpenCounters(specs, sys).close()  # can we? (permissions, filters) before any test
        except CountingError as exc:
            return cls({}, None, f"counters off: {exc}")
        return cls(specs, sys, "; ".join(notes))

    def start(self, binary: str) -> RunCounter | None:
        """Counters for one run of ``binary``, open from now; None when counting is off or failed."""
        if not self.active:
            return None
        counters = None
        if self.counting:
            assert self.syscalls is not None
            try:
                counters = OpenCounters(self.specs, self.syscalls)
            except CountingError as exc:
                self.failures.append(str(exc))
                return None
        sampler = None
        if self.sampling:
            assert self.kvm_dir is not None
            sampler = VmSampler(self.kvm_dir, self.vm_names)
            sampler.start()
        return RunCounter(counters, StageTracker(binary), sampler)

    def counters(self, runs: RunCounts) -> Counters:
        return Counters(self.events, (runs,))


def _esr_field(events: Path, event: str) -> str | None:
    """The ESR's field name in ``kvm_guest_fault``'s format (``hsr`` in 6.x kernels)."""
    subsys, name = event.split(":", 1)
    try:
        with (events / subsys / name / "format").open(errors="replace") as f:
            text = f.read(_FORMAT_FIELD_BYTES)
    except OSError:
        return None
    for candidate in ("esr", "hsr"):
        if f" {candidate};" in text:
            return candidate
    return None


class RunCounter:
    """The counters of one run; ``on_line`` is the runner's hook, ``finish`` closes them.

    A read while the selftest runs can fail for a moment (the kernel answers ECHILD while a
    new thread's inherited group is being set up): it is retried, and a stage whose read
    still fails is left out, with the one after it (its start is unknown), never the run."""

    def __init__(self, counters: OpenCounters | None, stages: StageTracker, sampler: VmSampler | None = None) -> None:
        self._counters = counters
        self._stages = stages
        self._sampler = sampler
        self._last: dict[str, int] | None = {name: 0 for name in (counters.fds if counters else ())}
        self._marks: list[tuple[str | None, str, dict[str, int]]] = []
        self.error: str | None = None
        #: Stages left out, and why (the first reason).
        self.unread: list[str] = []
        self.unread_why = ""

    def on_line(self, line: str) -> None:
        stage = self._stages.stage_of(line)
        if stage is None:
            return
        now = self._read_running()
        sampled = self._sampler.stage() if self._sampler is not None else {}
        if now is None or self._last is None:
            self.unread.append(stage[1])
            self._last = now
            return
        delta = {k: v - self._last.get(k, 0) for k, v in now.items()}
        self._last = now
        self._marks.append((*stage, {**delta, **sampled}))

    def _read_running(self) -> dict[str, int] | None:
        if self._counters is None:
            return {}
        for attempt in range(READ_ATTEMPTS):
            try:
                return self._counters.read()
            except CountingError as exc:
                self.unread_why = self.unread_why or str(exc)
                time.sleep(0.001 * (attempt + 1))
        return None

    def _read_final(self) -> dict[str, int]:
        """The last read, after the exit. The kernel can still answer ECHILD for a moment (an
        exiting thread's inherited group is torn down apart from its parent's: seen on a loaded
        TCG lab host): retried for up to about half a second, then the error stands."""
        if self._counters is None:
            return {}
        for attempt in range(FINAL_ATTEMPTS):
            try:
                return self._counters.read()
            except CountingError:
                if attempt == FINAL_ATTEMPTS - 1:
                    raise
                time.sleep(min(0.1, 0.002 * 2**attempt))
        raise AssertionError("unreachable")

    @property
    def note(self) -> str:
        """Why some stages have no counts (for the result's notes), or ""."""
        if not self.unread:
            return ""
        return f"no counts for stage(s) {', '.join(self.unread)}: {self.unread_why}"

    def finish(self) -> RunCounts | None:
        """The run's counts (children folded in: the selftest has exited); closes the counters."""
        if self._sampler is not None:
            self._sampler.stop()
        try:
            total = self._read_final()
        except CountingError as exc:
            self.error = self.error or str(exc)
            return None
        finally:
            self.close()
        if self._sampler is not None:
            total.update(self._sampler.total())
        stages: dict[str, dict[str, int]] = {}
        for mode, stage, delta in self._marks:
            name = self._stages.name(mode, stage)
            into = stages.setdefault(name, {})
            for k, v in delta.items():
                into[k] = into.get(k, 0) + v
        return RunCounts(total, stages)

    def close(self) -> None:
        if self._sampler is not None:
            self._sampler.stop()
        if self._counters is not None:
            self._counters.close()
