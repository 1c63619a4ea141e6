"""What the Allure report checks share (ci/allure_check.py, ci/allure3_check.py): named checks,
subprocesses, the results and report files, a loopback server and headless Chromium."""

from __future__ import annotations

import functools
import http.server
import json
import subprocess
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
#: The second host of the check: facts from a fake arm64 root, results into the same directory.
ARM_HOST = "lab-arm64"


class Checks:
    """Named checks, printed as they pass or fail; the run fails if any did."""

    def __init__(self) -> None:
        self.failed: list[str] = []
        self.passed = 0

    def __call__(self, name: str, ok: object, detail: str = "") -> bool:
        mark = "ok  " if ok else "FAIL"
        print(f"  [{mark}] {name}" + (f": {detail}" if detail else ""), flush=True)
        if ok:
            self.passed += 1
        else:
            self.failed.append(name)
        return bool(ok)


def say(text: str) -> None:
    print(f"[allure-check] {text}", flush=True)


def run(cmd: Sequence[object], **kw: Any) -> subprocess.CompletedProcess[str]:
    say("$ " + " ".join(str(c) for c in cmd))
    return subprocess.run([str(c) for c in cmd], text=True, capture_output=True, **kw)


def results_of(directory: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(directory.glob("*-result.json"))]


@functools.cache
def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def serve(directory: Path) -> http.server.ThreadingHTTPServer:
    """Both Allures' pages load their data with XHR, which file:// forbids: serve them on loopback."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(directory)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@dataclass
class Context:
    """One check's state, shared by the Allure 2 and Allure 3 checks."""

    check: Checks
    out: Path
    timings: dict[str, float]
    chromium: str
    playwright: Path
    results_1: Path
    report_1: Path
    results: Path
    report: Path
    both: list[dict[str, Any]]
    live_host: str | None
    host_name: str


def browse(ctx: Context, report: Path, pages: list[dict[str, Any]], name: str) -> tuple[dict[str, str], subprocess.CompletedProcess[str]]:
    """Open ``pages`` of ``report`` in headless Chromium (ci/allure_browser.js): each page's visible text."""
    server = serve(report)
    spec = {"playwright": str(ctx.playwright), "chromium": ctx.chromium,
            "base": f"http://127.0.0.1:{server.server_address[1]}/index.html", "pages": pages}
    spec_path = ctx.out / f"browser-spec{name}.json"
    spec_path.write_text(json.dumps(spec, indent=2))
    try:
        proc = run(["node", REPO / "ci" / "allure_browser.js", spec_path])
    finally:
        server.shutdown()
    seen: dict[str, str] = json.loads(proc.stdout) if proc.returncode == 0 and proc.stdout else {}
    return seen, proc
