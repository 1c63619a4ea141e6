"""What pytest-kvmmm writes to the terminal: the header (the host, the selftests, the scale)
and, at the end of a run, the ``kvm selftests`` section: the session's records (their lines
come from ``reports/summary.py`` and the counters' tables), where the results went, and what
could not be written. pytest glue: it only chooses lines and colours."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..engine.counters.report import count_tables, counters_header, off_lines
from ..engine.counters.session import CounterSession
from ..engine.discovery import SearchRoot
from ..engine.kernel_health import KernelWatch
from ..host.model import HostFacts
from ..host.report import summary_line
from ..reports.record import Record
from ..reports.summary import quiet_lines, summary_lines
from .options import Settings


def header_lines(
    host: HostFacts,
    roots: Sequence[SearchRoot],
    settings: Settings,
    kernel_watch: KernelWatch | None,
    counters: CounterSession | None,
    *,
    changes_allowed: bool,
) -> list[str]:
    """The header: the host (or snapshot), where the selftests come from, scale and timeout, and
    what is on or off (kernel log watch, counters, host changes)."""
    source = f"{roots[0].path} ({roots[0].origin})" if roots else "none found (run kvmmm-build)"
    where = "" if settings.host_root == Path("/") else f" [snapshot {settings.host_root}]"
    lines = [
        f"kvmmm: {host.hostname}{where}: {summary_line(host)}",
        f"kvmmm: selftests {source}; scale {settings.scale}; timeout {settings.timeout_s:g}s",
    ]
    if kernel_watch is not None and not kernel_watch.active:
        lines.append(f"kvmmm: kernel log watch off: {kernel_watch.reason}")
    if counters is not None:
        lines.append(counters_header(counters))
    if changes_allowed:
        lines.append("kvmmm: host changes allowed: hugetlb pools and THP may be changed, and are restored after the run")
    return lines


def verbosity(config: Any) -> int:
    """pytest's verbosity (``Config.get_verbosity`` came with pytest 8; before it, -v's count)."""
    return int(config.get_verbosity() if hasattr(config, "get_verbosity") else config.option.verbose)


def write_section(
    terminalreporter: Any,
    records: Sequence[Record],
    *,
    level: int,
    counters_host: str | None,
    counting_failures: Sequence[str],
    results: Path | None,
    extra: Sequence[str],
) -> None:
    """The section of ``records`` (``-q``: only what did not pass or skip; ``-qq``: none), then
    ``extra`` lines (exports written, problems). ``counters_host`` is the host whose header said
    already that counting was off; ``results`` the --kvm-results file written, if any."""
    if not records or level <= -2:
        for line in extra:
            terminalreporter.write_line(f"kvmmm: {line}", red=line.startswith("could not"))
        return
    terminalreporter.write_sep("=", f"kvm selftests on {', '.join(sorted({r.host for r in records}))}")
    for line in quiet_lines(records) if level < 0 else summary_lines(records, verbose=level > 0):
        terminalreporter.write_line(line)
    data = [r.to_json() for r in records]  # the counters' tables read files' records too
    for line in count_tables(data) if level >= 0 else []:
        terminalreporter.write_line(line)
    for line in off_lines(data, counters_host):
        terminalreporter.write_line(line)
    if counting_failures:
        terminalreporter.write_line(f"kvmmm: counters: {len(counting_failures)} run(s) not counted: {counting_failures[0]}")
    if results is not None and level >= 0:
        terminalreporter.write_line(f"results: {os.fspath(results)}")
    for line in extra:
        terminalreporter.write_line(line, red=line.startswith("could not") or line.startswith("--kvm-results"))
