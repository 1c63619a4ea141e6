"""``kvmmm-build``: source location, the partial unpack, the make steps and the CLI contract.

The make steps run the real ``make -k`` on a tiny fake kernel tree whose kvm Makefile
"builds" two programs with ``cp`` and fails a third, so the logic is exercised in well
under a second without a compiler. Nothing here needs root or runs the real apt-get.
"""

from __future__ import annotations

import io
import json
import os
import resource
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from filelock import FileLock

from pytest_kvmmm.provision import build, cli, source
from pytest_kvmmm.provision.build import BuildOptions, Target
from pytest_kvmmm.provision.cache import (
    BuildManifest,
    read_manifest,
    selftests_dir,
    write_manifest,
)
from pytest_kvmmm.provision.source import ProvisionError

REPO = Path(__file__).resolve().parent.parent
VERSION = "6.12.117"
HOST = Target.host()
PROGRAMS = ["kvm_page_table_test", "x86_64/dirty_log_page_splitting_test", "broken_test"]

TOP_MAKEFILE = """\
VERSION = 6
PATCHLEVEL = 12
SUBLEVEL = 117
EXTRAVERSION =
NAME = Fake Opossum

headers:
\tmkdir -p usr/include/linux
\techo '/* exported */' > usr/include/linux/kvm.h
"""

# Like the real one: lib.mk prefixes $(OUTPUT)/, "all" builds the list, a broken test fails.
KVM_MAKEFILE = """\
TEST_GEN_PROGS = kvm_page_table_test x86_64/dirty_log_page_splitting_test
TEST_GEN_PROGS_EXTENDED = broken_test
OUTPUT ?= $(CURDIR)
TEST_GEN_PROGS := $(patsubst %,$(OUTPUT)/%,$(TEST_GEN_PROGS))
TEST_GEN_PROGS_EXTENDED := $(patsubst %,$(OUTPUT)/%,$(TEST_GEN_PROGS_EXTENDED))

all: $(TEST_GEN_PROGS) $(TEST_GEN_PROGS_EXTENDED)

$(OUTPUT)/broken_test:
\t@echo 'broken_test.c:1:1: error: TEST_ASSERT_EQ undeclared' >&2; exit 1

$(OUTPUT)/%: %.c
\tmkdir -p $(dir $@)
\tcp $< $@
\tchmod +x $@
"""


def fake_tree(
    root: Path,
    *,
    makefile: str = TOP_MAKEFILE,
    kvm_makefile: str = KVM_MAKEFILE,
    srcarches: tuple[str, ...] = (HOST.srcarch,),
) -> Path:
    """A kernel tree with every member the partial unpack selects, plus a directory it must skip."""
    members = {m: None for arch in srcarches for m in source.tarball_members(".", arch)}
    for member in [*members, "./drivers/gpu"]:
        path = root / member
        if path.suffix or path.parent == root:  # Kbuild, lib.mk, kselftest.h...
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("# fake\n")
        else:
            path.mkdir(parents=True, exist_ok=True)
            (path / "README").write_text(member + "\n")
    (root / "Makefile").write_text(makefile)
    kvm = root / build.KVM_DIR
    (kvm / "x86_64").mkdir(parents=True, exist_ok=True)
    (kvm / "Makefile").write_text(kvm_makefile)
    (kvm / "kvm_page_table_test.c").write_text("int main(void) { return 0; }\n")
    (kvm / "x86_64/dirty_log_page_splitting_test.c").write_text("int main(void) { return 0; }\n")
    return root


def make_tarball(tree: Path, out: Path) -> Path:
    subprocess.run(["tar", "-cJf", str(out), "-C", str(tree.parent), tree.name], check=True)
    return out


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = cli.main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def assert_one_error_line(err: str, *fragments: str) -> None:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("kvmmm-build: error: ")
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0]


def complete_cache(cache: Path, *, failed: tuple[str, ...] = ()) -> Path:
    build_dir = selftests_dir(cache) / VERSION
    build_dir.mkdir(parents=True)
    manifest = BuildManifest(
        VERSION, HOST.machine, "fake", built=("kvm_page_table_test",), failed=failed
    )
    write_manifest(build_dir, manifest)
    return build_dir


def empty_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A PATH with no make, gcc, tar or apt-get: any attempt to run them fails."""
    (tmp_path / "empty-bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))


class TestVersion:
    @pytest.mark.parametrize(
        ("text", "version"),
        [
            (TOP_MAKEFILE, "6.12.117"),
            ("VERSION = 6\nPATCHLEVEL = 13\nSUBLEVEL = 0\nEXTRAVERSION = -rc3\n", "6.13.0-rc3"),
            ("VERSION = 5\nPATCHLEVEL = 4\nSUBLEVEL =\nEXTRAVERSION =\n", "5.4"),
            ("# SPDX\nVERSION = 6\nPATCHLEVEL = 1\nSUBLEVEL = 192\n", "6.1.192"),
            ("all:\n\techo hi\n", None),
            ("VERSION = six\nPATCHLEVEL = 1\n", None),
            ("VERSION = 6\nPATCHLEVEL = 1\nSUBLEVEL = 2\nEXTRAVERSION = /../x\n", None),
        ],
    )
    def test_parse_kernel_version(self, text: str, version: str | None) -> None:
        assert source.parse_kernel_version(text) == version

    def test_tree_version_needs_the_kvm_selftests(self, tmp_path: Path) -> None:
        (tmp_path / "Makefile").write_text(TOP_MAKEFILE)
        with pytest.raises(ProvisionError, match="not a kernel source tree"):
            source.tree_version(tmp_path)
        assert source.tree_version(fake_tree(tmp_path)) == VERSION


class TestMemberSelection:
    def test_x86_members(self) -> None:
        assert source.tarball_members("linux-source-6.12", "x86") == [
            f"linux-source-6.12/{p}"
            for p in ("Makefile", "Kbuild", "Kconfig", "scripts", "include/uapi", "arch/x86",
                      "tools/include", "tools/arch/x86", "tools/build", "tools/lib", "tools/scripts",
                      "tools/testing/selftests/kvm", "tools/testing/selftests/lib.mk",
                      "tools/testing/selftests/kselftest.h",
                      "tools/testing/selftests/kselftest_harness.h",
                      "tools/testing/selftests/rseq", "tools/testing/selftests/cgroup")
        ]  # fmt: skip

    def test_arch_follows_the_target(self) -> None:
        members = source.tarball_members("linux", "arm64")
        assert "linux/arch/arm64" in members and "linux/tools/arch/arm64" in members
        assert "linux/include" not in members  # include/uapi is all `make headers` reads
        assert not any("x86" in m or "drivers" in m for m in members)

    def test_srcarch(self) -> None:
        assert source.kernel_srcarch("x86_64") == "x86"
        assert source.kernel_srcarch("aarch64") == "arm64"
        with pytest.raises(ProvisionError, match="sparc64"):
            source.kernel_srcarch("sparc64")

    def test_unpack_extracts_only_the_selection(self, tmp_path: Path) -> None:
        tarball = make_tarball(fake_tree(tmp_path / "linux-source-6.12"), tmp_path / "src.tar.xz")
        assert source.peek_tarball(tarball) == ("linux-source-6.12", VERSION)
        dest = tmp_path / "cache/src" / VERSION
        source.unpack_tarball(tarball, dest, "linux-source-6.12", HOST.srcarch, "id-1")
        assert (dest / "Makefile").read_text() == TOP_MAKEFILE
        assert (dest / build.KVM_DIR / "Makefile").is_file()
        assert (dest / "tools/lib/README").is_file()
        assert (dest / "tools/testing/selftests/lib.mk").is_file()
        assert not (dest / "drivers").exists()
        assert source.unpacked_identity(dest) == "id-1"
        assert not dest.with_name(VERSION + ".partial").exists()


class TestLocate:
    def test_tarball_version_is_indexed(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        tarball = make_tarball(fake_tree(tmp_path / "linux-source-6.12"), tmp_path / "src.tar.xz")
        cache = tmp_path / "cache"
        first = source.locate_source(tarball, cache)
        assert (first.version, first.top) == (VERSION, "linux-source-6.12")
        monkeypatch.setattr(source, "peek_tarball", pytest.fail)  # the index answers now
        assert source.locate_source(tarball, cache) == first
        os.utime(tarball, ns=(0, 0))  # a replaced tarball is a new identity
        monkeypatch.undo()
        assert source.locate_source(tarball, cache).identity != first.identity
        assert len(json.loads((cache / source.INDEX_NAME).read_text())) == 2


class TestProgramList:
    def test_parse_program_list(self) -> None:
        out = Path("/c/selftests/6.12.117")
        text = (
            "make: some noise\n"
            "kvmmm-var TEST_GEN_PROGS=/c/selftests/6.12.117/x86_64/a_test /c/selftests/6.12.117/b_test\n"
            "kvmmm-var TEST_GEN_PROGS_EXTENDED=/c/selftests/6.12.117/x86_64/a_test c_test\n"
            "kvmmm-var TEST_PROGS=x86_64/nx_huge_pages_test.sh\n"
        )
        assert build.parse_program_list(text, out) == ["x86_64/a_test", "b_test", "c_test"]

    def test_list_programs_asks_the_makefile(self, tmp_path: Path) -> None:
        tree = fake_tree(tmp_path / "linux")
        out = tmp_path / "out"
        out.mkdir()
        assert build.list_programs(tree, out, HOST) == PROGRAMS

    def test_split_built(self, tmp_path: Path) -> None:
        (tmp_path / "x86_64").mkdir()
        for name, mode in (("ok", 0o755), ("x86_64/ok2", 0o755), ("not_exec", 0o644)):
            (tmp_path / name).write_text("")
            (tmp_path / name).chmod(mode)
        (tmp_path / "a_dir").mkdir()
        programs = ["ok", "x86_64/ok2", "not_exec", "missing", "a_dir"]
        assert build.split_built(tmp_path, programs) == (
            ["ok", "x86_64/ok2"],
            ["not_exec", "missing", "a_dir"],
        )


class TestColdBuild:
    def test_tarball_build_reports_built_and_failed(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        tarball = make_tarball(fake_tree(tmp_path / "linux-source-6.12"), tmp_path / "src.tar.xz")
        cache = tmp_path / "cache"
        status, out, err = run_cli(
            capsys, "--source", str(tarball), "--cache-dir", str(cache), "--no-apt"
        )
        build_dir = selftests_dir(cache) / VERSION
        assert status == 0, err
        assert (
            out == f"kvm selftests {VERSION} ({HOST.machine}): 2 built, 1 failed -> {build_dir}\n"
        )
        assert "warning: 1 failed to build: broken_test" in err
        assert [ln.split(" ...")[0] for ln in err.splitlines() if " ..." in ln] == [
            f"kvmmm-build: unpacking src.tar.xz into {cache / 'src' / VERSION}",
            f"kvmmm-build: make headers -j{os.cpu_count()} (log: {build_dir / 'headers.log'})",
            f"kvmmm-build: building 3 kvm selftests -j{os.cpu_count()} (log: {build_dir / 'build.log'})",
        ]
        manifest = read_manifest(build_dir)
        assert manifest is not None
        assert list(manifest.built) == PROGRAMS[:2]
        assert list(manifest.failed) == ["broken_test"]
        assert manifest.source == str(tarball)
        assert (
            cache / "src" / VERSION / "usr/include/linux/kvm.h"
        ).is_file()  # headers ran in the unpack
        assert "TEST_ASSERT_EQ undeclared" in (build_dir / "build.log").read_text()

    def test_strict_fails_on_a_failed_program(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        tree = fake_tree(tmp_path / "linux")
        status, _, _ = run_cli(
            capsys, "--source", str(tree), "--cache-dir", str(tmp_path / "c"), "--strict"
        )
        assert status == 1
        assert read_manifest(selftests_dir(tmp_path / "c") / VERSION) is not None  # still complete

    def test_json_and_print_dir(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        tree = fake_tree(tmp_path / "linux")
        cache = str(tmp_path / "c")
        status, out, _ = run_cli(capsys, "--source", str(tree), "--cache-dir", cache, "--json")
        assert status == 0
        assert json.loads(out)["built"] == PROGRAMS[:2]
        status, out, err = run_cli(
            capsys, "--source", str(tree), "--cache-dir", cache, "--print-dir"
        )
        assert (status, out) == (0, f"{selftests_dir(Path(cache)) / VERSION}\n")
        assert "broken_test" in err  # the warning still reaches the user

    def test_force_rebuilds_from_clean(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        tree = fake_tree(tmp_path / "linux")
        cache = tmp_path / "c"
        build_dir = complete_cache(cache)
        (build_dir / "stale_test").write_text("")
        status, out, _ = run_cli(
            capsys, "--source", str(tree), "--cache-dir", str(cache), "--force"
        )
        assert (status, "2 built, 1 failed" in out) == (0, True)
        assert not (build_dir / "stale_test").exists()

    def test_nothing_built_is_an_error_and_leaves_no_manifest(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        broken = KVM_MAKEFILE.replace(
            "\tcp $< $@", "\t@echo 'x.c:1: error: no compiler' >&2; false"
        )
        tree = fake_tree(tmp_path / "linux", kvm_makefile=broken)
        status, out, err = run_cli(
            capsys, "--source", str(tree), "--cache-dir", str(tmp_path / "c")
        )
        assert (status, out) == (1, "")
        assert "none of the 3 kvm selftests built" in err.splitlines()[-1]
        assert read_manifest(selftests_dir(tmp_path / "c") / VERSION) is None

    def test_make_headers_failure(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        tree = fake_tree(tmp_path / "linux", makefile=TOP_MAKEFILE.replace("mkdir -p", "false"))
        status, _, err = run_cli(capsys, "--source", str(tree), "--cache-dir", str(tmp_path / "c"))
        assert status == 1
        assert "error: `make headers` failed" in err.splitlines()[-1]
        assert "headers.log" in err.splitlines()[-1]


class TestWarmCache:
    def test_warm_run_builds_nothing(self, tmp_path: Path) -> None:
        """A real process, as a user runs it: fast, and without make on PATH."""
        tarball = tmp_path / "linux-source-6.12.tar.xz"
        tarball.write_bytes(b"not even a tarball: the index answers, so it is never read")
        cache = tmp_path / "cache"
        build_dir = complete_cache(cache, failed=("broken_test",))
        source.SourceIndex(cache / source.INDEX_NAME).record(
            source.tarball_identity(tarball), "linux-source-6.12", VERSION
        )
        (tmp_path / "empty-bin").mkdir()
        env = {**os.environ, "PATH": str(tmp_path / "empty-bin"), "PYTHONPATH": str(REPO)}
        args = [sys.executable, "-m", "pytest_kvmmm.provision.cli", "--source", str(tarball),
                "--cache-dir", str(cache)]  # fmt: skip
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.monotonic()
        proc = subprocess.run(args, capture_output=True, text=True, env=env)
        elapsed = time.monotonic() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        assert proc.returncode == 0, proc.stderr
        assert (
            proc.stdout
            == f"kvm selftests {VERSION} ({HOST.machine}): 1 built, 1 failed -> {build_dir}\n"
        )
        assert "warning: 1 failed to build: broken_test" in proc.stderr
        # Fast is the process's CPU time: a Python start and a cache look-up (unpacking or
        # building would be seconds to minutes). Wall time is the shared host's load (1.3 s
        # seen at load 20 on two cores); its bound only catches a run that waits.
        assert cpu < 1.0, f"a warm run took {cpu:.2f} s of CPU"
        assert elapsed < 10.0, f"a warm run took {elapsed:.1f} s"
        assert not (build_dir / "build.log").exists()

    def test_warm_tree_source(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        tree = fake_tree(tmp_path / "linux")
        complete_cache(tmp_path / "c")
        empty_path(tmp_path, monkeypatch)
        status, out, _ = run_cli(
            capsys, "--source", str(tree), "--cache-dir", str(tmp_path / "c"), "--strict"
        )
        assert (status, "1 built, 0 failed" in out) == (0, True)


class TestErrors:
    def test_missing_default_source_with_no_apt(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        monkeypatch.setattr(build, "DEFAULT_TARBALL", tmp_path / "linux-source-6.12.tar.xz")
        status, out, err = run_cli(capsys, "--no-apt", "--cache-dir", str(tmp_path / "c"))
        assert (status, out) == (1, "")
        assert_one_error_line(
            err, "is missing", "apt-get install -y linux-source-6.12", "--no-apt", "--source"
        )

    def test_missing_default_source_as_non_root(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        monkeypatch.setattr(build, "DEFAULT_TARBALL", tmp_path / "linux-source-6.12.tar.xz")
        monkeypatch.setattr(os, "geteuid", lambda: 1000)
        status, _, err = run_cli(capsys, "--cache-dir", str(tmp_path / "c"))
        assert status == 1
        assert_one_error_line(err, "run `apt-get install -y linux-source-6.12` as root")

    def test_missing_source_path(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        status, _, err = run_cli(
            capsys, "--source", str(tmp_path / "nope"), "--cache-dir", str(tmp_path)
        )
        assert status == 1
        assert_one_error_line(err, "nope: no such file or directory")

    def test_tarball_that_is_not_a_kernel(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        (tmp_path / "project").mkdir()
        (tmp_path / "project/README").write_text("hello\n")
        tarball = make_tarball(tmp_path / "project", tmp_path / "linux-source-9.9.tar.xz")
        status, _, err = run_cli(
            capsys, "--source", str(tarball), "--cache-dir", str(tmp_path / "c")
        )
        assert status == 1
        assert_one_error_line(err, "is not a kernel source tarball", "Not found in archive")

    def test_tarball_with_a_foreign_makefile(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        (tmp_path / "project").mkdir()
        (tmp_path / "project/Makefile").write_text("all:\n\ttrue\n")
        tarball = make_tarball(tmp_path / "project", tmp_path / "x.tar.xz")
        status, _, err = run_cli(
            capsys, "--source", str(tarball), "--cache-dir", str(tmp_path / "c")
        )
        assert status == 1
        assert_one_error_line(
            err, "not a kernel source tarball (no top-level Makefile with VERSION)"
        )

    def test_file_that_is_not_a_tarball(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        (tmp_path / "x.tar.xz").write_text("plain text\n")
        status, _, err = run_cli(
            capsys, "--source", str(tmp_path / "x.tar.xz"), "--cache-dir", str(tmp_path / "c")
        )
        assert status == 1
        assert_one_error_line(
            err, "is not a kernel source tarball", "does not look like a tar archive"
        )

    def test_make_missing(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        tree = fake_tree(tmp_path / "linux")
        empty_path(tmp_path, monkeypatch)
        status, _, err = run_cli(
            capsys, "--source", str(tree), "--cache-dir", str(tmp_path / "c"), "--no-apt"
        )
        assert status == 1
        assert_one_error_line(err, "make and gcc not found", "apt-get install -y build-essential")

    def test_make_missing_and_no_apt_get(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        tree = fake_tree(tmp_path / "linux")
        empty_path(tmp_path, monkeypatch)
        monkeypatch.setattr(os, "geteuid", lambda: 0)
        status, _, err = run_cli(capsys, "--source", str(tree), "--cache-dir", str(tmp_path / "c"))
        assert status == 1
        assert_one_error_line(err, "no apt-get on this system")

    def test_disk_error(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        tree = fake_tree(tmp_path / "linux")
        (tmp_path / "a-file").write_text("")
        status, _, err = run_cli(
            capsys, "--source", str(tree), "--cache-dir", str(tmp_path / "a-file")
        )
        assert status == 1
        assert_one_error_line(err, str(tmp_path / "a-file"), "Not a directory")

    def test_no_traceback_from_the_real_command(self, tmp_path: Path) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        args = [
            sys.executable,
            "-m",
            "pytest_kvmmm.provision.cli",
            "--source",
            str(tmp_path / "missing"),
        ]
        proc = subprocess.run(args, capture_output=True, text=True, env=env)
        assert (proc.returncode, proc.stdout) == (1, "")
        assert_one_error_line(proc.stderr, "no such file or directory")


def fake_apt_get(bindir: Path, tarball: Path, installed: Path) -> Path:
    """An apt-get that knows the package only after ``update`` and then "installs" the tarball."""
    bindir.mkdir(parents=True, exist_ok=True)
    calls = bindir / "apt-get.calls"
    script = bindir / "apt-get"
    script.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import os, shutil, sys
        calls, updated = {str(calls)!r}, {str(bindir / "updated")!r}
        with open(calls, "a") as fh:
            fh.write(" ".join(sys.argv[1:]) + " " + os.environ.get("DEBIAN_FRONTEND", "") + "\\n")
        if sys.argv[1] == "update":
            open(updated, "w").close()
        elif not os.path.exists(updated):
            sys.exit("E: Unable to locate package " + sys.argv[-1])
        else:
            shutil.copy({str(tarball)!r}, {str(installed)!r})
    """))  # fmt: skip
    script.chmod(0o755)
    return calls


def test_apt_installs_the_default_source_after_update(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    tarball = make_tarball(fake_tree(tmp_path / "linux-source-6.12"), tmp_path / "built.tar.xz")
    installed = tmp_path / "usr-src/linux-source-6.12.tar.xz"
    installed.parent.mkdir()
    calls = fake_apt_get(tmp_path / "bin", tarball, installed)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(build, "DEFAULT_TARBALL", installed)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    status, out, err = run_cli(capsys, "--cache-dir", str(tmp_path / "c"))
    assert status == 0, err
    assert "2 built, 1 failed" in out
    assert err.startswith("kvmmm-build: apt-get install -y linux-source-6.12 ... ")
    assert calls.read_text().splitlines() == [
        "install -y linux-source-6.12 noninteractive",
        "update noninteractive",
        "install -y linux-source-6.12 noninteractive",
    ]


def test_a_second_build_waits_for_the_lock_then_finds_the_cache_complete(tmp_path: Path) -> None:
    tree = fake_tree(tmp_path / "linux")
    cache = tmp_path / "c"
    build_dir = selftests_dir(cache) / VERSION
    build_dir.mkdir(parents=True)
    progress = io.StringIO()
    opts = BuildOptions(cache_root=cache, jobs=1, target=HOST, allow_apt=False, progress=progress)
    results: list[build.BuildResult] = []
    with FileLock(str(selftests_dir(cache) / f"{VERSION}.lock")):  # "another kvmmm-build"
        waiter = threading.Thread(target=lambda: results.append(build.provision(tree, opts)))
        waiter.start()
        deadline = time.monotonic() + 5
        while "waiting for another build" not in progress.getvalue():
            assert time.monotonic() < deadline, progress.getvalue()
            time.sleep(0.01)
        assert not results
        write_manifest(build_dir, BuildManifest(VERSION, HOST.machine, "other", built=("a",)))
    waiter.join(5)
    assert results and results[0].cached
    assert list(results[0].manifest.built) == ["a"]
    assert not (build_dir / "build.log").exists()


def test_apt_install_that_does_not_deliver(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin/apt-get").write_text(f"#!{sys.executable}\n")  # succeeds, installs nothing
    (tmp_path / "bin/apt-get").chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.setattr(build, "DEFAULT_TARBALL", tmp_path / "linux-source-6.12.tar.xz")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    status, _, err = run_cli(capsys, "--cache-dir", str(tmp_path / "c"))
    assert status == 1
    assert err.splitlines()[-1] == (
        "kvmmm-build: error: `apt-get install -y linux-source-6.12` succeeded, "
        f"but {tmp_path / 'linux-source-6.12.tar.xz'} is missing"
    )


# Like KVM_MAKEFILE, but each program records the make variables a cross build passes.
CROSS_KVM_MAKEFILE = KVM_MAKEFILE.replace("\tcp $< $@", "\techo 'ARCH=$(ARCH) CROSS_COMPILE=$(CROSS_COMPILE)' > $@")


def fake_compiler(bindir: Path, name: str) -> None:
    bindir.mkdir(parents=True, exist_ok=True)
    (bindir / name).write_text("#!/bin/sh\nexit 0\n")
    (bindir / name).chmod(0o755)


class TestCrossBuild:
    def test_arm64_from_x86(self) -> None:
        target = Target.for_arch("arm64", host_machine="x86_64")
        assert (target.machine, target.srcarch) == ("aarch64", "arm64")
        assert target.make_vars == ("ARCH=arm64", "CROSS_COMPILE=aarch64-linux-gnu-")
        assert target.compiler == "aarch64-linux-gnu-gcc"
        assert target.packages == "gcc-aarch64-linux-gnu libc6-dev-arm64-cross"
        assert target.cross and target.dir_name(VERSION) == f"{VERSION}-aarch64"
        assert Target.for_arch("aarch64", host_machine="x86_64") == target

    def test_the_host_arch_is_a_native_build(self) -> None:
        native = Target("x86_64", "x86")
        for arch in (None, "x86_64", "amd64", "x86"):
            assert Target.for_arch(arch, host_machine="x86_64") == native
        assert not native.cross and native.dir_name(VERSION) == VERSION
        assert native.packages == "build-essential"

    def test_an_explicit_prefix_cross_compiles_even_for_the_host_arch(self) -> None:
        target = Target.for_arch(None, "x86_64-linux-gnu-", host_machine="x86_64")
        assert target.make_vars == ("ARCH=x86", "CROSS_COMPILE=x86_64-linux-gnu-")
        assert target.dir_name(VERSION) == f"{VERSION}-x86_64"

    def test_unknown_arch(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        with pytest.raises(ProvisionError, match="sparc64"):
            Target.for_arch("sparc64")
        status, _, err = run_cli(capsys, "--arch", "sparc64", "--cache-dir", str(tmp_path))
        assert status == 1
        assert_one_error_line(err, "machine 'sparc64'")

    def test_cross_build_of_a_tree(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        tree = fake_tree(tmp_path / "linux", kvm_makefile=CROSS_KVM_MAKEFILE, srcarches=("arm64",))
        fake_compiler(tmp_path / "bin", "fake-linux-gnu-gcc")
        monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
        cache = tmp_path / "c"
        status, out, err = run_cli(capsys, "--source", str(tree), "--cache-dir", str(cache),
                                   "--arch", "arm64", "--cross-compile", "fake-linux-gnu-")  # fmt: skip
        build_dir = selftests_dir(cache) / f"{VERSION}-aarch64"
        assert status == 0, err
        assert out == f"kvm selftests {VERSION} (aarch64): 2 built, 1 failed -> {build_dir}\n"
        manifest = read_manifest(build_dir)
        assert manifest is not None and manifest.arch == "aarch64"
        assert (build_dir / "kvm_page_table_test").read_text() == "ARCH=arm64 CROSS_COMPILE=fake-linux-gnu-\n"
        assert "ARCH=arm64 CROSS_COMPILE=fake-linux-gnu- headers" in (build_dir / "headers.log").read_text()
        assert not (selftests_dir(cache) / VERSION).exists()  # the native build keeps its own place

    def test_cross_and_native_builds_of_a_tarball_unpack_apart(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        tree = fake_tree(tmp_path / "linux-source-6.12", srcarches=(HOST.srcarch, "arm64"))
        tarball = make_tarball(tree, tmp_path / "src.tar.xz")
        fake_compiler(tmp_path / "bin", "fake-linux-gnu-gcc")
        monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
        cache = tmp_path / "c"
        for extra in ((), ("--arch", "arm64", "--cross-compile", "fake-linux-gnu-")):
            status, _, err = run_cli(capsys, "--source", str(tarball), "--cache-dir", str(cache), *extra)
            assert status == 0, err
        assert (cache / "src" / VERSION / "arch" / HOST.srcarch).is_dir()
        assert (cache / "src" / f"{VERSION}-aarch64/arch/arm64").is_dir()
        assert not (cache / "src" / f"{VERSION}-aarch64/drivers").exists()
        assert {d.name for d in selftests_dir(cache).iterdir() if d.is_dir()} == {VERSION, f"{VERSION}-aarch64"}

    def test_missing_cross_compiler_names_debians_packages(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        tree = fake_tree(tmp_path / "linux", srcarches=("arm64",))
        make = shutil.which("make")
        assert make is not None
        (tmp_path / "bin").mkdir()
        (tmp_path / "bin/make").symlink_to(make)
        monkeypatch.setenv("PATH", str(tmp_path / "bin"))  # make, but no cross compiler
        status, _, err = run_cli(capsys, "--source", str(tree), "--cache-dir", str(tmp_path / "c"),
                                 "--arch", "arm64", "--no-apt")  # fmt: skip
        assert status == 1
        assert_one_error_line(
            err, "aarch64-linux-gnu-gcc not found",
            "apt-get install -y gcc-aarch64-linux-gnu libc6-dev-arm64-cross",
        )  # fmt: skip

    def test_apt_installs_several_packages(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        calls = fake_apt_get(tmp_path / "bin", tmp_path / "none", tmp_path / "none2")
        (tmp_path / "bin/updated").write_text("")
        (tmp_path / "none").write_text("")
        monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
        source.apt_install("gcc-aarch64-linux-gnu libc6-dev-arm64-cross")
        assert calls.read_text().splitlines() == [
            "install -y gcc-aarch64-linux-gnu libc6-dev-arm64-cross noninteractive"
        ]
