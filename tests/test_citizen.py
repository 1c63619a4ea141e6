"""A good citizen in a shared virtual environment (issue 13, section 7): installed, the plugin does
nothing to the host in a run that collects no selftest test and names no --kvm-* option.

Every Python process of the run (the controller and xdist workers) gets an audit hook, through
a ``sitecustomize`` on ``PYTHONPATH``, that logs each open or listing of the host's KVM, kernel
log, sysfs and procfs files and of the plugin's cache (journals). A run with a selftest test is
the control: it must show the probe, so the hook is known to see it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SITECUSTOMIZE = """
    import os, sys

    _LOG = os.environ["KVMMM_AUDIT_LOG"]
    _WATCH = ("/dev/kvm", "/dev/kmsg", "/sys/", "/proc/sys/kernel/tainted", "/proc/cpuinfo", "/proc/meminfo",
              os.environ["KVMMM_CACHE_DIR"])

    def _hook(event, args):
        if event not in ("open", "os.scandir", "os.listdir", "os.mkdir") or not args:
            return
        try:
            path = os.fsdecode(args[0])
        except TypeError:
            return
        if path.startswith(_WATCH):
            fd = os.open(_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            os.write(fd, f"{os.getpid()} {event} {path}\\n".encode())
            os.close(fd)

    sys.addaudithook(_hook)
"""
PLAIN = """
    def test_one():
        assert 1 + 1 == 2

    def test_two(tmp_path):
        assert tmp_path.is_dir()
"""
WITH_KVM = """
    def test_kvm_a(kvm_info):
        assert kvm_info is not None

    def test_kvm_b(kvm_info):
        assert kvm_info is not None
"""
# What pytest before 8 does to every registered plugin when it looks for fixtures (parsefactories):
# it reads each attribute, properties included; the floor set (pytest 7.4) does it, here on any pytest.
SCAN_LIKE_PYTEST_7 = """
    import pytest

    @pytest.hookimpl(trylast=True)
    def pytest_configure(config):
        for name, plugin in config.pluginmanager.list_name_plugin():
            if name.startswith("kvmmm"):
                for attribute in dir(plugin):
                    getattr(plugin, attribute, None)
"""


def run(tmp_path: Path, pytester: pytest.Pytester, body: str, *args: str) -> tuple[str, list[str]]:
    audit = tmp_path / "audit"
    audit.mkdir(exist_ok=True)
    (audit / "sitecustomize.py").write_text(textwrap.dedent(SITECUSTOMIZE))
    log = tmp_path / "audit.log"
    log.unlink(missing_ok=True)
    pytester.makepyfile(textwrap.dedent(body))
    pythonpath = os.pathsep.join(p for p in (str(audit), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": pythonpath, "KVMMM_AUDIT_LOG": str(log), "KVMMM_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("KVMMM_HOST_SNAPSHOT", None)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args], cwd=pytester.path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout, log.read_text().splitlines() if log.exists() else []


@pytest.mark.parametrize("xdist", [[], ["-n", "2"]], ids=["single", "xdist"])
def test_a_run_without_selftest_tests_touches_nothing(pytester: pytest.Pytester, tmp_path: Path, xdist: list[str]) -> None:
    out, touched = run(tmp_path, pytester, PLAIN, *xdist)
    assert touched == [], "no /dev/kvm, /dev/kmsg, sysfs, procfs or journal access"
    assert "kvmmm:" not in out, "no header or summary lines"


def test_reading_every_attribute_of_the_plugins_touches_nothing(pytester: pytest.Pytester, tmp_path: Path) -> None:
    """pytest 7.4 reads every attribute of a registered plugin: none may probe the host (a
    ``host_label`` property did, and the run above opened /proc/meminfo and /dev/kvm there)."""
    pytester.makeconftest(textwrap.dedent(SCAN_LIKE_PYTEST_7))
    _, touched = run(tmp_path, pytester, PLAIN)
    assert touched == [], "no /dev/kvm, /dev/kmsg, sysfs, procfs or journal access"


@pytest.mark.skipif(not os.path.exists("/dev/kvm"), reason="the control needs /dev/kvm to probe")
@pytest.mark.parametrize("xdist", [[], ["-n", "2"]], ids=["single", "xdist"])
def test_the_first_selftest_test_probes_once_per_host(pytester: pytest.Pytester, tmp_path: Path, xdist: list[str]) -> None:
    out, touched = run(tmp_path, pytester, WITH_KVM, *xdist)
    probing = {line.split()[0] for line in touched if line.endswith(" /dev/kvm")}
    assert len(probing) == 1, f"one process probes the host: {touched}"
    if not xdist:  # the xdist controller collects nothing: it prints the header only for a --kvm-* option
        assert "kvmmm: " in out, "the header comes once the selftest tests are collected"
