"""Known issues: failures a lab expects on some hosts, each with a link, matched by test and host.

A known-issues file (TOML, YAML or JSON; ini ``kvm_known_issues``) lists entries::

    [[issue]]
    id = "pvm-dirty-ring"
    tests = ["*::test_dirty_log[dirty_ring]"]      # '*' and '?' wildcards, or "re:REGEX"
    failure = "dirty bit set .* missing"            # optional: a regex the failure text must contain
    link = "https://bugs.example.org/123"
    note = "PVM loses dirty-ring entries about every other run"
    [issue.host]                                   # every fact must match; none: any host
    arch = "x86_64"
    kvm = "kvm_pvm"                                 # any fact: the record's host facts, or a dotted
    kernel = ">=6.12, <6.19"                        # key of --kvm-host-info json (kvm.tdp_mmu,
    cpu_model = "AMD EPYC*"                         # cpu.model_name ...); kernel takes a range

A test id pattern matches the stable node id or its last part (``test_dirty_log[dirty_ring]``);
brackets in ids are literal. Pure: the plugin hands in the node id, the host's facts and the
failure text, and turns a match into an expected failure. Parsing is bounded by the file size.
"""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..coordination.safefs import TooLarge, read_bounded

MAX_FILE_BYTES = 1 << 20
#: Short names for the facts a lab writes most, and the dotted --kvm-host-info keys they stand for.
ALIASES = {"cpu_model": "cpu.model_name", "flavour": "kvm.flavour", "hostname": "hostname"}
_RANGE = re.compile(r"^\s*(>=|<=|==|!=|>|<)\s*([0-9][0-9.]*)\s*$")


class KnownIssuesError(ValueError):
    """A known-issues file that cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class KnownIssue:
    id: str
    tests: tuple[re.Pattern[str], ...]
    link: str
    note: str = ""
    failure: re.Pattern[str] | None = None
    host: Mapping[str, str] = field(default_factory=dict)

    @property
    def reason(self) -> str:
        """The expected-failure reason: the link first, so every report carries it."""
        return f"known issue {self.id}: {self.link}" + (f" ({self.note})" if self.note else "")

    def to_json(self) -> dict[str, str]:
        return {"id": self.id, "link": self.link, "note": self.note}


def _glob(pattern: str) -> re.Pattern[str]:
    if pattern.startswith("re:"):
        return re.compile(pattern[3:])
    return re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern) + r"\Z")


def _fact_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(_fact_text(v) for v in value)
    return "" if value is None else str(value)


def flatten(data: Mapping[str, Any], prefix: str = "", depth: int = 0) -> dict[str, str]:
    """``{"kvm": {"tdp_mmu": False}}`` -> ``{"kvm.tdp_mmu": "false"}`` (--kvm-host-info json keys)."""
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and depth < 6:
            out.update(flatten(value, name + ".", depth + 1))
        else:
            out[name] = _fact_text(value)
    return out


def _entry(raw: Any, where: str) -> KnownIssue:
    if not isinstance(raw, Mapping):
        raise KnownIssuesError(f"{where}: an entry must be a table/object, got {type(raw).__name__}")
    unknown = set(raw) - {"id", "tests", "test", "link", "note", "failure", "host"}
    if unknown:
        raise KnownIssuesError(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}")
    tests = raw.get("tests", raw.get("test"))
    tests = [tests] if isinstance(tests, str) else tests
    if not tests or not isinstance(tests, list) or not all(isinstance(t, str) and t for t in tests):
        raise KnownIssuesError(f"{where}: 'tests' must be a test id pattern or a list of them")
    link = raw.get("link")
    if not isinstance(link, str) or not link:
        raise KnownIssuesError(f"{where}: 'link' is required (where the issue is tracked)")
    host = raw.get("host") or {}
    if not isinstance(host, Mapping) or not all(isinstance(v, (str, int, float, bool)) for v in host.values()):
        raise KnownIssuesError(f"{where}: 'host' must map fact names to values")
    try:
        failure = re.compile(raw["failure"]) if raw.get("failure") else None
        patterns = tuple(_glob(t) for t in tests)
    except (re.error, TypeError) as exc:
        raise KnownIssuesError(f"{where}: bad pattern: {exc}") from None
    for key, want in host.items():
        if key == "kernel" and any(c in str(want) for c in "<>=!"):
            _kernel_range(str(want), where)
    return KnownIssue(
        id=str(raw.get("id") or tests[0]), tests=patterns, link=link, note=str(raw.get("note") or ""),
        failure=failure, host={str(k): _fact_text(v) for k, v in host.items()},
    )


def parse(text: str, suffix: str, origin: str) -> tuple[KnownIssue, ...]:
    """Entries of a known-issues document; ``suffix`` (``.toml``, ``.yaml``/``.yml``, ``.json``) picks the format."""
    return from_raw(raw_entries(text, suffix, origin), origin)


def from_raw(entries: list[Any], origin: str) -> tuple[KnownIssue, ...]:
    """Entries from their decoded form (what xdist workers get from the controller, which read the file)."""
    return tuple(_entry(raw, f"{origin}: entry {i + 1}") for i, raw in enumerate(entries))


def raw_entries(text: str, suffix: str, origin: str) -> list[Any]:
    """The decoded entries of a document, checked: plain data (dicts, lists, strings, numbers)."""
    try:
        if suffix == ".toml":
            data = _toml(text)
        elif suffix in (".yaml", ".yml"):
            data = _yaml(text)
        elif suffix == ".json":
            data = json.loads(text)
        else:
            raise KnownIssuesError(f"{origin}: use a .toml, .yaml, .yml or .json file, not {suffix or 'no suffix'}")
    except KnownIssuesError:
        raise
    except Exception as exc:  # each parser has its own error type; all mean "malformed"
        raise KnownIssuesError(f"{origin}: not valid {suffix[1:].upper()}: {str(exc).splitlines()[0] if str(exc) else exc}") from None
    entries = data.get("issue", data.get("issues")) if isinstance(data, Mapping) else data
    if not isinstance(entries, list):
        raise KnownIssuesError(f"{origin}: expected a list of entries under 'issue' ([[issue]] in TOML)")
    from_raw(entries, origin)  # every entry checked here, where the file is named
    return entries


def load(path: Path) -> tuple[KnownIssue, ...]:
    return from_raw(load_raw(path), f"known issues {path}")


def load_raw(path: Path) -> list[Any]:
    try:
        raw = read_bounded(path, MAX_FILE_BYTES)
    except TooLarge:
        raise KnownIssuesError(f"known issues {path}: larger than {MAX_FILE_BYTES} bytes") from None
    except OSError as exc:
        raise KnownIssuesError(f"known issues {path}: {exc.strerror or exc}") from None
    return raw_entries(raw.decode("utf-8", "replace"), path.suffix.lower(), f"known issues {path}")


def _toml(text: str) -> Any:
    for module in ("tomllib", "tomli"):  # tomllib from Python 3.11; tomli before
        try:
            return importlib.import_module(module).loads(text)
        except ImportError:
            continue
    raise KnownIssuesError("reading TOML needs Python 3.11 or the tomli package")


def _yaml(text: str) -> Any:
    try:
        yaml = importlib.import_module("yaml")
    except ImportError:
        raise KnownIssuesError("reading YAML needs PyYAML (pip install pyyaml); or use TOML or JSON") from None
    return yaml.safe_load(text)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text.split("-", 1)[0])[:4])


def _kernel_range(spec: str, where: str = "") -> list[tuple[str, tuple[int, ...]]]:
    parts = []
    for clause in spec.split(","):
        m = _RANGE.match(clause)
        if m is None:
            raise KnownIssuesError(f"{where}: kernel range {spec!r}: use clauses like '>=6.12, <6.19'")
        parts.append((m.group(1), _version(m.group(2))))
    return parts


def _in_range(release: str, spec: str) -> bool:
    have = _version(release)
    if not have:
        return False
    ops = {">=": have.__ge__, "<=": have.__le__, ">": have.__gt__, "<": have.__lt__, "==": have.__eq__, "!=": have.__ne__}
    return all(ops[op](want) for op, want in _kernel_range(spec))


_BOOL = {"yes": "true", "y": "true", "true": "true", "no": "false", "n": "false", "false": "false"}


def _fact_matches(key: str, want: str, facts: Mapping[str, str]) -> bool:
    have = facts.get(key, facts.get(ALIASES.get(key, ""), None))
    if have is None:
        return False
    if key == "kernel" and any(c in want for c in "<>=!"):
        return _in_range(have, want)
    if want.lower() in _BOOL and have.lower() in _BOOL:
        return _BOOL[want.lower()] == _BOOL[have.lower()]
    return _glob(want).match(have) is not None


def match(
    issues: Iterable[KnownIssue], nodeid: str, facts: Mapping[str, str], failure_text: str | None = None
) -> KnownIssue | None:
    """The first entry for this test on this host (and, when the entry says, this failure)."""
    name = nodeid.rsplit("::", 1)[-1]
    for issue in issues:
        if not any(p.match(nodeid) or p.match(name) for p in issue.tests):
            continue
        if not all(_fact_matches(k, v, facts) for k, v in issue.host.items()):
            continue
        if failure_text is not None and issue.failure is not None and not issue.failure.search(failure_text):
            continue
        return issue
    return None


def host_facts(probe_json: Mapping[str, Any], record_facts: Mapping[str, str]) -> dict[str, str]:
    """The facts entries match against: --kvm-host-info json, flattened, then the record's own."""
    return {**flatten(probe_json), **{str(k): str(v) for k, v in record_facts.items()}}


def described(issues: Sequence[KnownIssue]) -> str:
    return ", ".join(i.id for i in issues)
