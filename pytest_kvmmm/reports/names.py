"""Test names as dashboards accept them: KCIDB paths, SQUAD and LAVA test case names. Pure."""

from __future__ import annotations

import re

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def segment(text: str) -> str:
    """One KCIDB path segment / LAVA name part: ``[A-Za-z0-9_-]+``, other runs become ``_``."""
    return _UNSAFE.sub("_", text).strip("_") or "_"


def split_nodeid(nodeid: str) -> tuple[str, str]:
    """``pytest_kvmmm/suite/test_mm.py::test_dirty_log[dirty_ring]`` -> ``("test_mm", "test_dirty_log[dirty_ring]")``."""
    path, _, name = nodeid.rpartition("::")
    module = path.rsplit("/", 1)[-1].removesuffix(".py") if path else "tests"
    return module, name or nodeid


def case_path(nodeid: str) -> str:
    """A dotted KCIDB path for a test: ``kvmmm.test_mm.test_dirty_log.dirty_ring``."""
    module, name = split_nodeid(nodeid)
    base, _, params = name.partition("[")
    parts = ["kvmmm", segment(module), segment(base)]
    if params:
        parts.append(segment(params.rstrip("]")))
    return ".".join(parts)
