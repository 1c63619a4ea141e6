"""Sessions side by side on one host: hugetlb pools shared through the host-wide ledger.

The fake selftest below behaves as the kernel does for a hugetlb mmap: it takes its pages from
the fake root's pool (``free_hugepages``) or fails with ``errno: 12`` as the real binaries do,
and gives them back when it exits.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fakes import make_host_root

POOL_USER = """\
import fcntl, os, sys, time
root, need, hold = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
d = root + "/sys/kernel/mm/hugepages/hugepages-2048kB"
def take(n):
    with open(d + "/.kernel.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        free = int(open(d + "/free_hugepages").read())
        if free < n:
            return False
        # whole values only, as sysfs gives them: a reader between a truncate and a write
        # (the other session's plugin, which takes no lock of this fake) saw '' and skipped
        open(d + "/.free_hugepages.new", "w").write(f"{free - n}\\n")
        os.replace(d + "/.free_hugepages.new", d + "/free_hugepages")
        return True
if not take(need):
    sys.stderr.write("==== Test Assertion Failure ====\\n  lib/kvm_util.c:1042: vm_mem_add\\n"
                     "  mmap() failed, errno: 12 (Cannot allocate memory)\\n")
    sys.exit(254)
# hold the pages until both sessions collected their test (the other one is about to ask)
deadline = time.monotonic() + 30
while len([f for f in os.listdir(root) if f.startswith("collected-")]) < 2 and time.monotonic() < deadline:
    time.sleep(0.05)
time.sleep(hold)
take(-need)
print("pages used and given back")
"""


def _pool_user(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "pool_user"
    path.write_text(f"#!{sys.executable}\n" + POOL_USER)
    path.chmod(0o755)
    return path


def _session(pytester: pytest.Pytester, root: Path, bins: Path, name: str) -> subprocess.Popen[str]:
    test = pytester.path / f"test_{name}.py"
    test.write_text(textwrap.dedent(f"""
        import pytest

        open({str(root / f"collected-{name}")!r}, "w").close()

        @pytest.mark.kvm_requires(hugetlb={{"2M": 32}})
        @pytest.mark.kvm_selftest("pool_user", {str(root)!r}, 32, 1.5)
        def test_{name}():
            pass
    """))
    return subprocess.Popen(
        [sys.executable, "-m", "pytest", str(test), f"--kvm-host-snapshot={root}", f"--kvm-selftests={bins}",
         "-p", "no:cacheprovider", "-rA"],
        cwd=pytester.path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def test_two_sessions_on_one_pool_never_fail_with_enomem(pytester: pytest.Pytester, tmp_path: Path) -> None:
    """Each alone passes on the 32-page pool; side by side, the second waits for the first
    (before the host-wide ledger: it failed with ENOMEM, or skipped on the pool the first held)."""
    root = make_host_root(tmp_path / "root", pools={2048: {"nr": 32, "free": 32}})
    bins = tmp_path / "b"
    _pool_user(bins)
    sessions = [_session(pytester, root, bins, n) for n in ("one", "two")]
    outs = [s.communicate(timeout=120)[0] for s in sessions]
    for out, s in zip(outs, sessions):
        assert "errno: 12" not in out, out
        assert s.returncode == 0 and "1 passed" in out.splitlines()[-1], out  # not skipped either
    assert (root / "sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages").read_text().strip() == "32"
    assert any("waited" in out for out in outs), "one of them waited for the other's pages"


def test_an_untrustworthy_ledger_directory_errors_hugetlb_cases_only(
    pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ledger directory someone else could have planted (a link here) is never used: a case that
    needs hugetlb pages errors saying so, any other runs without it (and is never 'alone')."""
    from fakes import make_fake

    (tmp_path / "elsewhere").mkdir(mode=0o700)
    (tmp_path / "ledger").symlink_to(tmp_path / "elsewhere")
    monkeypatch.setenv("KVMMM_LEDGER_DIR", str(tmp_path / "ledger"))
    root = make_host_root(tmp_path / "root", pools={2048: {"nr": 32, "free": 32}})
    make_fake(tmp_path / "b", "quick", stdout="ok\n")
    pytester.makepyfile("""
        import pytest

        @pytest.mark.kvm_requires(hugetlb={"2M": 32})
        @pytest.mark.kvm_selftest("quick")
        def test_pages():
            pass

        @pytest.mark.kvm_selftest("quick")
        def test_plain():
            pass
    """)
    res = pytester.runpytest_subprocess(f"--kvm-host-snapshot={root}", f"--kvm-selftests={tmp_path / 'b'}",
                                        "-rA", "-p", "no:cacheprovider")
    res.assert_outcomes(passed=1, failed=1)
    res.stdout.fnmatch_lines_random([
        f"*refusing to use {tmp_path / 'ledger'}: it is a symbolic link: no host-wide hugetlb ledger there (remove it)*",
        "*note: cannot tell who else runs selftests on this host: refusing to use*",
    ])
    assert not list((tmp_path / "elsewhere").iterdir()), "nothing written through the link"
