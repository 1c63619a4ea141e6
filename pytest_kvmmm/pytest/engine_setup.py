"""The engine of a pytest process, built in one step from the resolved options: the thin glue
between ``options.Settings`` and ``engine.EngineSettings``. Nothing here touches the host."""

from __future__ import annotations

import os
import platform
import uuid
from pathlib import Path

import pytest

from ..coordination.host_changes import HostChanges
from ..coordination.hostwide import HostLedger, ledger_dir
from ..engine.discovery import search_roots
from ..engine.engine import EngineSettings, SelftestEngine
from ..host.view import HostView
from ..provision.cache import default_cache_root
from .options import Settings


def engine_settings(config: pytest.Config, settings: Settings) -> EngineSettings:
    """What the engine is told: search roots, timeouts and repeats, what a missing program does,
    the kernel log to watch, the counters, and this session's name in the host-wide ledger."""
    session = getattr(config, "workerinput", {}).get("testrunuid") or uuid.uuid4().hex
    root = settings.host_root
    watched = settings.kernel_log != "off" and root == Path("/")  # a snapshot's kernel is not this one
    return EngineSettings(
        roots=lambda: search_roots(settings.explicit_root, default_cache_root(), platform.release(), platform.machine()),
        default_timeout=settings.timeout_s,
        perf_repeat=settings.repeat,
        missing_fails=settings.explicit_root is not None and not settings.allow_missing,
        unrunnable_fails=not settings.allow_missing,
        kmsg=Path(os.environ.get("KVMMM_KMSG", "/dev/kmsg")) if watched else None,  # another device, for tests
        kernel_mode=settings.kernel_log,
        kernel_noise=settings.kernel_noise,
        counters=settings.counters,
        arch=platform.machine(),
        ledger=lambda: HostLedger(ledger_dir(root), root, session),
    )


def build_engine(config: pytest.Config, settings: Settings, view: HostView, changes: HostChanges) -> SelftestEngine:
    """The engine; it changes the host through ``changes`` only with --kvm-allow-host-changes.
    ``changes`` shrinks pools back around the pages the engine's ledger granted to others."""
    allowed = bool(config.getoption("kvm_allow_host_changes"))
    engine = SelftestEngine(engine_settings(config, settings), view, changes if allowed else None)
    changes.pool_floor = engine.pool_floor
    return engine
