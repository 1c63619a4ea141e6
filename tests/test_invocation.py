"""How a run is asked for: path options written with a space, ini paths relative to the ini file,
the KVMMM_ environment (and the selftests variable's old name), the origin a bad value is blamed
on, and the inputs every record keeps."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fakes import make_fake, make_host_root, records
from pytest_kvmmm.pytest.invocation import (
    PATH_OPTIONS,
    Raw,
    Sources,
    ini_relative,
    recorded_environment,
    run_inputs,
    sources_of,
    spaced_path_problem,
)

PASSING = """
    import pytest

    @pytest.mark.kvm_selftest("ok_test")
    def test_ok():
        pass
"""


class Config:
    """``getoption``/``getini`` as pytest answers them (unset options None, unset ini ""), with
    the ini file's path and the ``-o`` overrides of a real config."""

    def __init__(self, options: dict[str, Any] | None = None, ini: dict[str, Any] | None = None,
                 inipath: Path | None = None, override_ini: list[str] | None = None) -> None:
        self.options, self.ini, self.inipath = options or {}, ini or {}, inipath
        self.option = type("Namespace", (), {"override_ini": override_ini})()

    def getoption(self, name: str) -> Any:
        return self.options.get(name)

    def getini(self, name: str) -> Any:
        return self.ini.get(name, "")


# --- the pure resolver -----------------------------------------------------------------------


def test_command_line_beats_the_prefixed_variable_beats_the_old_name_beats_ini(tmp_path: Path) -> None:
    env = ("KVMMM_SELFTESTS_DIR", "KVM_SELFTESTS_DIR")
    both = {"KVMMM_SELFTESTS_DIR": "/new", "KVM_SELFTESTS_DIR": "/old"}

    def pick(config: Config, environ: dict[str, str]) -> Raw | None:
        return sources_of(config, environ).pick("kvm_selftests", env=env, ini="kvm_selftests", path=True)

    ini = {"kvm_selftests": "bins"}
    assert pick(Config({"kvm_selftests": "/opt"}, ini), both) == Raw("/opt", "--kvm-selftests")
    assert pick(Config({}, ini), both) == Raw("/new", "$KVMMM_SELFTESTS_DIR")
    assert pick(Config({}, ini), {"KVM_SELFTESTS_DIR": "/old"}) == Raw("/old", "$KVM_SELFTESTS_DIR")
    assert pick(Config({}, ini, tmp_path / "pytest.ini"), {}) == Raw(str(tmp_path / "bins"), "ini kvm_selftests")
    assert pick(Config(), {}) is None


def test_an_override_is_blamed_on_minus_o_and_stays_relative_to_where_pytest_ran(tmp_path: Path) -> None:
    config = Config({}, {"kvm_selftests": "bins", "kvm_scale": "huge"}, tmp_path / "tox.ini",
                    override_ini=["kvm_selftests=bins", "kvm_scale = huge"])
    src = sources_of(config, {})
    assert src.pick("kvm_selftests", ini="kvm_selftests", path=True) == Raw("bins", "-o kvm_selftests")
    assert src.pick("kvm_scale", ini="kvm_scale") == Raw("huge", "-o kvm_scale")


def test_an_empty_option_is_set_and_an_empty_variable_is_not() -> None:
    src = Sources(Config({"kvm_timeout": ""}, {"kvm_timeout": "30"}), {})
    assert src.pick("kvm_timeout", ini="kvm_timeout") == Raw("", "--kvm-timeout")
    src = Sources(Config({}, {"kvm_baselines": "/ini"}), {"KVMMM_BASELINES_DIR": ""})
    assert src.pick("kvm_baselines", env=("KVMMM_BASELINES_DIR",), ini="kvm_baselines") == Raw("/ini", "ini kvm_baselines")


def test_the_ini_values_read_are_kept_for_the_records() -> None:
    src = Sources(Config({"kvm_scale": "smoke"}, {"kvm_scale": "default", "kvm_timeout": "30",
                                                  "kvm_kernel_log_noise": ["a", "b"], "kvm_allow_missing": False}), {})
    src.pick("kvm_scale", ini="kvm_scale")  # the command line won: the ini value was not read
    src.pick("kvm_timeout", ini="kvm_timeout")
    src.ini("kvm_kernel_log_noise")
    src.ini("kvm_allow_missing")
    assert src.ini_read == {"kvm_timeout": "30", "kvm_kernel_log_noise": ["a", "b"]}


def test_ini_paths_are_relative_to_the_ini_file(tmp_path: Path) -> None:
    assert ini_relative("bins", tmp_path / "proj") == str(tmp_path / "proj" / "bins")
    assert ini_relative("../bins", tmp_path / "proj") == str(tmp_path / "proj" / ".." / "bins")
    assert ini_relative("/abs", tmp_path) == "/abs"
    assert ini_relative("~/x", tmp_path) == str(Path("~/x").expanduser())
    assert ini_relative("bins", None) == "bins"  # no ini file: a -o value, as typed


def test_a_spaced_path_that_moves_the_rootdir_is_the_problem(tmp_path: Path) -> None:
    cwd, outside = tmp_path / "cwd", tmp_path / "bins"
    (cwd / "inside").mkdir(parents=True)
    outside.mkdir()
    (tmp_path / "r.jsonl").write_text("")
    problem = spaced_path_problem(["--kvm-selftests", str(outside)], [], cwd)
    assert problem == (
        f"--kvm-selftests {outside}: write --kvm-selftests={outside} (with '='): written with a space, pytest "
        "also takes the path for a test path when it picks its rootdir and ini file, so the ini file can be "
        "missed and test ids change"
    )
    assert spaced_path_problem(["-v", "--kvm-results", "../r.jsonl"], [], cwd) is not None  # a file: its directory
    assert spaced_path_problem([f"--kvm-selftests={outside}"], [], cwd) is None
    assert spaced_path_problem(["--kvm-selftests", "inside"], [], cwd) is None  # cannot move the rootdir
    assert spaced_path_problem(["--kvm-results", str(tmp_path / "new.jsonl")], [], cwd) is None  # not there yet
    assert spaced_path_problem(["--kvm-compare", "before"], [], cwd) is None  # a NAME
    assert spaced_path_problem(["--", "--kvm-selftests", str(outside)], [], cwd) is None
    assert spaced_path_problem(["--kvm-timeout", str(outside)], [], cwd) is None  # not a path option
    # test paths that already span the value: the rootdir search starts above both anyway
    assert spaced_path_problem(["--kvm-selftests", str(outside), str(tmp_path)], [str(tmp_path)], cwd) is None
    assert spaced_path_problem(["--kvm-selftests", str(outside), "inside"], ["inside"], cwd) is not None


def test_every_path_valued_option_is_checked(pytester: pytest.Pytester) -> None:
    """Each option whose metavar says it takes a path (DIR, FILE, NAME|FILE) is in PATH_OPTIONS."""
    res = pytester.runpytest("--help")
    path_like = {
        line.split()[0].split("=")[0] for line in res.stdout.lines
        if line.strip().startswith("--kvm-") and any(m in line.split()[0] for m in ("DIR", "FILE"))
    }
    assert path_like and path_like <= set(PATH_OPTIONS), path_like - set(PATH_OPTIONS)


def test_the_recorded_environment_is_the_prefix_and_the_named_others() -> None:
    env = {"KVMMM_CACHE_DIR": "/c", "KVM_SELFTESTS_DIR": "/s", "PYTEST_ADDOPTS": "-x", "HOME": "/root", "KVM_X": "1"}
    assert recorded_environment(env) == {"KVMMM_CACHE_DIR": "/c", "KVM_SELFTESTS_DIR": "/s", "PYTEST_ADDOPTS": "-x"}
    inputs = run_inputs(["-k", "x"], Path("/w"), None, {}, env, "/")
    assert inputs == {"args": ["-k", "x"], "cwd": "/w", "ini": None, "ini_values": {},
                      "environment": recorded_environment(env), "host_snapshot": "/"}
    json.dumps(inputs)


# --- through pytest ----------------------------------------------------------------------------


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory of fake selftests outside pytester's directory (a sibling of it)."""
    make_fake(tmp_path / "bins", "ok_test", stdout="ok\n")
    return tmp_path / "bins"


@pytest.fixture
def snapshot(tmp_path: Path) -> str:
    return f"--kvm-host-snapshot={make_host_root(tmp_path / 'root', hostname='inv-host')}"


@pytest.mark.parametrize("option", ["--kvm-selftests", "--kvm-host-snapshot", "--kvm-baselines", "--kvm-results",
                                    "--kvm-known-issues", "--kvm-compare", "--kvm-squad"])
def test_a_spaced_path_option_stops_the_run_with_the_fix(
    pytester: pytest.Pytester, outside: Path, option: str
) -> None:
    pytester.makepyfile(PASSING)
    value = outside / "ok_test" if option in ("--kvm-results", "--kvm-known-issues", "--kvm-compare") else outside
    res = pytester.runpytest(option, str(value))
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    res.stderr.fnmatch_lines([f"ERROR: {option} {value}: write {option}={value} (with '='): *rootdir and ini file*"])
    assert "Traceback" not in res.stderr.str()


def test_a_spaced_path_in_pytest_addopts_is_stopped_too(
    pytester: pytest.Pytester, outside: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(PASSING)
    monkeypatch.setenv("PYTEST_ADDOPTS", f"-q --kvm-selftests {outside}")
    res = pytester.runpytest()
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    res.stderr.fnmatch_lines([f"ERROR: --kvm-selftests {outside}: write --kvm-selftests={outside} *"])


def test_why_a_plugin_path_option_written_with_a_space_loses_the_ini_file(
    pytester: pytest.Pytester, outside: Path
) -> None:
    """The premise, shown with a plugin option of this pytest (not ours, which stops the run):
    written with a space, the value moves the rootdir above the ini file, which is then not read."""
    pytester.makepyfile(plug="def pytest_addoption(parser):\n    parser.addoption('--plug-dir')\n")
    pytester.makeini("[pytest]\n")
    pytester.makepyfile(test_a="def test_a():\n    pass\n")
    pytester.syspathinsert()
    spaced = pytester.runpytest("-p", "plug", "--plug-dir", str(outside))
    joined = pytester.runpytest("-p", "plug", f"--plug-dir={outside}")
    spaced.assert_outcomes(passed=1)
    joined.assert_outcomes(passed=1)
    joined.stdout.fnmatch_lines([f"rootdir: {pytester.path}", "configfile: tox.ini"])
    assert f"rootdir: {pytester.path}\n" not in spaced.stdout.str() + "\n" and "configfile:" not in spaced.stdout.str()


def test_ini_selftests_resolve_against_the_ini_file_not_the_current_directory(
    pytester: pytest.Pytester, snapshot: str
) -> None:
    make_fake(pytester.path / "bins", "ok_test", stdout="ok\n")
    pytester.makeini("[pytest]\nkvm_selftests = bins\n")
    pytester.makepyfile(PASSING)
    sub = pytester.mkdir("sub")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(sub)
        res = pytester.runpytest(snapshot, str(pytester.path))
    res.assert_outcomes(passed=1)
    res.stdout.fnmatch_lines([f"kvmmm: selftests {pytester.path / 'bins'} (ini kvm_selftests); *"])


@pytest.mark.parametrize("where", ["option", "environment"])
def test_a_relative_selftests_path_is_from_where_pytest_ran(
    pytester: pytest.Pytester, snapshot: str, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """The selftests run in their own directories: a relative path kept as written would name
    nothing there (every test failed 'cannot start bins/ok_test')."""
    make_fake(pytester.path / "bins", "ok_test", stdout="ok\n")
    pytester.makepyfile(PASSING)
    if where == "option":
        res = pytester.runpytest(snapshot, "--kvm-selftests=bins")
    else:
        monkeypatch.setenv("KVMMM_SELFTESTS_DIR", "bins")
        res = pytester.runpytest(snapshot)
    res.assert_outcomes(passed=1)
    res.stdout.fnmatch_lines([f"kvmmm: selftests {pytester.path / 'bins'} (*); *"])


def test_a_relative_path_from_the_command_line_is_made_absolute_from_the_invocation_directory(tmp_path: Path) -> None:
    src = Sources(Config({"kvm_selftests": "bins"}), {}, cwd=tmp_path)
    assert src.pick("kvm_selftests", path=True) == Raw(str(tmp_path / "bins"), "--kvm-selftests")
    assert src.pick("kvm_selftests") == Raw("bins", "--kvm-selftests")  # not a path: as written


def test_a_missing_ini_directory_is_blamed_on_the_ini_key_with_its_resolved_path(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nkvm_selftests = nowhere\n")
    pytester.makepyfile(PASSING)
    res = pytester.runpytest()
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    res.stderr.fnmatch_lines([f"ERROR: ini kvm_selftests: {pytester.path / 'nowhere'} is not a directory"])


def test_ini_baselines_resolve_against_the_ini_file(pytester: pytest.Pytester, outside: Path, snapshot: str) -> None:
    pytester.makeini("[pytest]\nkvm_baselines = saved\n")
    pytester.makepyfile(PASSING)
    sub = pytester.mkdir("sub")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(sub)
        res = pytester.runpytest(snapshot, f"--kvm-selftests={outside}", "--kvm-save", "b1", str(pytester.path))
        res.assert_outcomes(passed=1)
        res.stdout.fnmatch_lines([f"kvmmm: saving this run as baseline {pytester.path / 'saved' / 'b1.json'}"])
        missing = pytester.runpytest(snapshot, f"--kvm-selftests={outside}", "--kvm-compare", "b0", str(pytester.path))
    assert missing.ret == pytest.ExitCode.USAGE_ERROR
    missing.stderr.fnmatch_lines([
        f"ERROR: --kvm-compare: no baseline named 'b0' in {pytester.path / 'saved'} (none saved there yet; save one with --kvm-save NAME) "
        "(the baselines folder from ini kvm_baselines)"
    ])


def test_ini_known_issues_resolve_against_the_ini_file(pytester: pytest.Pytester, outside: Path, snapshot: str) -> None:
    pytester.makefile(".toml", bad='[[issue]]\nid = "x"\ntests = "*"\n')
    pytester.makeini("[pytest]\nkvm_known_issues = bad.toml\n")
    pytester.makepyfile(PASSING)
    sub = pytester.mkdir("sub")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(sub)
        res = pytester.runpytest(snapshot, f"--kvm-selftests={outside}", str(pytester.path))
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    res.stderr.fnmatch_lines([f"ERROR: ini kvm_known_issues: known issues {pytester.path / 'bad.toml'}: *"])


@pytest.mark.parametrize("variable", ["KVMMM_SELFTESTS_DIR", "KVM_SELFTESTS_DIR"])
def test_the_selftests_variable_and_its_old_name(
    pytester: pytest.Pytester, outside: Path, snapshot: str, monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    pytester.makepyfile(PASSING)
    monkeypatch.delenv("KVMMM_SELFTESTS_DIR", raising=False)
    monkeypatch.setenv(variable, str(outside))
    res = pytester.runpytest(snapshot)
    res.assert_outcomes(passed=1)
    res.stdout.fnmatch_lines([f"kvmmm: selftests {outside} (${variable}); *"])


def test_the_prefixed_variable_wins_over_the_old_name(
    pytester: pytest.Pytester, outside: Path, snapshot: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    pytester.makepyfile(PASSING)
    monkeypatch.setenv("KVMMM_SELFTESTS_DIR", str(outside))
    monkeypatch.setenv("KVM_SELFTESTS_DIR", str(tmp_path / "nowhere"))
    pytester.runpytest(snapshot).stdout.fnmatch_lines([f"kvmmm: selftests {outside} ($KVMMM_SELFTESTS_DIR); *"])


def test_every_record_keeps_what_changed_the_run(
    pytester: pytest.Pytester, outside: Path, snapshot: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makeini("[pytest]\nkvm_timeout = 60\n")
    pytester.makepyfile(PASSING)
    monkeypatch.setenv("KVMMM_SELFTESTS_DIR", str(outside))
    monkeypatch.setenv("PYTEST_ADDOPTS", "-p no:cacheprovider")
    monkeypatch.delenv("KVM_SELFTESTS_DIR", raising=False)
    pytester.runpytest(snapshot, "--kvm-results", "r.jsonl").assert_outcomes(passed=1)
    inputs = records(pytester.path / "r.jsonl")["test_ok"]["inputs"]
    assert isinstance(inputs, dict)
    assert inputs["environment"]["KVMMM_SELFTESTS_DIR"] == str(outside)
    assert inputs["environment"]["PYTEST_ADDOPTS"] == "-p no:cacheprovider"
    assert inputs["host_snapshot"] == snapshot.split("=", 1)[1]
    assert inputs["args"][:3] == [snapshot, "--kvm-results", "r.jsonl"]  # then pytester's --basetemp
    assert inputs["cwd"] == str(pytester.path)
    assert inputs["ini"] == str(pytester.path / "tox.ini")
    assert inputs["ini_values"] == {"kvm_timeout": "60"}


def test_a_kcidb_origin_is_checked_before_the_run_and_blamed_on_its_source(
    pytester: pytest.Pytester, outside: Path, snapshot: str
) -> None:
    pytester.makepyfile(PASSING)
    pytester.makeini("[pytest]\nkvm_kcidb_origin = Lab-1\n")
    bad = pytester.runpytest(snapshot, f"--kvm-selftests={outside}", "--kvm-kcidb=k.json")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    bad.stderr.fnmatch_lines(["ERROR: ini kvm_kcidb_origin: 'Lab-1' is not a KCIDB origin: use lower-case letters, digits and _"])
    assert not (pytester.path / "k.json").exists()
    override = pytester.runpytest(snapshot, f"--kvm-selftests={outside}", "--kvm-kcidb=k.json", "-o", "kvm_kcidb_origin=x y")
    override.stderr.fnmatch_lines(["ERROR: -o kvm_kcidb_origin: 'x y' is not a KCIDB origin*"])
    pytester.runpytest(snapshot, f"--kvm-selftests={outside}").assert_outcomes(passed=1)  # not used: not checked
    good = pytester.runpytest(snapshot, f"--kvm-selftests={outside}", "--kvm-kcidb=k.json", "-o", "kvm_kcidb_origin=lab_1")
    good.assert_outcomes(passed=1)
    doc = json.loads((pytester.path / "k.json").read_text())
    assert {t["origin"] for t in doc["tests"]} == {"lab_1"}


def test_xdist_workers_record_the_same_inputs_with_their_own_snapshot(
    pytester: pytest.Pytester, outside: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker computes its inputs itself: the controller's arguments and directory, its own
    environment (a gateway's ``env:`` variables) and the snapshot it resolved from them."""
    pytester.makepyfile(PASSING)
    monkeypatch.setenv("KVMMM_SELFTESTS_DIR", str(outside))
    root = make_host_root(tmp_path / "gw-root", hostname="gw-host")
    res = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--dist=load", "--tx",
                                        f"popen//env:KVMMM_HOST_SNAPSHOT={root}", "--kvm-results=r.jsonl")
    res.assert_outcomes(passed=1)
    inputs = records(pytester.path / "r.jsonl")["test_ok"]["inputs"]
    assert isinstance(inputs, dict)
    assert inputs["args"][1:] == [  # after pytester's --basetemp: the controller's, as typed
        "-p", "no:cacheprovider", "--dist=load", "--tx", f"popen//env:KVMMM_HOST_SNAPSHOT={root}", "--kvm-results=r.jsonl"
    ]
    assert inputs["environment"]["KVMMM_HOST_SNAPSHOT"] == str(root)
    assert inputs["environment"]["KVMMM_SELFTESTS_DIR"] == str(outside)
    assert inputs["host_snapshot"] == str(root) and inputs["cwd"] == str(pytester.path)
