"""Fake selftest binaries and fake host roots for the unit tests.

A fake binary is a small Python script (run by this interpreter) that prints what a real
selftest prints, to the right stream, and exits the way it exits: golden output captured
from real runs lives in ``tests/golden/``.
"""

from __future__ import annotations

import json
import stat
import sys
import textwrap
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

GOLDEN = Path(__file__).parent / "golden"
SNAPSHOTS = Path(__file__).parent / "snapshots"


def golden(name: str) -> str:
    return (GOLDEN / name).read_text()


def make_fake(
    directory: Path,
    name: str,
    *,
    stdout: str = "",
    stderr: str = "",
    exit: int = 0,
    signal: int | None = None,
    hang: bool = False,
    child_pidfile: Path | None = None,
    raw_stdout: bytes = b"",
    argv_file: Path | None = None,
    sleep: float = 0.0,
    daemon_pidfile: Path | None = None,
) -> Path:
    """Write an executable fake selftest ``directory/name`` and return its path."""
    directory.mkdir(parents=True, exist_ok=True)
    body = f"""\
        import os, sys, time, signal, subprocess
        argv_file = {str(argv_file) if argv_file else None!r}
        if argv_file:
            open(argv_file, "w").write("\\n".join(sys.argv[1:]))
        time.sleep({sleep!r})
        sys.stdout.write({stdout!r}); sys.stdout.flush()
        sys.stdout.buffer.write({raw_stdout!r}); sys.stdout.flush()
        sys.stderr.write({stderr!r}); sys.stderr.flush()
        pidfile = {str(child_pidfile) if child_pidfile else None!r}
        if pidfile:
            child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
            open(pidfile, "w").write(str(child.pid))
        daemon = {str(daemon_pidfile) if daemon_pidfile else None!r}
        if daemon:  # a double-forked daemon in a session of its own: out of the group's reach
            if os.fork() == 0:
                os.setsid()
                if os.fork() == 0:
                    open(daemon + ".tmp", "w").write(str(os.getpid()))
                    os.rename(daemon + ".tmp", daemon)
                    os.execv("/bin/sleep", ["sleep", "600"])
                os._exit(0)
            os.wait()
            while not os.path.exists(daemon):
                time.sleep(0.01)
        if {hang!r}:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # like a vCPU thread stuck in KVM_RUN
            time.sleep(600)
        sig = {int(signal) if signal else None!r}
        if sig:
            signal.signal(sig, signal.SIG_DFL)
            os.kill(os.getpid(), sig)
        sys.exit({exit!r})
    """
    path = directory / name
    path.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def make_golden_fake(directory: Path, name: str, case: str, **kw: object) -> Path:
    """A fake ``name`` that replays the golden capture ``case`` (stdout, stderr, exit code)."""
    return make_fake(
        directory,
        name,
        stdout=golden(f"{case}.stdout"),
        stderr=golden(f"{case}.stderr"),
        exit=int(golden(f"{case}.rc")),
        **kw,  # type: ignore[arg-type]
    )


def make_host_root(
    root: Path,
    *,
    machine: str = "x86_64",
    release: str = "6.12.0-test",
    cpus: str = "0-3",
    mem_total_kb: int = 16 * 1024 * 1024,
    mem_available_kb: int = 12 * 1024 * 1024,
    hugepagesize_kb: int = 2048,
    pools: Mapping[int, Mapping[str, int]] | None = None,
    thp_enabled: str = "madvise",
    kvm: str = "pvm_live",
    hostname: str = "fakehost",
    kvm_modules: Mapping[str, Mapping[str, str]] | None = None,
    writable_pools: bool = True,
    cpuinfo: str = "vendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC\nflags\t\t: fpu pdpe1gb lm svm npt hypervisor\n"
    "address sizes\t: 48 bits physical, 48 bits virtual\n",
    extra: Mapping[str, str] | None = None,
) -> Path:
    """A directory standing in for ``/`` with the files the host probes read.

    ``kvm`` names the KVM API answers, from ``tests/snapshots/kvm/<kvm>.json``. Module
    parameters are ``{"kvm": {"tdp_mmu": "Y"}}``; a name ending in ``!`` is written
    read-only (``{"kvm": {"tdp_mmu!": "N"}}``), as PVM's are.
    """
    pools = {2048: {"nr": 0, "free": 0}, 1048576: {"nr": 0, "free": 0}} if pools is None else pools

    def put(path: str, text: str) -> None:
        p = root / path.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)

    put("/proc/sys/kernel/arch", machine + "\n")
    put("/proc/sys/kernel/hostname", hostname + "\n")
    put("/proc/cpuinfo", cpuinfo)
    put("/proc/cmdline", "console=ttyS0\n")
    put("/sys/devices/system/node/online", "0\n")
    put("/proc/sys/kernel/osrelease", release + "\n")
    put("/sys/devices/system/cpu/online", cpus + "\n")
    total_hp = pools.get(hugepagesize_kb, {}).get("nr", 0)
    put(
        "/proc/meminfo",
        f"MemTotal:       {mem_total_kb} kB\nMemFree:        {mem_available_kb} kB\n"
        f"MemAvailable:   {mem_available_kb} kB\nHugePages_Total:   {total_hp}\n"
        f"Hugepagesize:       {hugepagesize_kb} kB\n",
    )
    for size_kb, counts in pools.items():
        d = f"/sys/kernel/mm/hugepages/hugepages-{size_kb}kB"
        put(f"{d}/nr_hugepages", f"{counts.get('nr', 0)}\n")
        (root / d.lstrip("/") / "nr_hugepages").chmod(0o644 if writable_pools else 0o444)
        n = f"/sys/devices/system/node/node0/hugepages/hugepages-{size_kb}kB"
        put(f"{n}/nr_hugepages", f"{counts.get('nr', 0)}\n")
        put(f"{n}/free_hugepages", f"{counts.get('free', 0)}\n")
        put(f"{n}/surplus_hugepages", f"{counts.get('surplus', 0)}\n")
        put(f"{d}/free_hugepages", f"{counts.get('free', 0)}\n")
        put(f"{d}/resv_hugepages", f"{counts.get('resv', 0)}\n")
        put(f"{d}/surplus_hugepages", f"{counts.get('surplus', 0)}\n")
        put(f"{d}/nr_overcommit_hugepages", f"{counts.get('overcommit', 0)}\n")
    thp = "/sys/kernel/mm/transparent_hugepage"
    choices = ["always", "madvise", "never"]
    put(f"{thp}/enabled", " ".join(f"[{c}]" if c == thp_enabled else c for c in choices) + "\n")
    put(f"{thp}/defrag", "always defer defer+madvise [madvise] never\n")
    put(f"{thp}/shmem_enabled", "always within_size advise [never] deny force\n")
    put(f"{thp}/hpage_pmd_size", "2097152\n")
    modules = {"kvm": {"tdp_mmu!": "N", "eager_page_split!": "Y", "nx_huge_pages!": "N"}, "kvm_pvm": {}}
    for module, params in (modules if kvm_modules is None else kvm_modules).items():
        (root / "sys/module" / module).mkdir(parents=True, exist_ok=True)
        for name, value in params.items():
            path = root / f"sys/module/{module}/parameters/{name.rstrip('!')}"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(value + "\n")
            path.chmod(0o444 if name.endswith("!") else 0o644)
    for path, text in (extra or {}).items():
        put(path, text)
    answers = json.loads((SNAPSHOTS / "kvm" / f"{kvm}.json").read_text())
    (root / "kvmmm-snapshot.json").write_text(json.dumps({"format": 1, "kvm": answers}))
    return root


def wait_for(path: Path, timeout: float = 30) -> None:
    """Until ``path`` exists (a fake binary's sign that it started): fails after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert path.exists(), f"{path} never appeared"


def process_gone(pid: int) -> bool:
    """Whether process ``pid`` has ended: no longer in /proc, or a zombie waiting to be reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state == "Z"


def records(path: Path) -> dict[str, dict[str, object]]:
    """A --kvm-results file by test name (the part of the node id after ``::``)."""
    from pytest_kvmmm.reports.results import read_results

    return {str(rec["nodeid"]).split("::")[-1]: rec for rec in read_results(path)}


def describe_run(
    results: Any, case: Any = None, sizing: Any = None, *, scale: str, host: str, test_name: str = "", markers: Any = ()
) -> Any:
    """Allure's view of ``results`` as the plugin makes it: through the test's record, whose shape
    is the case's (sized by ``sizing``) or, for a test of one's own, its arguments'."""
    from pytest_kvmmm.reports import allure_report
    from pytest_kvmmm.reports.record import build
    from pytest_kvmmm.suite.shape import of_argv, of_case

    last = results[-1]
    shape = of_case(case, sizing) if case is not None else of_argv(last.name, last.argv)
    record = build(last, shape, nodeid="t.py::t", host=host, outcome="passed")
    return allure_report.describe(results, record, scale=scale, test_name=test_name, markers=markers)
