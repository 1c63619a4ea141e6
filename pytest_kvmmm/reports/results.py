"""``--kvm-results``: one JSON object per test, appended and flushed as each test finishes.

Appending line by line means a crash of the session keeps every result before it. Only
the process that owns the terminal (the xdist controller, or the single process) writes,
so a record is never written twice. The file is opened (and emptied) only when the first
record arrives, or at the end of a run without records: a run that stops on a usage error
(a typo in an option) leaves the previous run's file as it was. It is never opened through
a link, a device or a FIFO (``safefs.open_in_place``).

A disk that fills (or any write error) costs only the records that did not fit: a line is
written whole or cut back to where it started, so the file holds complete JSON lines only,
the run goes on, and ``problem`` says at the end how many records are missing and why.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import IO

from ..coordination.safefs import open_in_place

RESULTS_FORMAT = 1


class ResultsWriter:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[str] | None = None
        self.written = 0
        self.lost = 0
        self._error = ""

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
        data = (json.dumps({"format": RESULTS_FORMAT, **record}, sort_keys=True) + "\n").encode("utf-8")
        fd = self._file.fileno()  # written with os.write: the text layer never buffers a part
        start = os.lseek(fd, 0, os.SEEK_CUR)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        except OSError as exc:
            self.lost += 1
            self._error = exc.strerror or str(exc)
            try:  # no half line: cut the file back to the last complete record
                os.ftruncate(fd, start)
                os.lseek(fd, start, os.SEEK_SET)
            except OSError:
                pass
            return
        self.written += 1

    @property
    def problem(self) -> str:
        """One line for the end of the run when records could not be written, else ''."""
        if not self.lost:
            return ""
        return (
            f"--kvm-results {self.path}: {self.lost} of {self.lost + self.written} records not written "
            f"({self._error}); the file holds the {self.written} complete ones"
        )

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_results(path: Path) -> list[dict[str, object]]:
    """Read a results file back (used by tests and later by comparisons)."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
