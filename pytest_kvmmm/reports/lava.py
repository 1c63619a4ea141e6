"""Inside LAVA: each test and each of its metrics as ``lava-test-case`` results.

LAVA's test shell puts ``lava-test-case`` on ``PATH``; a result sent with it shows in the
job's results as it happens. Names are ``[A-Za-z0-9_-]`` joined by dots (LAVA's charset).
``calls`` is pure; ``send`` runs the helper with an argument list and a timeout.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping
from typing import Any

from ..engine.metrics import metric_unit
from .names import segment, split_nodeid

HELPER = "lava-test-case"
RESULT = {"passed": "pass", "skipped": "skip", "missing": "skip", "xfailed": "skip"}


def case_name(record: Mapping[str, Any], several_hosts: bool) -> str:
    module, name = split_nodeid(str(record.get("nodeid", "")))
    parts = [segment(str(record.get("host", "")))] if several_hosts else []
    return ".".join([*parts, segment(module), segment(name)])


def calls(record: Mapping[str, Any], several_hosts: bool = False) -> list[list[str]]:
    """The argument lists (without the helper) for one record: its result, then one per metric."""
    name = case_name(record, several_hosts)
    out = [[name, "--result", RESULT.get(str(record.get("status")), "fail")]]
    for metric, value in sorted((record.get("metrics") or {}).items()):
        metric_name = name + "." + ".".join(segment(p) for p in metric.split("/"))
        out.append([metric_name, "--result", "pass", "--measurement", f"{float(value):g}", "--units", metric_unit(metric)])
    return out


def helper() -> str | None:
    """The path of ``lava-test-case`` when running inside a LAVA test shell, else None."""
    return shutil.which(HELPER)


def send(path: str, args: list[str], timeout: float = 30.0) -> str | None:
    """Run the helper once; the error text when it could not report, else None."""
    try:
        done = subprocess.run([path, *args], capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{HELPER} {args[0]}: {exc}"
    if done.returncode != 0:
        return f"{HELPER} {args[0]}: exit {done.returncode}: {(done.stderr or done.stdout).strip()[:200]}"
    return None
