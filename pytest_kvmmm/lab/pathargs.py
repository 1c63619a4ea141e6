"""Test paths on a lab run's command line, through pytest's ``@file`` arguments.

Why: xdist rewrites every argument that names an existing path here relative to its rsync
roots before it sends the arguments to a remote (socket) worker, and a relative path, or one
outside those roots, stops the run with an INTERNALERROR (``arg tests/ not relative to an
rsync root``). A lab host has no need of that rewriting: it holds the rootdir at the same
absolute path, and its worker starts there. So each such argument is written, as it was
given, into its own small file in the results directory the guests share, and replaced in
place by ``@FILE``: xdist leaves it alone (no such path), and pytest (8.2 and later) reads the
argument back from the file on every host, where it means what it meant here.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

#: pytest reads ``@file`` arguments since 8.2.
ARGFILES_SINCE = (8, 2)


def is_local_path(arg: str, rootdir: Path) -> bool:
    """Whether xdist would take ``arg`` for a path (its part before ``::`` exists from here)."""
    if not arg or arg.startswith("-") or arg.startswith("@"):
        return False
    head = arg.split("::", 1)[0]
    try:
        return (rootdir / head).exists()
    except (OSError, ValueError):
        return False


def pytest_version(text: str) -> tuple[int, int]:
    parts = (text.split(".") + ["0"])[:2]
    try:
        return int(parts[0]), int("".join(c for c in parts[1] if c.isdigit()) or 0)
    except ValueError:
        return (0, 0)


def via_argfiles(args: Sequence[str], rootdir: Path, share: Path | None, label: str, pytest_ver: str) -> list[str]:
    """``args`` with each path argument replaced by ``@FILE`` (written into ``share``); a
    ValueError says why it cannot be done (no shared directory, a pytest too old)."""
    paths = [a for a in args if is_local_path(a, rootdir)]
    if not paths:
        return list(args)
    if share is None:
        raise ValueError(f"test paths ({paths[0]}) on a lab run need a results directory the hosts share "
                         "(--results); or name the tests with --pyargs PACKAGE")  # fmt: skip
    if pytest_version(pytest_ver) < ARGFILES_SINCE:
        raise ValueError(f"test paths ({paths[0]}) on a lab run need pytest 8.2 or later (its @file arguments), "
                         f"this is pytest {pytest_ver}; or name the tests with --pyargs PACKAGE")  # fmt: skip
    out = []
    for n, arg in enumerate(args):
        if arg not in paths:
            out.append(arg)
            continue
        path = share / f"{label}.arg{n}"
        path.unlink(missing_ok=True)  # an earlier run's; never written through: O_EXCL below
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        with os.fdopen(fd, "w") as fh:
            fh.write(arg + "\n")
        out.append(f"@{path}")
    return out
