"""``--kvm-results``: one JSON object per test, appended and flushed as each test finishes.

Appending line by line means a crash of the session keeps every result before it. Only
the process that owns the terminal (the xdist controller, or the single process) writes,
so a record is never written twice.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import IO

RESULTS_FORMAT = 1


class ResultsWriter:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[str] | None = None

    def open(self) -> None:
        """Truncate the file at the start of the run: a results file describes one run."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("w", encoding="utf-8")

    def write(self, record: Mapping[str, object]) -> None:
        assert self._file is not None, "open() the writer first"
        self._file.write(json.dumps({"format": RESULTS_FORMAT, **record}, sort_keys=True) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_results(path: Path) -> list[dict[str, object]]:
    """Read a results file back (used by tests and later by comparisons)."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
