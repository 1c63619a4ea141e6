"""--kvm-save, --kvm-compare and --kvm-fail-regression seen from a user, with fake binaries whose
timings the test sets: save, compare, fail a regression (numbers in the message), never fail
an improvement, refuse another host's baseline unless forced, and the default repeat count."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from fakes import make_host_root, records
from pytest_kvmmm.pytest.baseline import DEFAULT_REPEAT

#: Prints the three page-table stages: FAKE_TIMES ("create,update,adjust" seconds) times
#: 1.00 .. 1.04 (run number modulo 5, from a counter file): a spread a repeat can see.
FAKE_PAGE_TABLE = """\
import os, pathlib
counter = pathlib.Path(os.environ["FAKE_COUNTER"])
n = int(counter.read_text()) + 1 if counter.exists() else 1
counter.write_text(str(n))
factor = 1 + 0.01 * (n % 5)
for stage, base in zip(("CREATE", "UPDATE", "ADJUST"), os.environ.get("FAKE_TIMES", "1.0,0.5,0.25").split(",")):
    print(f"KVM_{stage}_MAPPINGS: total execution time: {float(base) * factor:.9f}s")
"""

MARKER_TESTS = """
    import pytest

    @pytest.mark.perf
    @pytest.mark.kvm_selftest({binary!r})
    def test_timed():
        pass

    @pytest.mark.perf
    @pytest.mark.kvm_regression(60)
    @pytest.mark.kvm_selftest({binary!r})
    def test_lenient():
        pass

    @pytest.mark.perf
    @pytest.mark.kvm_regression(KVM_CREATE_MAPPINGS=60)
    @pytest.mark.kvm_selftest({binary!r})
    def test_lenient_create():
        pass
"""


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "bins"
    d.mkdir()
    binary = d / "kvm_page_table_test"  # named so its metric parser applies
    binary.write_text(f"#!{sys.executable}\n{FAKE_PAGE_TABLE}")
    binary.chmod(0o755)
    monkeypatch.setenv("FAKE_COUNTER", str(tmp_path / "counter"))
    monkeypatch.setenv("KVMMM_BASELINES_DIR", str(tmp_path / "baselines"))
    monkeypatch.delenv("FAKE_TIMES", raising=False)
    return binary


@pytest.fixture
def host(tmp_path: Path) -> str:
    return f"--kvm-host-snapshot={make_host_root(tmp_path / 'host', cpus='0-3')}"


def run(pytester: pytest.Pytester, host: str, *args: str, times: str | None = None,
        monkeypatch: pytest.MonkeyPatch | None = None) -> pytest.RunResult:
    if times is not None and monkeypatch is not None:
        monkeypatch.setenv("FAKE_TIMES", times)
    return pytester.runpytest("-p", "no:cacheprovider", host, "--kvm-repeat", "5", *args)


def test_save_then_compare_the_same_numbers(pytester: pytest.Pytester, fake: Path, host: str, tmp_path: Path) -> None:
    pytester.makepyfile(MARKER_TESTS.format(binary=str(fake)))
    saved = run(pytester, host, "--kvm-save", "before", "-k", "test_timed")
    saved.assert_outcomes(passed=1)
    path = tmp_path / "baselines" / "before.json"
    saved.stdout.fnmatch_lines([f"kvmmm: saving this run as baseline {path}", f"kvmmm: saved baseline 'before': {path}"])
    data = json.loads(path.read_text())
    test = data["hosts"]["fakehost"]["tests"]["test_save_then_compare_the_same_numbers.py::test_timed"]
    assert test["samples"]["KVM_CREATE_MAPPINGS"] == [1.01, 1.02, 1.03, 1.04, 1.0]
    assert data["hosts"]["fakehost"]["fingerprint"]["cpus"] == 4 and data["repeat"] == 5

    again = run(pytester, host, "--kvm-compare", "before", "--kvm-fail-regression", "10", "-k", "test_timed")
    again.assert_outcomes(passed=1)
    again.stdout.fnmatch_lines([
        "*kvm before/after: before -> this run*",
        "'before' (*, repeat 5) -> 'this run' (*, repeat 5)",
        "host fakehost: same kernel and selftests build",
        "kvm_page_table_test (test_timed)",
        "  KVM_CREATE_MAPPINGS *1.02s *1.00..1.04 n=5 *1.02s *1.00..1.04 n=5 *+0.00% *no significant change",
    ])


def test_a_regression_fails_the_test_with_the_numbers(
    pytester: pytest.Pytester, fake: Path, host: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(MARKER_TESTS.format(binary=str(fake)))
    run(pytester, host, "--kvm-save", "before").assert_outcomes(passed=3)
    # CREATE 50 % slower, UPDATE the same, ADJUST 20 % faster
    res = run(pytester, host, "--kvm-compare", "before", "--kvm-fail-regression", "10", "--kvm-results", "r.jsonl",
              times="1.5,0.5,0.2", monkeypatch=monkeypatch)
    res.assert_outcomes(passed=2, failed=1)
    res.stdout.fnmatch_lines([
        "*_ test_timed _*",
        "regressed against baseline 'before': KVM_CREATE_MAPPINGS before 1.02s -> after 1.53s -50.00%",
        "  KVM_CREATE_MAPPINGS: -50.00% is beyond the 10% threshold; 95% interval -5*%..-4*%; "
        "before 1.00..1.04 n=5, after 1.50..1.56 n=5",
    ])
    res.stdout.fnmatch_lines([
        "kvm_page_table_test (test_timed)",
        "  KVM_CREATE_MAPPINGS *1.02s *1.00..1.04 n=5 *1.53s *1.50..1.56 n=5 *-50.00% *regressed",
        "  KVM_UPDATE_MAPPINGS *0.5100s *0.5000..0.5200 n=5 *0.5100s *0.5000..0.5200 n=5 *+0.00% *no significant change",
        "  KVM_ADJUST_MAPPINGS *0.2550s *0.2500..0.2600 n=5 *0.2040s *0.2000..0.2080 n=5 *+20.00% *improved",
    ], consecutive=False)
    res.stdout.fnmatch_lines(["failed by --kvm-fail-regression (1): *::test_timed (KVM_CREATE_MAPPINGS)"])
    if pytest.version_tuple >= (8,):
        # pytest 7 puts a plain-text failure's message in the failure section only (checked above),
        # not on the short summary line.
        res.stdout.fnmatch_lines(["FAILED *::test_timed - reg*"])
    recs = records(pytester.path / "r.jsonl")
    assert recs["test_timed"]["outcome"] == "failed" and recs["test_lenient"]["outcome"] == "passed"


def test_improvements_never_fail(pytester: pytest.Pytester, fake: Path, host: str, monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makepyfile(MARKER_TESTS.format(binary=str(fake)))
    run(pytester, host, "--kvm-save", "before", "-k", "test_timed").assert_outcomes(passed=1)
    res = run(pytester, host, "--kvm-compare", "before", "--kvm-fail-regression", "10", "-k", "test_timed",
              times="0.1,0.05,0.02", monkeypatch=monkeypatch)
    res.assert_outcomes(passed=1)
    res.stdout.fnmatch_lines(["  KVM_CREATE_MAPPINGS *1.02s *1.00..1.04 n=5 *0.1020s *0.1000..0.1040 n=5 *+90.00% *improved"])


def test_another_hosts_baseline_refuses_verdicts_unless_forced(
    pytester: pytest.Pytester, fake: Path, host: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(MARKER_TESTS.format(binary=str(fake)))
    run(pytester, host, "--kvm-save", "four-cpus", "-k", "test_timed").assert_outcomes(passed=1)
    two_cpus = f"--kvm-host-snapshot={make_host_root(tmp_path / 'small', cpus='0-1')}"
    monkeypatch.setenv("FAKE_TIMES", "1.5,0.5,0.25")
    res = run(pytester, two_cpus, "--kvm-compare", "four-cpus", "--kvm-fail-regression", "10", "-k", "test_timed")
    res.assert_outcomes(passed=1)
    res.stdout.fnmatch_lines([
        "kvmmm: WARNING: this host differs from the baseline's fakehost: online CPUs 4 -> 2 "
        "(no verdicts; --kvm-compare-force to give them anyway)",
    ])
    res.stdout.fnmatch_lines([
        "WARNING: host fakehost differs (online CPUs 4 -> 2): these numbers come from different machines or setups,*",
        "  KVM_CREATE_MAPPINGS *1.02s *1.00..1.04 n=5 *1.53s *1.50..1.56 n=5 *-50.00% *no verdict: hosts differ",
    ], consecutive=False)
    res.stdout.fnmatch_lines(["!!!* the baseline comes from another host: no verdicts !!!*"])
    forced = run(pytester, two_cpus, "--kvm-compare", "four-cpus", "--kvm-fail-regression", "10", "-k", "test_timed",
                 "--kvm-compare-force")
    forced.assert_outcomes(failed=1)
    forced.stdout.fnmatch_lines(["WARNING: host fakehost differs (online CPUs 4 -> 2); verdicts forced anyway"])


def test_per_test_thresholds_from_the_marker(
    pytester: pytest.Pytester, fake: Path, host: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(MARKER_TESTS.format(binary=str(fake)))
    run(pytester, host, "--kvm-save", "before").assert_outcomes(passed=3)
    # CREATE and UPDATE 50 % slower: test_lenient allows 60 % everywhere, test_lenient_create only for CREATE
    res = run(pytester, host, "--kvm-compare", "before", "--kvm-fail-regression", "10",
              times="1.5,0.75,0.25", monkeypatch=monkeypatch)
    res.assert_outcomes(passed=1, failed=2)
    res.stdout.fnmatch_lines([
        "failed by --kvm-fail-regression (2): *::test_timed (KVM_CREATE_MAPPINGS, KVM_UPDATE_MAPPINGS); "
        "*::test_lenient_create (KVM_UPDATE_MAPPINGS)",
    ])


def test_the_default_repeat_when_saving_and_the_users_choice(
    pytester: pytest.Pytester, fake: Path, host: str
) -> None:
    """The catalogue's perf tests run the scale's DEFAULT_REPEAT times when saving or comparing without --kvm-repeat."""
    smoke = DEFAULT_REPEAT["smoke"]
    suite = ["--pyargs", "pytest_kvmmm.suite", "-m", "pagetable", "--kvm-scale", "smoke", f"--kvm-selftests={fake.parent}", "-k", "test_kvm_page_table and anonymous and not thp and not hugetlb"]
    res = pytester.runpytest("-p", "no:cacheprovider", host, *suite, "--kvm-save", "default")
    res.assert_outcomes(passed=1)
    res.stdout.fnmatch_lines([f"kvmmm: perf tests run {smoke} times (the baselines default at this scale; --kvm-repeat N to change)"])
    saved = json.loads((Path(str(fake.parent.parent)) / "baselines" / "default.json").read_text())
    (test,) = saved["hosts"]["fakehost"]["tests"].values()
    assert len(test["samples"]["KVM_CREATE_MAPPINGS"]) == smoke and saved["repeat"] == smoke
    chosen = pytester.runpytest("-p", "no:cacheprovider", host, *suite, "--kvm-save", "two", "--kvm-repeat", "2")
    chosen.stdout.fnmatch_lines(["kvmmm: perf tests run 2 times"])
    (test,) = json.loads((fake.parent.parent / "baselines" / "two.json").read_text())["hosts"]["fakehost"]["tests"].values()
    assert len(test["samples"]["KVM_CREATE_MAPPINGS"]) == 2
    plain = pytester.runpytest("-p", "no:cacheprovider", host, *suite, "--kvm-results", "r.jsonl")
    assert "perf tests run" not in plain.stdout.str()
    assert len(json.loads(Path("r.jsonl").read_text())["samples"]["KVM_CREATE_MAPPINGS"]) == 1


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--kvm-fail-regression", "10"], "--kvm-fail-regression needs --kvm-compare NAME|FILE: the baseline to compare with"),
        (["--kvm-compare", "nope"], "--kvm-compare: no baseline named 'nope' in * (none saved there yet; save one with --kvm-save NAME) "
                                  "(the baselines folder from $KVMMM_BASELINES_DIR)"),
        (["--kvm-compare", "broken.json"], "--kvm-compare: broken.json is not a pytest-kvmmm baseline (no \"kind\": *"),
        (["--kvm-save", "a b"], "--kvm-save: 'a b' is not a baseline name: *"),
        (["--kvm-compare", "broken.json", "--kvm-fail-regression", "2"], "--kvm-compare: broken.json is not*"),
    ],
)
def test_usage_errors_say_what_to_do(pytester: pytest.Pytester, fake: Path, host: str, args: list[str], error: str) -> None:
    pytester.makefile(".json", broken="{}")
    pytester.makepyfile(MARKER_TESTS.format(binary=str(fake)))
    res = pytester.runpytest("-p", "no:cacheprovider", host, *args)
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    res.stderr.fnmatch_lines([f"ERROR: {error}"])


def test_bad_thresholds_are_usage_errors(pytester: pytest.Pytester, fake: Path, host: str) -> None:
    pytester.makepyfile(MARKER_TESTS.format(binary=str(fake)))
    run(pytester, host, "--kvm-save", "before", "-k", "test_timed").assert_outcomes(passed=1)
    low = run(pytester, host, "--kvm-compare", "before", "--kvm-fail-regression", "2")
    assert low.ret == pytest.ExitCode.USAGE_ERROR
    low.stderr.fnmatch_lines(["ERROR: --kvm-fail-regression: '2': the threshold must be at least 5 percent *"])
    pytester.makepyfile(test_bad="""
        import pytest

        @pytest.mark.kvm_regression("lots")
        def test_x():
            pass
    """)
    bad = run(pytester, host, "--kvm-compare", "before", "--kvm-fail-regression", "10", "test_bad.py")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    bad.stderr.fnmatch_lines(["ERROR: @pytest.mark.kvm_regression(pct=None, **{metric: pct}): 'lots' is not a percentage"])


def test_compare_under_xdist_fails_in_the_worker(
    pytester: pytest.Pytester, fake: Path, host: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Workers load the baseline themselves; the controller prints the table once."""
    pytester.makepyfile(MARKER_TESTS.format(binary=str(fake)))
    common = ["-p", "no:cacheprovider", host, "--kvm-repeat", "5", "-n", "2"]
    pytester.runpytest_subprocess(*common, "--kvm-save", "before").assert_outcomes(passed=3)
    monkeypatch.setenv("FAKE_TIMES", "1.5,0.5,0.25")
    res = pytester.runpytest_subprocess(*common, "--kvm-compare", "before", "--kvm-fail-regression", "10",
                                        "--kvm-save", "after")
    res.assert_outcomes(passed=2, failed=1)
    res.stdout.fnmatch_lines(["regressed against baseline 'before': KVM_CREATE_MAPPINGS before 1.02s -> after 1.53s -50.00%"])
    assert res.stdout.str().count("kvm before/after: before -> after") == 1
    assert (tmp_path / "baselines" / "after.json").is_file()


def test_ini_folder_and_threshold(pytester: pytest.Pytester, fake: Path, host: str, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """ini kvm_baselines and kvm_fail_regression; the threshold acts only when comparing."""
    monkeypatch.delenv("KVMMM_BASELINES_DIR")
    pytester.makeini(f"[pytest]\nkvm_baselines = {tmp_path / 'from-ini'}\nkvm_fail_regression = 10\n")
    pytester.makepyfile(MARKER_TESTS.format(binary=str(fake)))
    run(pytester, host, "--kvm-save", "before", "-k", "test_timed").assert_outcomes(passed=1)
    assert (tmp_path / "from-ini" / "before.json").is_file()
    res = run(pytester, host, "--kvm-compare", "before", "-k", "test_timed", times="1.5,0.5,0.25", monkeypatch=monkeypatch)
    res.assert_outcomes(failed=1)
    res.stdout.fnmatch_lines(["*failing regressions of 10% or more"])
    nothing = run(pytester, host, "--kvm-save", "empty", "-k", "no_such_test")
    nothing.stdout.fnmatch_lines([f"kvmmm: not saved as {tmp_path / 'from-ini' / 'empty.json'}: no selftest printed metrics"])
