"""The real lab, end to end: the emulated x86 TDP host (QEMU TCG) and this host in one xdist run,
started with ``kvmmm-lab run`` from a directory outside the repository with its own ini file.

Runs only when the x86-tdp image exists (``kvmmm-lab build --hosts x86-tdp``) and QEMU is
installed; it skips with the reason otherwise. About a minute: the host boots, reports its
facts through its own gateway, and runs pre_fault_memory_test (which this PVM host cannot)
and a user's own test from the user's rootdir.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_kvmmm.lab.build import load_image
from pytest_kvmmm.lab.image import LabPaths, LabUnavailable
from pytest_kvmmm.provision.cache import default_cache_root
from pytest_kvmmm.reports.results import read_results

#: The real cache root, read at import: pytester fixtures move HOME.
CACHE = Path(os.path.abspath(default_cache_root()))


def lab_missing() -> str | None:
    if shutil.which("qemu-system-x86_64") is None:
        return "qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)"
    try:
        load_image(LabPaths(CACHE / "lab"), "x86-tdp")
    except LabUnavailable as exc:
        return str(exc)
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "no usable /dev/kvm on this host for the popen gateway"
    return None


@pytest.mark.skipif(lab_missing() is not None, reason=f"lab not available: {lab_missing()}")
def test_the_x86_tdp_host_and_this_host_from_a_users_directory(tmp_path: Path) -> None:
    project = tmp_path / "my project"
    (project / "tests").mkdir(parents=True)
    # Tests are named by the ini's testpaths: xdist refuses bare paths with socket gateways. The
    # user's suite module takes the shipped test it wants from the installed plugin.
    (project / "pytest.ini").write_text("[pytest]\ntestpaths = tests\nmarkers =\n    mine: the user's own marker\n")
    (project / "tests/test_kvm.py").write_text("from pytest_kvmmm.suite.test_mm import test_pre_fault_memory  # noqa: F401\n")
    results = tmp_path / "out"
    (project / "tests/test_mine.py").write_text(  # the user's test, on each host: it leaves a mark in the results
        "import os, socket, pytest\n\n@pytest.mark.mine\ndef test_where():\n"
        f"    open(os.path.join({str(results)!r}, 'mine-' + socket.gethostname()), 'w').write("
        "os.environ.get('KVMMM_EMULATED', 'real'))\n")
    args = [sys.executable, "-m", "pytest_kvmmm.lab.cli", "run", "--hosts", "x86-tdp", "--port-base", "0",
            "--run-dir", str(tmp_path / "run"), "--results", str(results), "--timeout", "240", "--",
            "-k", "test_pre_fault_memory or test_where", "--kvm-scale", "lab"]  # fmt: skip
    proc = subprocess.run(args, capture_output=True, text=True, timeout=900, cwd=project,
                          env={**os.environ, "KVMMM_CACHE_DIR": str(CACHE)})  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "lab-x86-tdp: x86_64" in proc.stderr and "tdp yes, tdp_mmu yes" in proc.stderr
    records = read_results(results / "lab-1.jsonl")
    got = {(r["host"], str(r["nodeid"]).split("::")[-1]): r["outcome"] for r in records}
    here = ({str(r["host"]) for r in records} - {"lab-x86-tdp"}).pop()
    assert got[("lab-x86-tdp", "test_pre_fault_memory[default]")] == "passed"
    facts = next(r["host_facts"] for r in records if r["host"] == "lab-x86-tdp")
    assert isinstance(facts, dict)
    assert {k: facts[k] for k in ("emulated", "tdp", "tdp_mmu", "guest_1g_pages", "pre_fault")} == {
        "emulated": "tcg", "tdp": "yes", "tdp_mmu": "yes", "guest_1g_pages": "yes", "pre_fault": "yes"}
    here_facts = next(r["host_facts"] for r in records if r["host"] == here)
    assert isinstance(here_facts, dict) and "emulated" not in here_facts
    assert (results / "mine-lab-x86-tdp").read_text() == "tcg"  # the user's test ran there, from the rootdir copy
    assert len(list(results.glob("mine-*"))) == 2
    table = (results / "table.txt").read_text()
    assert "pre_fault_memory_test" in table and "lab-x86-tdp" in table
    assert "lab-x86-tdp: stopped (pid" in proc.stderr and not (tmp_path / "run/state.json").exists()
    # the dashboards' files validate and name both hosts (pre_fault_memory_test prints no metrics)
    from test_lab import load_ci_stage

    problems = load_ci_stage().export_problems(results, ["lab-x86-tdp", here])
    assert problems == ["lab-1.junit.xml: no testcase carries a metric"], problems
    assert {p.name for p in (results / "lab-1.squad").iterdir()} == {"lab-x86-tdp", here}
