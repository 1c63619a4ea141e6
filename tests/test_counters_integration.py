"""--kvm-counters on this host's real KVM: perf counters inherited by the real selftest.

Needs tracefs: when it is not mounted, the run happens in a private mount namespace
(``unshare --mount``, root only) that mounts it, so the host's mounts stay as they are.
Skips with the reason without /dev/kvm, the build, tracefs or permission.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_integration import CACHE_ROOT, _real_build

from pytest_kvmmm.engine.counters.tracefs import find_tracefs

SCRIPT = """
import sys
from pathlib import Path
from pytest_kvmmm.engine.counters.tracefs import find_tracefs
from pytest_kvmmm.coordination.host_changes import mount_fs
if find_tracefs(Path("/")).path is None:
    why = mount_fs("tracefs", Path("/sys/kernel/tracing"))
    if why:
        print("SKIP", why)
        sys.exit(0)
if "--kvm-counters=vm" in sys.argv:  # per-VM stats: debugfs, mounted in this namespace only
    from pytest_kvmmm.engine.counters.vmstats import _debugfs_mounted
    if not _debugfs_mounted(Path("/")):
        why = mount_fs("debugfs", Path("/sys/kernel/debug"))
        if why:
            print("SKIP", why)
            sys.exit(0)
import pytest
sys.exit(pytest.main(sys.argv[1:]))
"""


def run_counted(tmp_path: Path, *args: str) -> tuple[str, list[dict[str, object]]]:
    _real_build()
    argv = [sys.executable, "-c", SCRIPT, "--pyargs", "pytest_kvmmm.suite", "--kvm-scale", "smoke",
            f"--kvm-results={tmp_path / 'r.jsonl'}", "--kvm-kernel-log", "report", "-p", "no:cacheprovider", *args]
    if find_tracefs(Path("/")).path is None or "--kvm-counters=vm" in args:
        unshare = shutil.which("unshare")
        if os.geteuid() != 0 or unshare is None:
            pytest.skip("tracefs is not mounted, and only root (with unshare) can mount it privately for the test")
        argv = [unshare, "--mount", "--propagation", "private", *argv]
    env = {**os.environ, "KVMMM_CACHE_DIR": str(CACHE_ROOT)}
    out = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600).stdout
    if out.startswith("SKIP"):
        pytest.skip(out)
    if "kvmmm: counters off:" in out:
        pytest.skip(out.split("kvmmm: counters off:", 1)[1].splitlines()[0])
    results = tmp_path / "r.jsonl"
    return out, [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else []


def test_a_real_page_table_run_is_counted_per_stage_while_it_runs(tmp_path: Path) -> None:
    out, records = run_counted(tmp_path, "-k", "test_kvm_page_table and anonymous]", "--kvm-counters", "mmu,exits")
    assert "Traceback" not in out and "kvmmm: counters:" in out
    rec = next(r for r in records if r["status"] == "passed")
    counters = rec["counters"]
    assert isinstance(counters, dict)
    stages, total = counters["stages"], counters["total"]
    assert counters["stage_order"] == ["KVM_CREATE_MAPPINGS", "KVM_UPDATE_MAPPINGS", "KVM_ADJUST_MAPPINGS"]
    busiest = max(total, key=lambda e: total[e])
    assert total[busiest] > 1000, f"the selftest's events reach the counter: {total}"
    # read while the selftest ran: each stage has its own share (the counts of live children
    # are summed on read), and the stages add up to no more than the whole run
    assert all(stages[s][busiest] > 0 for s in stages), stages
    assert sum(stages[s][busiest] for s in stages) <= total[busiest]
    assert "kvm_page_table_test counts" in out and "KVM_CREATE_MAPPINGS" in out


def test_an_explicit_event_this_host_lacks_is_a_header_note_not_a_failure(tmp_path: Path) -> None:
    out, records = run_counted(tmp_path, "-k", "test_kvm_page_table and anonymous]",
                               "--kvm-counters", "kvm:kvm_exit,kvm:no_such_event")
    assert "not on this host: kvm:no_such_event" in out
    assert [r["status"] for r in records] == ["passed"]


def test_per_vm_debugfs_stats_of_a_real_run_or_why_not(tmp_path: Path) -> None:
    """Levels (``pages_4k``) are read-only files, readable even under lockdown; counts are writable
    files, refused under lockdown, and then named in the header instead."""
    out, records = run_counted(tmp_path, "-k", "test_kvm_page_table and anonymous]", "--kvm-counters=vm")
    header = next(line for line in out.splitlines() if line.startswith("kvmmm: counters") or "per-VM stats off" in line)
    if "per-VM stats off: debugfs is root's" in header or "is KVM loaded" in header:
        pytest.skip(header)
    rec = next(r for r in records if r["status"] == "passed")
    total = rec["counters"]["total"]
    assert "vm:pages_4k" in total and "vm:pages_2m" in total, total
    if "lockdown" in header:
        assert "remote_tlb_flush" in header and "vm:remote_tlb_flush" not in total
    else:
        assert total["vm:exits"] > 0 and rec["counters"]["stages"]["KVM_CREATE_MAPPINGS"]["vm:pf_taken"] > 0, rec["counters"]
