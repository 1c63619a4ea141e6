"""``--kvm-results``: one JSON object per test, appended and flushed as each test finishes.

Appending line by line means a crash of the session keeps every result before it. Only
the process that owns the terminal (the xdist controller, or the single process) writes,
so a record is never written twice. The file is opened (and emptied) only when the first
record arrives, or at the end of a run without records: a run that stops on a usage error
(a typo in an option) leaves the previous run's file as it was. It is never opened through
a link, a device or a FIFO (``safefs.open_in_place``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import IO

from .safefs import open_in_place

RESULTS_FORMAT = 1


class ResultsWriter:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[str] | None = None

    @property
    def opened(self) -> bool:
        return self._file is not None

    def open(self) -> None:
        """Truncate the file: a results file describes one run. Raises ``OSError`` (``UnsafePath``
        for a link, device or hard link)."""
        self._file = open_in_place(self.path)

    def write(self, record: Mapping[str, object]) -> None:
        if self._file is None:
            self.open()
        assert self._file is not None
        self._file.write(json.dumps({"format": RESULTS_FORMAT, **record}, sort_keys=True) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_results(path: Path) -> list[dict[str, object]]:
    """Read a results file back (used by tests and later by comparisons)."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
