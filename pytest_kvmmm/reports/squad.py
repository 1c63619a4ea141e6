"""A run as SQUAD submissions (Linaro's LKFT dashboard): per host, ``tests``, ``metrics``, ``metadata``.

SQUAD takes one submission per build and environment: the environment is the host. The
three files are what ``POST /api/submit/GROUP/PROJECT/BUILD/ENVIRONMENT`` takes as form
fields (``curl -F tests=@tests.json -F metrics=@metrics.json -F metadata=@metadata.json``).
Tests map ``suite/name`` to ``pass``, ``fail``, ``skip`` or ``xfail``; metrics map
``suite/name.metric`` to every sample (each ``--kvm-repeat`` run), so SQUAD computes its own
spread. Pure: records in, dicts out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .junit import counter_values
from .names import split_nodeid

RESULT = {"passed": "pass", "skipped": "skip", "missing": "skip", "xfailed": "xfail"}
SUITE = "kvmmm"


def test_name(nodeid: str) -> str:
    """``kvmmm/test_mm/test_dirty_log[dirty_ring]``: SQUAD splits the suite at the last ``/``
    outside brackets, so the suite is ``kvmmm/test_mm``."""
    module, name = split_nodeid(nodeid)
    return f"{SUITE}/{module}/{name}"


def submissions(
    records: Iterable[Mapping[str, Any]], *, job_id: str, facts_key: str = "host_facts", extra: Mapping[str, str] | None = None,
) -> dict[str, dict[str, dict[str, Any]]]:
    """``{host: {"tests": ..., "metrics": ..., "metadata": ...}}``; ``job_id`` (required by SQUAD)
    gets the host appended, so the hosts' submissions of one run stay apart."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for record in records:
        host = str(record.get("host", ""))
        sub = out.setdefault(host, {"tests": {}, "metrics": {}, "metadata": {"job_id": f"{job_id}-{host}", "host": host}})
        name = test_name(str(record.get("nodeid", "")))
        sub["tests"][name] = RESULT.get(str(record.get("status")), "fail")
        samples = record.get("samples") or {}
        for metric, value in sorted((record.get("metrics") or {}).items()):
            values = samples.get(metric) or [value]
            sub["metrics"][f"{name}.{metric.replace('/', '.')}"] = [float(v) for v in values]
        for counter, value in sorted(counter_values(record).items()):
            sub["metrics"][f"{name}.counter.{counter.replace('/', '.')}"] = [value]
        facts = record.get(facts_key)
        if isinstance(facts, Mapping):
            sub["metadata"].update({f"host.{k}": str(v) for k, v in facts.items()})
        known = record.get("known_issue")
        if isinstance(known, Mapping):
            sub["metadata"][f"known_issue.{name}"] = f"{known.get('id')} {known.get('link')}"
        for key, value in (extra or {}).items():
            sub["metadata"][key] = value
    return out
