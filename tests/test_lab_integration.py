"""The real lab, end to end: one emulated arm64 host (QEMU TCG) and this host in one xdist run.

Runs only when the lab images exist (``ci/lab/lab.py build``) and QEMU is installed; it
skips with the reason otherwise. About a minute: the 4 KiB host boots, reports its facts
through its own gateway, and runs the page-table test in its default guest mode while
this host runs it in its own; each skips the other's mode.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "ci" / "lab"))

from kvmmm_lab import image  # noqa: E402

from pytest_kvmmm.provision.cache import default_cache_root  # noqa: E402
from pytest_kvmmm.results import read_results  # noqa: E402

#: The real cache root, read at import: pytester fixtures move HOME.
CACHE = Path(os.path.abspath(default_cache_root()))


def lab_missing() -> str | None:
    if shutil.which("qemu-system-aarch64") is None:
        return "qemu-system-aarch64 is not installed (apt-get install qemu-system-arm)"
    try:
        image.load_image(image.LabPaths(CACHE / "lab"), "4k")
    except image.LabUnavailable as exc:
        return str(exc)
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "no usable /dev/kvm on this host for the popen gateway"
    return None


@pytest.mark.skipif(lab_missing() is not None, reason=f"lab not available: {lab_missing()}")
def test_one_arm64_lab_host_and_this_host(tmp_path: Path) -> None:
    share = tmp_path / "share"
    args = [sys.executable, str(REPO / "ci/lab/lab.py"), "run", "--flavours", "4k", "--port-base", "0",
            "--run-dir", str(tmp_path / "run"), "--share", str(share), "--timeout", "240", "--",
            "-p", "no:cacheprovider", "-k", "test_kvm_page_table", "--kvm-scale", "smoke",
            "--kvm-guest-modes", "p40v48_4k,pxxv48_4k", "--kvm-backing-srcs", "anonymous"]  # fmt: skip
    proc = subprocess.run(args, capture_output=True, text=True, timeout=900, env={**os.environ, "KVMMM_CACHE_DIR": str(CACHE)})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "lab-arm64-4k: aarch64" in proc.stderr and "TTRem 2" in proc.stderr and "KVM arm64-vhe" in proc.stderr
    records = read_results(share / "lab.jsonl")
    hosts = {r["host"] for r in records}
    assert len(hosts) == 2 and "lab-arm64-4k" in hosts, hosts
    here = (hosts - {"lab-arm64-4k"}).pop()
    got = {(r["host"], str(r["nodeid"]).split("[")[1].rstrip("]")): r["outcome"] for r in records}
    assert got == {
        ("lab-arm64-4k", "anonymous-p40v48_4k"): "passed",  # arm64's default mode
        ("lab-arm64-4k", "anonymous-pxxv48_4k"): "skipped",  # x86's
        (here, "anonymous-pxxv48_4k"): "passed",
        (here, "anonymous-p40v48_4k"): "skipped",
    }
    arm = next(r for r in records if r["host"] == "lab-arm64-4k" and r["outcome"] == "passed")
    facts, metrics = arm["host_facts"], arm["metrics"]
    assert isinstance(facts, dict) and facts["ttrem"] == "2" and facts["arch"] == "aarch64"
    assert isinstance(metrics, dict) and metrics["KVM_CREATE_MAPPINGS"] > 0
    assert list((share / "allure").glob("*-result.json")), "the guest's Allure results reach the shared directory"
    assert "lab-arm64-4k: stopped (pid" in proc.stderr and not (tmp_path / "run/state.json").exists()
