"""Reading ``/dev/kmsg``: the host probe reads KVM's boot messages with it, the engine's kernel
watch the records logged around each selftest."""

from __future__ import annotations

import os
from collections.abc import Iterator


def read_kmsg_records(fd: int) -> Iterator[str]:
    """The records of ``/dev/kmsg`` from ``fd``'s position on, one per read, without blocking
    (``fd`` is opened ``O_NONBLOCK``). Stops when no record is left (EAGAIN), at EOF and on
    any other error; skips records the kernel overwrote before they were read (EPIPE)."""
    while True:
        try:
            data = os.read(fd, 8192)
        except BlockingIOError:
            return
        except BrokenPipeError:  # EPIPE: records were overwritten before we read them
            continue
        except OSError:
            return
        if not data:
            return
        yield data.decode("utf-8", "replace")
