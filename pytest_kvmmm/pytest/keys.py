"""The ``StashKey``s of pytest-kvmmm: what the adapter keeps on ``config`` and on items.

State lives in ``config.stash`` and ``item.stash``, never in attributes hung on pytest's
objects, so every piece of state has one typed name, here.
"""

from __future__ import annotations

from typing import Any

import pytest

from ..coordination.host_changes import HostChanges
from ..engine.engine import SelftestEngine
from ..engine.requirements import Requirement
from ..engine.result import SelftestResult
from ..suite.shape import Shape
from .invocation import Sources
from .markers import SelftestCall

#: The session's engine (fixtures and the baseline plugin run selftests through it).
ENGINE_KEY = pytest.StashKey[SelftestEngine]()
#: The ``--kvm-scale`` in force.
SCALE_KEY = pytest.StashKey[str]()
#: The journal of host changes (``kvm_params`` sets module parameters through it).
CHANGES_KEY = pytest.StashKey[HostChanges]()
#: The selftest runs of one test item, in order; the last one is the test's record.
RESULTS_KEY = pytest.StashKey[list[SelftestResult]]()
#: An item's parsed ``kvm_selftest`` marker.
CALL_KEY = pytest.StashKey[SelftestCall]()
#: An item's parsed ``kvm_requires`` markers.
REQUIRES_KEY = pytest.StashKey[tuple[Requirement, ...]]()
#: Kernel log lines (regular expressions) an item's selftest provokes on purpose: its catalogue
#: entry's, for the ``.test`` files and ``-m kvm`` tests that run a catalogue binary.
EXPECTED_KERNEL_KEY = pytest.StashKey[tuple[str, ...]]()
#: Where this process's settings come from (``options.sources``), and what its records keep of
#: how the run was asked for (``options.inputs``).
SOURCES_KEY = pytest.StashKey[Sources]()
INPUTS_KEY = pytest.StashKey[dict[str, Any]]()
#: The name of a test's selftest record in ``report.user_properties`` (see ``session.py``).
RECORD_PROPERTY = "kvm_selftest"
#: What a catalogue case ran as (its case and the sizes it was capped to), for its record.
SHAPE_KEY = pytest.StashKey[Shape]()
#: The metrics ``--kvm-fail-regression`` failed a test for (the baseline plugin's verdict).
REGRESSED_KEY = pytest.StashKey[list[str]]()
