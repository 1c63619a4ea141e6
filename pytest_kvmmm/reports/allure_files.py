"""The files an Allure results directory gets once per session: ``categories.json`` and
``environment.properties``. Pure apart from ``write_session_files``; no Allure import.

Categories sort failures into what a KVM lab acts on (a host kernel warning, a KVM internal
error, a host short of hugepages or memory, a timeout, a crash, the binary's own assertion),
and skips into "not built here" and "the host lacks a feature". Allure puts a result in
*every* category whose regex matches, so each category's regex also excludes the patterns
of the categories before it: a failure counts once, in the most telling class.

The environment names each host's facts (kernel, KVM flavour, TDP MMU, TTRem, hugetlb
pools, THP ...); several hosts in one directory (several runs, or xdist workers on lab
hosts) get ``<host>.<fact>`` keys.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..coordination.safefs import read_private, replace_file
from ..engine.discovery import SearchRoot
from ..host.report import ENV_KEYS
from .record import Record

#: Record field (``report.user_properties`` "kvm_selftest") with ``host.report.fact_texts()``, so the
#: controller can describe hosts it never probed (xdist workers on lab hosts).
RECORD_FACTS = "host_facts"
CATEGORIES_FILE = "categories.json"
ENVIRONMENT_FILE = "environment.properties"
#: An earlier run's session file is a few kB; anything larger is not read.
SESSION_FILE_LIMIT = 1 << 20


# --- categories --------------------------------------------------------------------------


@dataclass(frozen=True)
class Category:
    name: str
    #: A regex found anywhere in the status message (Allure matches the whole message with
    #: DOTALL; ``categories_json`` wraps it). No inline flags: Allure 3 matches in JavaScript.
    pattern: str
    statuses: tuple[str, ...]
    description: str


FAILED = ("failed", "broken")
#: Kernel lines as the kernel log prints them, one per line: an optional ``<4>`` level, an
#: optional ``[  123.456789]`` timestamp or ``kernel:`` (journal) prefix, then the marker.
KERNEL_LINE = (
    r"(?:^|\n)[ \t]*(?:<\d>)?(?:\[[ \t]*\d+\.\d+\][ \t]*)?(?:kernel: )?"
    r"(?:WARNING: |BUG: |Oops|Internal error: Oops|kernel BUG at )"
)

#: In order of precedence: a result lands in the first category that matches (each pattern
#: is excluded from the categories after it), so every failure counts once.
CATEGORIES: tuple[Category, ...] = (
    Category(
        "Kernel warning in the log", KERNEL_LINE, FAILED,
        "the host kernel logged WARNING:, BUG: or an Oops while the test ran: a host bug first",
    ),
    Category(
        "KVM internal error", r"INTERNAL_ERROR|KVM internal error", FAILED,
        "KVM_EXIT_INTERNAL_ERROR (exit_reason=INTERNAL_ERROR): KVM could not handle a guest exit",
    ),
    Category(
        "Host resource shortage",
        r"pool (?:has|holds) \d+|hugetlb pool|Cannot allocate memory|ENOMEM|errno[=:] ?12\b|too little free memory"
        r"|MiB of available memory|online CPUs, this host has|[Nn]ot enough memory|[Oo]ut of memory",
        (*FAILED, "skipped"),
        "hugetlb pages, memory or CPUs the host did not have (a skip before running, or ENOMEM)",
    ),
    Category(
        "Timeout", r"timed out after", FAILED,
        "the binary did not finish in --kvm-timeout; its process group was killed",
    ),
    Category(
        "Crash", r"crashed: killed by SIG", FAILED,
        "the binary was killed by a signal (SIGSEGV, SIGABRT, SIGKILL ...)",
    ),
    Category(
        "Guest assertion failure", r"==== Test Assertion Failure ====| exit 254: ", FAILED,
        "TEST_ASSERT in the selftest or its guest code (exit 254): the binary's own check failed",
    ),
    Category(
        "Selftest binary missing", r"not found in .*kvmmm-build|no KVM selftests found|exists but is not executable",
        ("skipped",),
        "the binary is not built here: run kvmmm-build",
    ),
    Category(
        "Host lacks a feature", r"", ("skipped",),
        "every other skip: a KVM capability, parameter, architecture or kernel option is missing",
    ),
)


def _regex(index: int, categories: Sequence[Category] = CATEGORIES) -> str:
    """The full-match regex of category ``index``: its pattern, and none of an earlier one's."""
    me = categories[index]
    earlier = [c.pattern for c in categories[:index] if set(c.statuses) & set(me.statuses) and c.pattern]
    guard = f"(?!.*(?:{'|'.join(earlier)}))" if earlier else ""
    return f"{guard}.*(?:{me.pattern}).*" if me.pattern else f"{guard}.*"


def categories_json(categories: Sequence[Category] = CATEGORIES) -> list[dict[str, Any]]:
    """``categories.json``: Allure (Java ``matches()`` with DOTALL) puts a result in every
    category whose regex matches, so each regex also excludes the ones before it."""
    return [
        {"name": c.name, "matchedStatuses": list(c.statuses), "messageRegex": _regex(i, categories), "description": c.description}
        for i, c in enumerate(categories)
    ]


def categorize(status: str, message: str, categories: Sequence[Category] = CATEGORIES) -> list[str]:
    """The categories Allure will give a result, computed the way Allure 2 does (for tests)."""
    return [
        c["name"]
        for c in categories_json(categories)
        if status in c["matchedStatuses"] and re.fullmatch(c["messageRegex"], message, re.DOTALL)
    ]


# --- environment ------------------------------------------------------------------------

#: The facts per host, in the order they are written.
def selftests_build(roots: Sequence[SearchRoot]) -> str | None:
    """Which selftests build a run uses, from the engine's search roots (the first one wins)."""
    if not roots:
        return None
    root = roots[0]
    return f"{root.path} ({root.origin})"


def hosts_from_records(records: Iterable[Record]) -> dict[str, dict[str, str]]:
    """``{host: facts}`` from the session's selftest records (the last record of a host wins)."""
    hosts: dict[str, dict[str, str]] = {}
    for record in records:
        if record.host_facts is not None and record.host:
            hosts[record.host] = dict(record.host_facts)
    return hosts


_CONTROL = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\f": "\\f"}


def _escape(text: str, key: bool = False) -> str:
    """Java ``.properties`` escaping. Allure reads the file as ISO-8859-1, so anything
    outside printable ASCII becomes ``\\uXXXX`` (UTF-16 code units, as Java wants)."""
    out = []
    for i, ch in enumerate(text):
        if ch == "\\":
            out.append("\\\\")
        elif ch in _CONTROL:
            out.append(_CONTROL[ch])
        elif (key and ch in " =:#!") or (i == 0 and ch == " "):
            out.append("\\" + ch)
        elif not " " <= ch <= "~":
            units = ch.encode("utf-16-be")
            out += [f"\\u{int.from_bytes(units[j:j + 2], 'big'):04x}" for j in range(0, len(units), 2)]
        else:
            out.append(ch)
    return "".join(out)


def _unescape(text: str) -> str:
    def one(m: re.Match[str]) -> str:
        s = m.group(1)
        if s.startswith("u") and len(s) == 5:
            return chr(int(s[1:], 16))
        return {"n": "\n", "r": "\r", "t": "\t", "f": "\f"}.get(s, s)

    plain = re.sub(r"\\(u[0-9a-fA-F]{4}|.)", one, text)
    return plain.encode("utf-16", "surrogatepass").decode("utf-16")  # rejoin surrogate pairs


def parse_properties(text: str) -> dict[str, str]:
    """Read back a ``.properties`` file (what this module writes, and plain ``key=value`` files)."""
    out: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.lstrip()
        if not line or line[0] in "#!":
            continue
        m = re.match(r"((?:\\.|[^\\=:\s])*)\s*[=:\s]\s*(.*)$", line) or re.match(r"((?:\\.|[^\\=:\s])*)()$", line)
        if m:
            out[_unescape(m.group(1))] = _unescape(m.group(2))
    return out


def environment_properties(hosts: Mapping[str, Mapping[str, str]], others: Mapping[str, str] | None = None) -> str:
    """``environment.properties``: one host as plain keys plus ``host``; several hosts as
    ``hosts`` plus ``<host>.<fact>`` keys, so a multi-host report names each host's facts.
    ``others`` are keys another tool wrote into the file: they are kept."""
    lines = ["# pytest-kvmmm: host facts of the results in this directory"]
    names = sorted(hosts)
    if len(names) == 1:
        lines.append(f"host={_escape(names[0])}")
        lines += [f"{k}={_escape(v)}" for k, v in _ordered(hosts[names[0]])]
    elif names:
        lines.append(f"hosts={_escape(', '.join(names))}")
        for name in names:
            lines += [f"{_escape(f'{name}.{k}', key=True)}={_escape(v)}" for k, v in _ordered(hosts[name])]
    lines += [f"{_escape(k, key=True)}={_escape(v)}" for k, v in sorted((others or {}).items())]
    return "\n".join(lines) + "\n"


def _ordered(facts: Mapping[str, str]) -> list[tuple[str, str]]:
    known = [(k, facts[k]) for k in ENV_KEYS if k in facts]
    return known + sorted((k, v) for k, v in facts.items() if k not in ENV_KEYS)


def split_environment(props: Mapping[str, str]) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    """The inverse of ``environment_properties``: ``({host: facts}, other keys)``."""
    hosts: dict[str, dict[str, str]] = {}
    others: dict[str, str] = {}
    single = props.get("host")
    names = [n.strip() for n in props.get("hosts", "").split(",") if n.strip()]
    for key, value in props.items():
        if key in ("host", "hosts"):
            continue
        if single is not None and key in ENV_KEYS:
            hosts.setdefault(single, {})[key] = value
            continue
        name, _, fact = key.rpartition(".")
        if name in names and fact:
            hosts.setdefault(name, {})[fact] = value
        else:
            others[key] = value
    for name in ([single] if single else names):
        hosts.setdefault(name, {})
    return hosts, others


# --- session files ----------------------------------------------------------------------


def _encoding(path: Path) -> str:
    return "latin-1" if path.suffix == ".properties" else "utf-8"


def _write(path: Path, text: str) -> None:
    """Atomically (an exclusive temp file renamed over a regular file only, never through a
    link): a report generated while the session ends never reads half a file. 0644: mkstemp's
    0600 would hide it from a report job of another user."""
    replace_file(path, text.encode(_encoding(path), errors="replace"), mode=0o644)


def _read_ours(path: Path) -> str:
    """An earlier run's session file, when it is ours: a link (to ``/etc/shadow``, say) or a file
    someone else could have written is not read, and its content never reaches the report."""
    try:
        return read_private(path, SESSION_FILE_LIMIT).decode(_encoding(path), errors="replace")
    except OSError:
        return ""


def write_session_files(directory: Path, hosts: Mapping[str, Mapping[str, str]]) -> list[Path]:
    """Write ``categories.json`` and ``environment.properties`` into the results ``directory``.

    Called once, by the process that owns the session (the xdist controller), after the
    tests: it touches only these two files, never the results the workers wrote. Facts of
    hosts already in ``environment.properties`` (an earlier run into the same directory,
    without ``--clean-alluredir``) are kept, a host seen again is replaced, and keys other
    tools wrote stay. Categories of other tools in ``categories.json`` are kept after ours.
    """
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    categories = categories_json()
    cat_path = directory / CATEGORIES_FILE
    ours = {c["name"] for c in categories}
    try:
        existing = json.loads(_read_ours(cat_path) or "[]")
    except (ValueError, RecursionError):
        existing = []
    if isinstance(existing, list):
        categories += [c for c in existing if isinstance(c, dict) and c.get("name") not in ours]
    _write(cat_path, json.dumps(categories, indent=2) + "\n")
    written.append(cat_path)

    if hosts:
        env_path = directory / ENVIRONMENT_FILE
        old = parse_properties(_read_ours(env_path))
        known, others = split_environment(old)
        merged = {**known, **{name: dict(facts) for name, facts in hosts.items()}}
        _write(env_path, environment_properties(merged, others))
        written.append(env_path)
    return written
