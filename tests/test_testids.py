"""Test ids across hosts: stable record ids, and the check that every xdist gateway collected the same tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_kvmmm.coordination.testids import collection_problem, short_key, stable_nodeid

SUITE = "pytest_kvmmm/suite/test_mm.py::test_kvm_page_table[anonymous]"


def test_the_suite_is_named_by_its_place_in_the_package_under_any_rootdir(tmp_path: Path) -> None:
    site = tmp_path / "lib/python3.11/site-packages"
    test_file = site / "pytest_kvmmm/suite/test_mm.py"
    test_file.parent.mkdir(parents=True)
    test_file.touch()
    for pytest_id in ("test_mm.py::test_kvm_page_table[anonymous]",  # rootdir = the suite directory
                      "../lib/python3.11/site-packages/pytest_kvmmm/suite/test_mm.py::test_kvm_page_table[anonymous]",
                      SUITE):
        assert stable_nodeid(test_file, pytest_id, package_parent=site) == SUITE
    mine = tmp_path / "tests/test_mine.py"
    assert stable_nodeid(mine, "tests/test_mine.py::test_x", package_parent=site) == "tests/test_mine.py::test_x"


def test_the_installed_suite_is_named_from_the_packages_parent() -> None:
    """The default: the directory that holds ``pytest_kvmmm`` (the module moved one room down in
    the restructure, and for a while named the suite ``suite/test_mm.py::...``)."""
    import pytest_kvmmm.suite.test_mm as suite

    path = Path(suite.__file__)
    assert stable_nodeid(path, "test_mm.py::test_kvm_page_table[anonymous]") == SUITE


def test_short_key() -> None:
    assert short_key(SUITE) == "test_mm.py::test_kvm_page_table[anonymous]"
    assert short_key("test_mm.py") == "test_mm.py"


def test_same_tests_under_other_rootdirs_agree() -> None:
    assert collection_problem({"gw0 (popen)": [SUITE], "gw1 (ssh=lab)": ["test_mm.py::test_kvm_page_table[anonymous]"]}) is None
    assert collection_problem({"gw0 (popen)": [SUITE]}) is None


def test_a_gateway_that_collected_nothing_is_named_with_the_fix() -> None:
    problem = collection_problem({"gw0 (popen)": [SUITE, SUITE + "x"], "gw1 (ssh=root@lab-arm64)": []})
    assert problem is not None
    assert problem.startswith("gateway gw1 (ssh=root@lab-arm64) collected no tests, gw0 (popen) collected 2")
    assert "--pyargs pytest_kvmmm.suite" in problem


def test_different_tests_are_named() -> None:
    problem = collection_problem({"gw0 (popen)": [SUITE, "t.py::a"], "gw1 (socket=x)": [SUITE, "t.py::b"]})
    assert problem == (
        "gateway gw1 (socket=x) collected other tests than gw0 (popen) (1 missing there (e.g. t.py::a); "
        "1 only there (e.g. t.py::b)): every host must collect the same tests (the plugin's own cases do; "
        "check the paths, -k/-m and plugin versions per host)"
    )


def test_a_gateway_that_collects_nothing_stops_an_each_run(pytester: pytest.Pytester, tmp_path: Path) -> None:
    # A popen gateway with its own directory stands in for an ssh host: xdist runs it in that
    # directory, where the rootdir's testpaths do not apply. xdist itself would not notice.
    pytester.makeini("[pytest]\ntestpaths = suite\n")
    pytester.mkdir("suite")
    (pytester.path / "suite/test_a.py").write_text("def test_a():\n    pass\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    res = pytester.runpytest_subprocess("--dist", "each", "--tx", "popen", "--tx", f"popen//chdir={elsewhere}",
                                        "-p", "no:cacheprovider")
    assert res.ret == pytest.ExitCode.INTERRUPTED
    res.stdout.fnmatch_lines([f"*Interrupted: gateway gw1 (popen//chdir={elsewhere}) collected no tests, gw0 (popen) "
                              "collected 1: a remote gateway runs in its own directory*--pyargs pytest_kvmmm.suite*"])
