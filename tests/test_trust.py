"""Trust boundaries as root on a shared host (issue 13, section 1): nothing read back from disk
makes root write where it should not, and nothing the plugin writes follows a link.

Attacks are staged the way another user of the host would: a symbolic link where a file of
ours should be, a journal of theirs, a directory they made first, journal entries that name
other files. The unprivileged user is ``nobody`` (files are chowned to it; root only).
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from fakes import make_fake, make_host_root
from pytest_kvmmm.coordination import journal_check, safefs
from pytest_kvmmm.coordination.host_changes import Change
from pytest_kvmmm.provision.cache import journal_dir

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to hand files to another user")
NOBODY = 65534
NR = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"
THP = "/sys/kernel/mm/transparent_hugepage/enabled"
FIELDS = ("kind", "path", "added", "old", "new")
KVM_AND_PLAIN = """
    import pytest

    @pytest.mark.kvm_selftest("quick")
    def test_kvm():
        pass

    def test_plain():
        pass
"""
NOT_REPLAYED = "kvmmm: host-change journal: not replayed, left as is: "


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


class Host:
    """A fake root with a 2 MiB pool of 40 pages, its journal directory and a passing selftest."""

    def __init__(self, tmp_path: Path) -> None:
        self.root = make_host_root(tmp_path / "root", pools={2048: {"nr": 40, "free": 0}})
        self.nr = self.root / NR.lstrip("/")
        self.journals = journal_dir(self.root, tmp_path / "cache")
        self.bins = tmp_path / "bins"
        make_fake(self.bins, "quick")

    def args(self, *more: str) -> list[str]:
        return [f"--kvm-host-snapshot={self.root}", f"--kvm-selftests={self.bins}", "-p", "no:cacheprovider", *more]

    def journal(self, entries: object, directory: Path | None = None) -> Path:
        """A dead process's journal, written as the plugin writes it (0600 in a 0700 directory)."""
        directory = directory or self.journals
        safefs.private_dir(directory)
        path = directory / f"{dead_pid()}.json"
        path.write_text(json.dumps(entries))
        path.chmod(0o600)
        return path


GROW_8 = {"kind": "hugetlb", "path": NR, "added": 8, "old": "", "new": ""}


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Host:
    monkeypatch.setenv("KVMMM_CACHE_DIR", str(tmp_path / "cache"))
    return Host(tmp_path)


def not_replayed_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith(NOT_REPLAYED)]


def test_a_trusted_journal_is_replayed(pytester: pytest.Pytester, host: Host) -> None:
    """The control: a journal of ours, private, naming our file, is replayed."""
    journal = host.journal([GROW_8])
    pytester.makepyfile(KVM_AND_PLAIN)
    res = pytester.runpytest(*host.args())
    res.assert_outcomes(passed=2)
    assert host.nr.read_text().strip() == "32" and not journal.exists()
    assert not not_replayed_lines(res.stdout.str())


def _symlinked_dir(host: Host, tmp_path: Path) -> str:
    elsewhere = tmp_path / "elsewhere"
    host.journal([GROW_8], elsewhere)
    host.journals.parent.mkdir(parents=True, exist_ok=True)
    host.journals.symlink_to(elsewhere)
    return f"{host.journals} is a symbolic link"


def _symlinked_file(host: Host, tmp_path: Path) -> str:
    real = host.journal([GROW_8], tmp_path / "elsewhere")
    link = host.journals / f"{dead_pid()}.json"
    safefs.private_dir(host.journals)
    link.symlink_to(real)
    return f"refusing to read {link}: it is a symbolic link"


def _shared_file(host: Host, tmp_path: Path) -> str:
    journal = host.journal([GROW_8])
    journal.chmod(0o666)
    return f"refusing to read {journal}: it is writable by group or others (mode 0666)"


def _shared_dir(host: Host, tmp_path: Path) -> str:
    host.journal([GROW_8])
    host.journals.chmod(0o777)
    return f"{host.journals} is writable by group or others (mode 0777)"


def _nobodys_file(host: Host, tmp_path: Path) -> str:
    journal = host.journal([GROW_8])
    os.chown(journal, NOBODY, NOBODY)
    return f"refusing to read {journal}: it is owned by nobody (uid {NOBODY})"


def _nobodys_dir(host: Host, tmp_path: Path) -> str:
    host.journal([GROW_8])
    os.chown(host.journals, NOBODY, NOBODY)
    return f"{host.journals} is owned by nobody (uid {NOBODY})"


@pytest.mark.parametrize(
    "stage",
    [_symlinked_dir, _symlinked_file, _shared_file, _shared_dir,
     pytest.param(_nobodys_file, marks=ROOT_ONLY), pytest.param(_nobodys_dir, marks=ROOT_ONLY)],
    ids=["symlinked-dir", "symlinked-file", "group-writable-file", "group-writable-dir", "nobodys-file", "nobodys-dir"],
)
def test_an_untrusted_journal_is_never_replayed(pytester: pytest.Pytester, host: Host, tmp_path: Path, stage: object) -> None:
    reason = stage(host, tmp_path)  # type: ignore[operator]
    pytester.makepyfile(KVM_AND_PLAIN)
    res = pytester.runpytest(*host.args())
    res.assert_outcomes(passed=2)
    assert host.nr.read_text().strip() == "40", "a journal another user could have written must not be replayed"
    out = res.stdout.str()
    lines = not_replayed_lines(out)
    assert len(lines) == 1 and lines[0].startswith(NOT_REPLAYED + str(reason)), out
    assert "Traceback" not in out and "INTERNALERROR" not in out


def test_hostile_journal_entries_are_left_alone_and_reported_in_one_line(pytester: pytest.Pytester, host: Host) -> None:
    passwd = host.root / "etc/passwd"
    passwd.parent.mkdir(parents=True)
    passwd.write_text("root:x:0:0:root:/root:/bin/bash\n")
    param = host.root / "sys/module/kvm/parameters/eager_page_split"
    journal = host.journal([
        {"kind": "param", "path": "/etc/passwd", "old": "root::0:0::/root:/bin/bash", "new": "x"},
        {"kind": "param", "path": "/sys/module/kvm/parameters/../../../../etc/passwd", "old": "a", "new": "b"},
        {"kind": "hugetlb", "path": NR, "added": -100, "old": "", "new": ""},
        {"kind": "thp", "path": THP, "old": "always\nnever", "new": "madvise"},
        {"kind": "param", "path": "/sys/module/kvm/parameters/eager_page_split", "old": "N", "new": "Y", "cmd": "rm"},
        GROW_8,
    ])
    pytester.makepyfile(KVM_AND_PLAIN)
    res = pytester.runpytest(*host.args())
    res.assert_outcomes(passed=2)
    assert passwd.read_text() == "root:x:0:0:root:/root:/bin/bash\n", "a path the plugin never changes is never written"
    assert param.read_text().strip() == "Y"
    assert host.nr.read_text().strip() == "32", "the one valid entry is replayed; the negative one is not"
    lines = not_replayed_lines(res.stdout.str())
    assert len(lines) == 1, res.stdout.str()
    assert "'/etc/passwd' is not a file pytest-kvmmm changes (param)" in lines[0]
    assert "added pages -100 is not a page count" in lines[0] and "and 1 more" in lines[0]
    assert not journal.exists() and journal.with_name(journal.name + ".rejected").exists(), "kept for a person to look at"


def test_a_session_that_runs_no_kvm_test_replays_nothing(pytester: pytest.Pytester, host: Host, monkeypatch: pytest.MonkeyPatch) -> None:
    journal = host.journal([GROW_8])
    monkeypatch.setenv("KVMMM_HOST_SNAPSHOT", str(host.root))  # no --kvm-* option named
    pytester.makepyfile(KVM_AND_PLAIN)
    res = pytester.runpytest(f"--kvm-selftests={host.bins}", "-k", "plain", "-p", "no:cacheprovider")
    res.assert_outcomes(passed=1, deselected=1)
    assert host.nr.read_text().strip() == "40" and journal.exists()
    res = pytester.runpytest(f"--kvm-selftests={host.bins}", "-k", "test_kvm", "-p", "no:cacheprovider")
    res.assert_outcomes(passed=1, deselected=1)
    assert host.nr.read_text().strip() == "32" and not journal.exists(), "a KVM test replays it"


@pytest.mark.parametrize(
    "entry, problem",
    [
        (GROW_8, None),
        ({**GROW_8, "path": "/sys/devices/system/node/node1/hugepages/hugepages-1048576kB/nr_hugepages"}, None),
        ({"kind": "thp", "path": THP, "added": 0, "old": "never", "new": "madvise"}, None),
        ({"kind": "param", "path": "/sys/module/kvm_intel/parameters/ept", "old": "N", "new": "Y"}, None),
        ([GROW_8], "an entry that is not an object (list)"),
        ({**GROW_8, "added": 0}, "is not a positive count"),
        ({**GROW_8, "added": True}, "is not a page count"),
        ({**GROW_8, "added": "8"}, "is not a page count"),
        ({**GROW_8, "added": 1 << 60}, "is not a page count"),
        ({**GROW_8, "path": NR + "/../../../../../etc/shadow"}, "is not a file pytest-kvmmm changes"),
        ({**GROW_8, "path": "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_overcommit_hugepages"}, "is not a file"),
        ({**GROW_8, "kind": "thp"}, "is not a file pytest-kvmmm changes (thp)"),
        ({"kind": "param", "path": "/sys/module/loop/parameters/max_part", "old": "0", "new": "8"}, "is not a file"),
        ({"kind": "param", "path": "/sys/module/kvm/parameters/x", "old": "a b", "new": "Y"}, "not plain values"),
        ({"kind": "param", "path": "/sys/module/kvm/parameters/x", "old": "", "new": "Y"}, "not plain values"),
        ({"kind": "thp", "path": THP, "old": "never", "new": "[always]"}, "are not always/madvise/never"),
        ({"kind": "thp", "path": THP, "added": 3, "old": "never", "new": "always"}, "a thp change that adds pages"),
        ({"kind": "exec", "path": "/bin/sh"}, "an unknown kind of change 'exec'"),
        ({**GROW_8, "mode": "0777"}, "unknown keys mode"),
        ({**GROW_8, "old": ["x"]}, "old and new values that are not text"),
    ],
)
def test_journal_entries_replayed_only_when_they_name_our_files_with_valid_values(entry: object, problem: str | None) -> None:
    found = journal_check.problem(entry, [f for f in Change.__dataclass_fields__])
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found


def test_journal_check_knows_every_field_of_a_change() -> None:
    assert tuple(Change.__dataclass_fields__) == FIELDS, "journal_check validates each field: teach it a new one"


# --- files the plugin writes -------------------------------------------------------------------


def test_replace_file_never_writes_through_a_link_or_replaces_a_device(tmp_path: Path) -> None:
    precious = tmp_path / "precious"
    precious.write_text("keep")
    link = tmp_path / "out.json"
    link.symlink_to(precious)
    with pytest.raises(safefs.UnsafePath, match=r"refusing to replace .*out.json: it is a symbolic link"):
        safefs.replace_file(link, "evil")
    assert precious.read_text() == "keep" and link.is_symlink()
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(safefs.UnsafePath, match="it is a FIFO"):
        safefs.replace_file(fifo, "x")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo", "out.json", "precious"], "no temporary file left"
    safefs.replace_file(tmp_path / "new.json", "ok", mode=0o600)
    assert (tmp_path / "new.json").read_text() == "ok" and stat.S_IMODE((tmp_path / "new.json").stat().st_mode) == 0o600


def test_replace_file_refuses_a_shared_directory_without_sticky_bit(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(safefs.UnsafePath, match="without the sticky bit"):
        safefs.replace_file(shared / "x.json", "x")
    shared.chmod(0o1777)
    safefs.replace_file(shared / "x.json", "x")


def test_open_in_place_neither_blocks_on_a_fifo_nor_follows_links(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(OSError):  # ENXIO: no reader; never blocks
        safefs.open_in_place(fifo)
    precious = tmp_path / "precious"
    precious.write_text("keep")
    (tmp_path / "link").symlink_to(precious)
    with pytest.raises(safefs.UnsafePath, match="symbolic link"):
        safefs.open_in_place(tmp_path / "link")
    os.link(precious, tmp_path / "hard")
    with pytest.raises(safefs.UnsafePath, match="several names"):
        safefs.open_in_place(tmp_path / "hard")
    assert precious.read_text() == "keep"


def _results_symlink(tmp_path: Path) -> tuple[str, str]:
    (tmp_path / "precious").write_text("keep")
    (tmp_path / "r.jsonl").symlink_to(tmp_path / "precious")
    return str(tmp_path / "r.jsonl"), "is a symbolic link; give a regular file"


def _results_device(tmp_path: Path) -> tuple[str, str]:
    return "/dev/null", "/dev/null is a device; give a regular file"


def _results_fifo(tmp_path: Path) -> tuple[str, str]:
    os.mkfifo(tmp_path / "fifo")
    return str(tmp_path / "fifo"), "is a FIFO; give a regular file"


def _results_directory(tmp_path: Path) -> tuple[str, str]:
    return str(tmp_path), "is a directory; give a regular file"


def _results_below_a_file(tmp_path: Path) -> tuple[str, str]:
    (tmp_path / "plain").write_text("keep")
    return str(tmp_path / "plain" / "sub" / "r.jsonl"), f"is below {tmp_path / 'plain'}, which is not a directory"


def _results_hard_link(tmp_path: Path) -> tuple[str, str]:
    (tmp_path / "precious").write_text("keep")
    os.link(tmp_path / "precious", tmp_path / "r.jsonl")
    return str(tmp_path / "r.jsonl"), "has 2 names (a hard link)"


BAD_TARGETS = [_results_symlink, _results_device, _results_fifo, _results_directory, _results_below_a_file, _results_hard_link]
BAD_IDS = ["symlink", "device", "fifo", "directory", "below-a-file", "hard-link"]
MARKS_A_FILE = """
    import pathlib

    def test_runs():
        pathlib.Path("ran").write_text("yes")
"""


@pytest.mark.parametrize("option", ["--kvm-results", "--kvm-save"])
@pytest.mark.parametrize("stage", BAD_TARGETS, ids=BAD_IDS)
def test_a_bad_output_path_is_a_usage_error_before_the_first_test(
    pytester: pytest.Pytester, tmp_path: Path, stage: object, option: str
) -> None:
    path, message = stage(tmp_path)  # type: ignore[operator]
    pytester.makepyfile(MARKS_A_FILE)
    res = pytester.runpytest(f"{option}={path}", "-p", "no:cacheprovider")
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    res.stderr.fnmatch_lines([f"ERROR: {option}: *{message}*"])
    assert not (pytester.path / "ran").exists(), "found before the first test"
    if (tmp_path / "precious").exists():
        assert (tmp_path / "precious").read_text() == "keep"
    assert "Traceback" not in res.stderr.str() + res.stdout.str()


@pytest.mark.parametrize(
    "typo",
    [["--kvm-compare", "no-such-baseline"], ["--kvm-fail-regression", "5"], ["--kvm-scale", "smok"],
     ["--kvm-param-values", "eager_page_split"], ["--kvm-save", "bad name"]],
    ids=["compare", "fail-regression", "scale", "param-values", "save"],
)
def test_a_typo_in_an_option_never_empties_the_results_file(pytester: pytest.Pytester, typo: list[str]) -> None:
    results = pytester.path / "r.jsonl"
    results.write_text('{"format": 1, "nodeid": "from the last run"}\n')
    pytester.makepyfile(MARKS_A_FILE)
    res = pytester.runpytest(f"--kvm-results={results}", *typo, "-p", "no:cacheprovider")
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    assert results.read_text() == '{"format": 1, "nodeid": "from the last run"}\n'


def test_a_results_file_swapped_for_a_link_during_the_run_is_not_written_through(pytester: pytest.Pytester, tmp_path: Path) -> None:
    (tmp_path / "precious").write_text("keep")
    make_fake(tmp_path / "bins", "quick")
    results = pytester.path / "r.jsonl"
    pytester.makepyfile(f"""
        import os, pathlib
        import pytest

        def test_0_swap():  # another user's move, after the options were checked
            os.symlink({str(tmp_path / 'precious')!r}, {str(results)!r})

        @pytest.mark.kvm_selftest("quick")
        def test_1_kvm():
            pass
    """)
    res = pytester.runpytest(f"--kvm-results={results}", f"--kvm-selftests={tmp_path / 'bins'}", "-p", "no:cacheprovider")
    res.assert_outcomes(passed=2)
    assert (tmp_path / "precious").read_text() == "keep"
    res.stdout.fnmatch_lines([f"kvmmm: --kvm-results: refusing to write {results}: it is a symbolic link"])


# --- xdist run directories ------------------------------------------------------------------------

RUN_DIR_SUITE = """
    import glob, os, stat, tempfile
    import pytest

    @pytest.mark.kvm_selftest("quick")
    def test_kvm(tmp_path_factory):
        found = glob.glob(os.path.join(tempfile.gettempdir(), "pytest-kvmmm-" + os.environ["RUN_UID"] + "-*"))
        assert len(found) == 1, found
        st = os.lstat(found[0])
        assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == os.geteuid()
        open(os.path.join(os.environ["SEEN_DIR"], os.environ["PYTEST_XDIST_WORKER"]), "w").write(found[0])

    def test_plain():
        pass
"""


def _xdist_args(host: Host, uid: str) -> list[str]:
    return ["-n", "2", "--testrunuid", uid, *host.args()]


def test_run_directory_is_private_and_removed_at_the_end(
    pytester: pytest.Pytester, host: Host, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pytest_kvmmm.coordination.rundir import run_dir

    uid = uuid.uuid4().hex  # a run of its own: other sessions on this host use the same /tmp
    monkeypatch.setenv("SEEN_DIR", str(tmp_path))
    monkeypatch.setenv("RUN_UID", uid)
    pytester.makepyfile(RUN_DIR_SUITE)
    res = pytester.runpytest_subprocess(*_xdist_args(host, uid))
    res.assert_outcomes(passed=2)
    seen = [p.read_text() for p in tmp_path.glob("gw*")]
    assert seen == [str(run_dir(uid, str(host.root)))]
    assert not Path(seen[0]).exists(), "removed when the run ends"


def _nobodys_run_dir(path: Path) -> str:
    path.mkdir(mode=0o755)
    os.chown(path, NOBODY, NOBODY)
    return f"refusing to use {path}: it is owned by nobody (uid {NOBODY})"


def _symlinked_run_dir(path: Path) -> str:
    target = path.with_name(path.name + "-target")
    target.mkdir(mode=0o700)
    path.symlink_to(target)
    return f"refusing to use {path}: it is a symbolic link"


@pytest.mark.parametrize("stage", [pytest.param(_nobodys_run_dir, marks=ROOT_ONLY), _symlinked_run_dir], ids=["nobodys", "symlink"])
def test_a_run_directory_made_by_someone_else_stops_the_run(
    pytester: pytest.Pytester, host: Host, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stage: object
) -> None:
    from pytest_kvmmm.coordination.rundir import run_dir

    monkeypatch.setenv("SEEN_DIR", str(tmp_path))
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr("tempfile.tempdir", None)  # computed again from $TMPDIR
    uid = uuid.uuid4().hex
    monkeypatch.setenv("RUN_UID", uid)
    path = run_dir(uid, str(host.root))
    try:
        message = stage(path)  # type: ignore[operator]
        pytester.makepyfile(RUN_DIR_SUITE)
        res = pytester.runpytest_subprocess(*_xdist_args(host, uid))
    finally:
        monkeypatch.undo()
    out = res.stdout.str() + res.stderr.str()
    assert res.ret == pytest.ExitCode.USAGE_ERROR, out
    assert f"kvmmm: xdist run directory: {message}" in out and "INTERNALERROR" not in out, out
    assert not list(tmp_path.glob("gw*")), "no selftest runs beside another user's directory"
    assert path.exists() or path.is_symlink(), "someone else's directory is left alone"


def test_allure_session_files_are_never_read_or_written_through_a_link(pytester: pytest.Pytester, tmp_path: Path) -> None:
    secret = tmp_path / "shadow"
    secret.write_text("root=$6$secret-hash\n")
    allure = tmp_path / "allure"
    allure.mkdir()
    (allure / "environment.properties").symlink_to(secret)  # planted in a shared results folder
    make_fake(tmp_path / "bins", "quick")
    pytester.makepyfile("""
        import pytest

        @pytest.mark.kvm_selftest("quick")
        def test_kvm():
            pass
    """)
    res = pytester.runpytest(f"--alluredir={allure}", f"--kvm-selftests={tmp_path / 'bins'}", "-p", "no:cacheprovider")
    res.assert_outcomes(passed=1)
    assert secret.read_text() == "root=$6$secret-hash\n"
    leaked = [p for p in allure.iterdir() if not p.is_symlink() and "secret-hash" in p.read_text(errors="replace")]
    assert not leaked, "the link's target must never be read into the report"
    assert (allure / "categories.json").is_file()
    res.stdout.fnmatch_lines([f"kvmmm: --alluredir: refusing to replace {allure}/environment.properties: it is a symbolic link"])
