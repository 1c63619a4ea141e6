"""A run as KCIDB JSON (KernelCI's reporting schema, v5): checkouts, builds, tests, issues, incidents.

Each host's kernel is the tested code: a checkout (its kernel release) and a build (that
kernel on its architecture) per host. Each selftest record is a test with ``PASS``, ``FAIL``,
``ERROR``, ``SKIP`` or ``MISS``; each measured metric is one more test with status ``DONE`` and
a ``number`` (value and unit) below the test's path. Host facts go in ``environment.misc``.
A known issue becomes a KCIDB issue with its link, and its incidents say where it showed
(``present: true``) or where a matching test passed (``present: false``). Pure: records in, a
document out; ``kcidb-io`` validates it in the tests.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping
from typing import Any

from ..engine.metrics import metric_unit
from .names import case_path, segment

SCHEMA_VERSION = {"major": 5, "minor": 3}
STATUS = {
    "passed": "PASS", "failed": "FAIL", "timeout": "FAIL", "crashed": "FAIL", "xfailed": "FAIL",
    "error": "ERROR", "skipped": "SKIP", "missing": "MISS",
}
MAX_EXCERPT = 16384


def _time(epoch: Any) -> str | None:
    if not isinstance(epoch, (int, float)):
        return None
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).isoformat()


def _host_objects(origin: str, run: str, host: str, facts: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    kernel = str(facts.get("kernel", "unknown"))
    checkout = {"id": f"{origin}:{run}:{segment(host)}", "origin": origin, "comment": f"kernel {kernel} on {host}"}
    build = {
        "id": f"{origin}:{run}:{segment(host)}", "checkout_id": checkout["id"], "origin": origin,
        "architecture": segment(str(facts.get("arch", ""))).lower() if facts.get("arch") else "",
        "comment": f"{kernel} ({facts.get('arch', '?')}); selftests {facts.get('selftests', '?')}",
        "misc": {"kernel_release": kernel},
    }
    return checkout, build


def _test(origin: str, run: str, record: Mapping[str, Any], facts: Mapping[str, Any]) -> dict[str, Any]:
    host = str(record.get("host", ""))
    nodeid = str(record.get("nodeid", ""))
    test: dict[str, Any] = {
        "id": f"{origin}:{run}:{segment(host)}:{nodeid}",
        "build_id": f"{origin}:{run}:{segment(host)}",
        "origin": origin,
        "path": case_path(nodeid),
        "status": STATUS.get(str(record.get("status")), "ERROR"),
        "environment": {"comment": host, "misc": {str(k): str(v) for k, v in facts.items()}},
        "misc": {k: record[k] for k in ("nodeid", "binary", "argv", "returncode", "notes", "attempts", "known_issue") if record.get(k) is not None},
    }
    started = _time(record.get("started_at"))
    if started:
        test["start_time"] = started
    if isinstance(record.get("duration_s"), (int, float)):
        test["duration"] = float(record["duration_s"])
    if record.get("reason"):
        test["log_excerpt"] = str(record["reason"]).replace("\0", "")[:MAX_EXCERPT]
        test["comment"] = test["log_excerpt"].splitlines()[0][:300] if test["log_excerpt"] else ""
    return test


def _metric_tests(test: Mapping[str, Any], record: Mapping[str, Any]) -> list[dict[str, Any]]:
    out = []
    for name, value in sorted((record.get("metrics") or {}).items()):
        samples = (record.get("samples") or {}).get(name) or [value]
        out.append({
            "id": f"{test['id']}/{name}",
            "build_id": test["build_id"],
            "origin": test["origin"],
            "path": test["path"] + "." + ".".join(segment(p) for p in name.split("/")),
            "status": "DONE",
            "number": {"value": float(value), "unit": metric_unit(name)},
            "environment": test["environment"],
            "misc": {"nodeid": record.get("nodeid"), "metric": name, "samples": [float(s) for s in samples]},
            **({"start_time": test["start_time"]} if "start_time" in test else {}),
        })
    return out


def document(records: Iterable[Mapping[str, Any]], *, origin: str, run: str, facts_key: str = "host_facts") -> dict[str, Any]:
    """The KCIDB document of a run: ``origin`` names the CI system, ``run`` makes ids unique."""
    checkouts: dict[str, dict[str, Any]] = {}
    builds: dict[str, dict[str, Any]] = {}
    tests: list[dict[str, Any]] = []
    issues: dict[str, dict[str, Any]] = {}
    incidents: list[dict[str, Any]] = []
    for record in records:
        host = str(record.get("host", ""))
        found = record.get(facts_key)
        facts: Mapping[str, Any] = found if isinstance(found, Mapping) else {}
        if host not in builds:
            checkouts[host], builds[host] = _host_objects(origin, run, host, facts)
        test = _test(origin, run, record, facts)
        tests += [test, *_metric_tests(test, record)]
        known = record.get("known_issue")
        if isinstance(known, Mapping) and known.get("id"):
            issue_id = f"{origin}:{segment(str(known['id']))}"
            link = str(known.get("link", ""))
            issues[issue_id] = {"id": issue_id, "version": 1, "origin": origin, "comment": f"{known.get('note', '')} ({link})"}
            if "://" in link:  # report_url is a URI; a repository-relative link stays in the comment
                issues[issue_id]["report_url"] = link
            incidents.append({
                "id": f"{test['id']}:{segment(str(known['id']))}", "origin": origin, "issue_id": issue_id,
                "issue_version": 1, "test_id": test["id"], "present": not known.get("passed", False),
            })
    doc: dict[str, Any] = {
        "version": dict(SCHEMA_VERSION),
        "checkouts": list(checkouts.values()),
        "builds": list(builds.values()),
        "tests": tests,
    }
    if issues:
        doc["issues"] = list(issues.values())
        doc["incidents"] = incidents
    return doc
