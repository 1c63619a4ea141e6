"""The module-level hooks of pytest-kvmmm: options, ``--kvm-host-info``, and ``pytest_configure``,
which registers the session object (and xdist's and the baselines' hooks) for the run."""

from __future__ import annotations

import dataclasses
import json

import pytest

from ..host.probe import timed_probe
from ..host.report import text_report
from . import all_kvm, dashboards, options, testcase_items, timeout_guard, xdist
from .baseline import BaselinePlugin
from .baseline import add_options as add_baseline_options
from .baseline import resolve as resolve_baseline
from .keys import ENGINE_KEY, SCALE_KEY
from .markers import MARKERS
from .session import KvmmmPlugin


def pytest_addoption(parser: pytest.Parser) -> None:
    options.add_options(parser)
    add_baseline_options(parser)
    dashboards.add_options(parser)
    testcase_items.add_options(parser)


@pytest.hookimpl(tryfirst=True)  # tryfirst: answer --kvm-host-info before any collection
def pytest_cmdline_main(config: pytest.Config) -> int | None:
    fmt = config.getoption("kvm_host_info")
    if not fmt:
        return None
    facts, seconds = timed_probe(options.resolve(config).host_root)
    if fmt == "json":
        print(json.dumps(facts.to_json(), indent=2, sort_keys=True))
    else:
        print(text_report(facts, seconds))
    return 0


def pytest_configure(config: pytest.Config) -> None:
    for name, description in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {description}")
    settings = options.resolve(config)
    config.stash[SCALE_KEY] = settings.scale
    baseline_settings = resolve_baseline(config)
    if baseline_settings.repeat is not None:  # saving or comparing: the scale's repeat, unless one was given
        settings = dataclasses.replace(settings, repeat=baseline_settings.repeat)
    xdist.tune(config)
    plugin = KvmmmPlugin(config, settings)
    config.stash[ENGINE_KEY] = plugin.engine
    config.pluginmanager.register(plugin, "kvmmm-session")
    if xdist.distributing(config):
        config.pluginmanager.register(xdist.XdistHooks(config, plugin), "kvmmm-xdist")
    baseline = BaselinePlugin(config, baseline_settings, plugin.engine, plugin.host, plugin.records, plugin.host_label)
    plugin.regression = baseline.regression  # the session decides the record; this plugin knows regressions
    config.pluginmanager.register(baseline, "kvmmm-baseline")
    config.pluginmanager.register(timeout_guard, "kvmmm-timeout-guard")
    config.pluginmanager.register(testcase_items.TestcasePlugin(config), "kvmmm-testcases")
    config.pluginmanager.register(all_kvm.AllKvmOptIn(), "kvmmm-all-kvm")
