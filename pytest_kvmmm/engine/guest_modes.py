"""Guest modes by stable name, mapped to a build's numeric ``-m`` id at run time.

The suite parametrizes over the names of the kernel's ``enum vm_guest_mode``
(``p40v48_4k`` for VM_MODE_P40V48_4K), never over ids: the ids shift between versions
(x86's default is 8 in 6.1 and 9 from 6.8, when P52V48_16K was inserted; 6.16 inserts
P47V47_16K before P36V47_16K; 6.19 renames PXXV48_4K to PXXVYY_4K). Only a binary's own
``-h`` table says which id a name has *in that build* and whether this host supports it,
so the table is read once per binary and the test is skipped, naming the mode, when the
build does not know the mode or the host does not support it.

The catalogue is static and host-independent on purpose: collection must produce the
same test ids on every machine, so a mode that cannot run here is a visible skip, never
a silently missing test.
"""

from __future__ import annotations

import itertools
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from . import textsafe
from .metrics import guest_mode_name
from .process import run
from .textsafe import MAX_PARSE_LINE, lines_with

#: Pseudo-mode: pass no ``-m`` and let the binary run every mode it marks supported.
DEFAULT_MODE = "default"
#: How long ``-h`` may take. It does little, but on arm64 the constructor creates a
#: scratch VM to find the supported page sizes.
HELP_TIMEOUT_S = 10.0

X86_64, AARCH64, S390X, RISCV64, LOONGARCH64 = "x86_64", "aarch64", "s390x", "riscv64", "loongarch64"
ARCHES = (X86_64, AARCH64, S390X, RISCV64, LOONGARCH64)
#: Other spellings of ``uname -m`` values (kernel directory names, Debian architectures).
ARCH_ALIASES: Mapping[str, str] = MappingProxyType({
    "amd64": X86_64, "x86": X86_64, "arm64": AARCH64, "s390": S390X,
    "riscv": RISCV64, "loongarch": LOONGARCH64,
})  # fmt: skip

_NAME = re.compile(r"^p(?P<pa>\d+|xx)v(?P<va>\d+|yy)_(?P<page>\d+)k$")


@dataclass(frozen=True)
class GuestMode:
    """One ``enum vm_guest_mode`` member, as the suite names it."""

    name: str
    pa_bits: int | None  # None: "ANY", taken from the host (x86 reads CPUID)
    va_bits: int | None  # None: "48 or 57" (6.19 x86, 5-level paging when KVM offers LA57)
    page_kib: int
    arches: tuple[str, ...]  # the arches whose selftests can mark it supported
    history: str  # when it appeared or changed, for "unknown to this build" reasons

    @property
    def description(self) -> str:
        """The ``-h`` string, single-spaced: ``PA-bits:52, VA-bits:48, 4K pages``."""
        pa = "ANY" if self.pa_bits is None else self.pa_bits
        va = "48 or 57" if self.va_bits is None else self.va_bits
        return f"PA-bits:{pa}, VA-bits:{va}, {self.page_kib}K pages"


def _mode(name: str, arches: tuple[str, ...], history: str) -> GuestMode:
    """Fields derived from the name, so name and numbers cannot disagree."""
    m = _NAME.match(name)
    if m is None:
        raise ValueError(f"not a guest-mode name: {name!r}")
    pa, va = m.group("pa"), m.group("va")
    return GuestMode(
        name, None if pa == "xx" else int(pa), None if va == "yy" else int(va),
        int(m.group("page")), arches, history,
    )  # fmt: skip


_ARM, _ARM_RV = (AARCH64,), (AARCH64, RISCV64)
_OLD, _516 = "in the selftests since 5.10 or earlier", "added around 5.14-5.16"
_RV_SATP = "riscv satp modes, posted Nov 2025 after P36V47_16K; merge not verified"

#: Every mode name across versions, in enum order of the newest tree (the riscv satp
#: modes last, pxxvyy_4k next to the pxxv48_4k it renamed).
GUEST_MODES: tuple[GuestMode, ...] = (
    _mode("p52v48_4k", _ARM_RV, _OLD),
    _mode("p52v48_16k", _ARM, "added in 6.8 (arm64 LPA2)"),
    _mode("p52v48_64k", _ARM, _OLD),
    _mode("p48v48_4k", _ARM_RV, _OLD),
    _mode("p48v48_16k", _ARM, _516),
    _mode("p48v48_64k", _ARM, _OLD),
    _mode("p40v48_4k", _ARM_RV, _OLD),
    _mode("p40v48_16k", _ARM, _516),
    _mode("p40v48_64k", _ARM, _OLD),
    _mode("pxxv48_4k", (X86_64,), "renamed pxxvyy_4k in 6.19"),
    _mode("pxxvyy_4k", (X86_64,), "added in 6.19, renaming pxxv48_4k"),
    _mode("p47v64_4k", (S390X,), _OLD),
    _mode("p44v64_4k", (S390X,), _516),
    _mode("p36v48_4k", _ARM, _516),
    _mode("p36v48_16k", _ARM, _516),
    _mode("p36v48_64k", _ARM, _516),
    _mode("p47v47_16k", (LOONGARCH64,), "added in 6.16 (LoongArch)"),
    _mode("p36v47_16k", _ARM, _516),
    *(_mode(f"p{pa}v{va}_4k", (RISCV64,), _RV_SATP) for pa in (56, 50, 41) for va in (57, 48, 39)),
)
BY_NAME: Mapping[str, GuestMode] = MappingProxyType({m.name: m for m in GUEST_MODES})


def normalize_arch(machine: str) -> str:
    return ARCH_ALIASES.get(machine.strip().lower(), machine.strip().lower())


def modes_for_arch(machine: str) -> tuple[str, ...]:
    """The catalogue names an arch uses (``uname -m`` or an alias); () for an unknown arch."""
    arch = normalize_arch(machine)
    return tuple(m.name for m in GUEST_MODES if arch in m.arches)


def parse_mode_selection(value: str) -> tuple[str, ...]:
    """``--kvm-guest-modes``: ``default``, ``all``, ``arch:<machine>`` or names, comma-separated.

    ``all`` is every catalogue name of every arch, not this host's: the test ids must not
    depend on where the suite is collected. Duplicates are dropped, order is kept. The
    ValueError's message does not name the option: the caller knows where the value came
    from (option, ini) and prefixes it.
    """
    out: list[str] = []
    for raw in value.split(","):
        item = raw.strip().lower()
        if item in (DEFAULT_MODE, *BY_NAME):
            names: tuple[str, ...] = (item,)
        elif item == "all":
            names = tuple(BY_NAME)
        elif item.startswith("arch:"):
            names = modes_for_arch(item[5:])
            if not names:
                raise ValueError(f"unknown arch {item[5:]!r}; valid: {', '.join(ARCHES)}")
        else:
            what = f"unknown guest mode {raw.strip()!r}" if item else "empty entry"
            raise ValueError(
                f"{what}; use {DEFAULT_MODE}, all, arch:<{'|'.join(ARCHES)}> "
                f"or names from: {', '.join(BY_NAME)}"
            )
        out.extend(n for n in names if n not in out)
    return tuple(out)


@dataclass(frozen=True)
class ModeEntry:
    """One row of a build's ``-h`` mode table."""

    name: str
    mode_id: int
    text: str  # the string as printed, "PA-bits:ANY, VA-bits:48,  4K pages"
    supported: bool


#: Rows of a table looked at: the newest enum has 27 modes.
MAX_TABLE_ROWS = 256
_SUPPORTED = "(supported)"


def _table_row(line: str) -> ModeEntry | None:
    """``printf("         %d:    %s%s\n", i, string, supported ? " (supported)" : "")``, the
    same from 5.10 to 6.19; the string changes, so its name comes from ``guest_mode_name``.
    Read with string operations: a row is short, a line of garbage may be a megabyte."""
    if len(line) > MAX_PARSE_LINE or not line[:1].isspace():
        return None
    number, colon, rest = line.partition(":")
    number = number.strip(" \t")
    text = rest.rstrip(" \t\r")
    if not colon or not number.isdigit() or not number.isascii() or not rest[:1].isspace():
        return None
    text = text.lstrip(" \t")
    supported = text.endswith(_SUPPORTED) and text[: -len(_SUPPORTED)][-1:] in (" ", "\t")
    if supported:
        text = text[: -len(_SUPPORTED)].rstrip(" \t")
    name = guest_mode_name(text) if text.startswith("PA-bits:") else None
    return None if name is None else ModeEntry(name, int(number), text, supported)


def parse_mode_help(text: str) -> dict[str, ModeEntry]:
    """Name -> entry from a ``-h`` output; ``{}`` when there is no table (or only garbage)."""
    entries: dict[str, ModeEntry] = {}
    for line in itertools.islice(lines_with(text, "PA-bits:"), MAX_TABLE_ROWS):
        entry = _table_row(line)
        if entry is not None and entry.name not in entries:
            entries[entry.name] = entry
    return entries


@dataclass(frozen=True)
class HelpModes:
    """What one binary's ``-h`` said about guest modes, or why it said nothing."""

    binary: str  # the file name, for messages
    modes: Mapping[str, ModeEntry]
    problem: str | None  # set when there is no table: timeout, no start, no -m, early skip


def _problem(name: str, stdout: str, stderr: str, rc: int | None) -> str:
    """Why a finished ``-h`` printed no table; quotes a skip line when the binary skipped first."""
    skip = next((ln for text in (stdout, stderr) for ln in lines_with(text, "# SKIP")), None)
    why = f"it skipped before printing help: '{textsafe.line(skip)}'" if skip else "it takes no guest-mode -m"
    return f"`{name} -h` (exit {rc}) prints no guest-mode table; {why}"


def _read_help(binary: Path, timeout: float) -> HelpModes:
    """Run ``-h`` and judge the text, not the exit code: 0, 1, 4 and 255 all occur."""
    name = binary.name
    res = run([str(binary), "-h"], timeout=timeout)
    if res.start_error:
        return HelpModes(name, {}, res.start_error)
    if res.timed_out:
        return HelpModes(name, {}, f"`{name} -h` did not finish within {timeout:g} s")
    modes = parse_mode_help(res.stdout + "\n" + res.stderr)
    problem = None if modes else _problem(name, res.stdout, res.stderr, res.returncode)
    return HelpModes(name, MappingProxyType(modes), problem)


_cache: dict[tuple[str, int | None], HelpModes] = {}
_lock = threading.Lock()


def read_help_modes(binary: Path, timeout: float = HELP_TIMEOUT_S) -> HelpModes:
    """The binary's mode table, cached per process by real path and mtime.

    Failures are cached too, so a binary that hangs on ``-h`` costs one timeout per
    session, not one per parametrized test. The mtime keeps a rebuild from being served
    the old table. The lock is held while ``-h`` runs so concurrent callers wait for the
    one run instead of starting their own.
    """
    path = binary.resolve()
    try:
        mtime: int | None = path.stat().st_mtime_ns
    except OSError:
        mtime = None
    key = (str(path), mtime)
    with _lock:
        if key not in _cache:
            _cache[key] = _read_help(binary, timeout)
        return _cache[key]


def clear_cache() -> None:
    with _lock:
        _cache.clear()


@dataclass(frozen=True)
class ModeResolution:
    """A mode name resolved against one build; ``reason`` is the skip reason when not runnable."""

    name: str
    mode_id: int | None  # the id to pass as -m; None for "default" or a mode the build lacks
    supported: bool
    reason: str | None

    @property
    def runnable(self) -> bool:
        return self.reason is None


class ModeUnavailable(Exception):
    """The mode cannot run with this binary here; ``str()`` is the skip reason."""

    def __init__(self, resolution: ModeResolution) -> None:
        super().__init__(resolution.reason)
        self.resolution = resolution


def _label(name: str) -> str:
    mode = BY_NAME.get(name)
    return f"{name} ({mode.description})" if mode else name


def arch_mismatch(name: str, machine: str | None) -> str | None:
    """Why ``name`` cannot run on a ``machine`` host (another architecture's mode), or None.
    Clearer than what the build's ``-h`` says (every build lists every arch's modes), and
    decided without running it."""
    mode = BY_NAME.get(name)
    if mode is None or not machine:
        return None
    arch = normalize_arch(machine)
    if arch in mode.arches:
        return None
    return f"guest mode {_label(name)} is for {' or '.join(mode.arches)} hosts, this host is {arch}"


def resolve_mode(binary: Path, name: str, timeout: float = HELP_TIMEOUT_S) -> ModeResolution:
    """Map ``name`` to this build's id and support flag. ``default`` never runs ``-h``."""
    if name == DEFAULT_MODE:
        return ModeResolution(name, None, True, None)
    help_ = read_help_modes(binary, timeout)
    if help_.problem is not None:
        return ModeResolution(name, None, False, f"guest mode {_label(name)} cannot be selected: {help_.problem}")
    entry = help_.modes.get(name)
    if entry is None:
        mode = BY_NAME.get(name)
        history = f"; {name}: {mode.history}" if mode else ""
        return ModeResolution(name, None, False, (
            f"guest mode {_label(name)} is unknown to this build of {help_.binary} "
            f"(its -h lists {len(help_.modes)} modes{history})"
        ))  # fmt: skip
    if not entry.supported:
        ok = [e.name for e in help_.modes.values() if e.supported]
        return ModeResolution(name, entry.mode_id, False, (
            f"guest mode {_label(name)} is not supported by this host/build "
            f"({help_.binary} -h lists it as id {entry.mode_id} without '(supported)'; "
            f"supported: {', '.join(ok) or 'none'})"
        ))  # fmt: skip
    return ModeResolution(name, entry.mode_id, True, None)


def mode_args(binary: Path, name: str, timeout: float = HELP_TIMEOUT_S) -> tuple[str, ...]:
    """``()`` for ``default``, ``("-m", "<id>")`` for a runnable mode; else ModeUnavailable.

    It raises rather than returning ``()`` for a mode that cannot run: falling back to the
    binary's default would run other modes under this mode's test id and metrics.
    """
    res = resolve_mode(binary, name, timeout)
    if not res.runnable:
        raise ModeUnavailable(res)
    return () if res.mode_id is None else ("-m", str(res.mode_id))
