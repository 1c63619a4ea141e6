"""What a selftest record adds to pytest's ``--junitxml`` testcase: properties and a per-host name.

Jenkins, GitLab and most dashboards read JUnit XML only. A testcase gets ``<property>``
elements (name/value strings, the schema's ``property`` element) for the host, the deciding
host facts, each measured metric with its unit, counters when the record has them, the
attempts of a rerun test and a known issue's link. In a multi-host run (``--dist each``) the
host leads the classname, so each host's run of a test is its own testcase. Pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..engine.metrics import metric_unit

PREFIX = "kvm"
#: Facts shown per testcase (the rest are in --kvm-results): what decides a KVM MMU outcome.
DECIDING_FACTS = (
    "kernel", "arch", "page_size", "kvm", "tdp", "tdp_mmu", "guest_1g_pages", "maxphyaddr", "ttrem", "arm64_mode",
    "ipa_size", "parange", "thp", "hugetlb_free_nr", "selftests",
)


def _number(value: float) -> str:
    return repr(float(value)) if value != int(value) or abs(value) >= 1e15 else str(int(value))


def _numbers(data: Any) -> dict[str, float]:
    if not isinstance(data, Mapping):
        return {}
    return {str(k): float(v) for k, v in data.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def counter_values(record: Mapping[str, Any]) -> dict[str, float]:
    """A record's event counts (``--kvm-counters``), flat: ``event`` for the whole run (median over
    runs), ``stage/event`` per stage, and the derived rates; {} without counters."""
    counters = record.get("counters")
    if not isinstance(counters, Mapping):
        return {}
    out = _numbers(counters.get("total"))
    stages = counters.get("stages")
    if isinstance(stages, Mapping):
        for stage, counts in stages.items():
            out.update({f"{stage}/{event}": v for event, v in _numbers(counts).items()})
    out.update(_numbers(counters.get("derived")))
    return out


def properties(record: Mapping[str, Any], facts_key: str = "host_facts") -> list[tuple[str, str]]:
    """``(name, value)`` pairs for one testcase, in a stable order."""
    out: list[tuple[str, str]] = [(f"{PREFIX}.host", str(record.get("host", "")))]
    out.append((f"{PREFIX}.status", str(record.get("status", ""))))
    if record.get("binary"):
        out.append((f"{PREFIX}.binary", str(record["binary"])))
    facts = record.get(facts_key)
    if isinstance(facts, Mapping):
        out += [(f"{PREFIX}.fact.{k}", str(facts[k])) for k in DECIDING_FACTS if k in facts]
    for name, value in sorted((record.get("metrics") or {}).items()):
        out.append((f"{PREFIX}.metric.{name}", _number(value)))
        out.append((f"{PREFIX}.unit.{name}", metric_unit(name)))
    out += [(f"{PREFIX}.counter.{name}", _number(value)) for name, value in sorted(counter_values(record).items())]
    attempts = record.get("attempts") or []
    if attempts:
        out.append((f"{PREFIX}.attempts", str(len(attempts))))
        out += [(f"{PREFIX}.attempt.{i + 1}", f"{a.get('status')}: {a.get('reason') or ''}".rstrip(": ")) for i, a in enumerate(attempts)]
    known = record.get("known_issue")
    if isinstance(known, Mapping):
        out.append((f"{PREFIX}.known_issue", f"{known.get('id')} {known.get('link')}"))
        if known.get("passed"):
            out.append((f"{PREFIX}.known_issue_passed", "true"))
    return out


def classname(default: str, host: str) -> str:
    """The classname of a testcase from ``host`` in a multi-host run: ``host.pytest_kvmmm.suite.test_mm``."""
    return f"{host.replace('.', '_')}.{default}" if default else host.replace(".", "_")
