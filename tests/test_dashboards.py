"""What a lab reads without a terminal, through real pytest runs of fake selftests: JUnit with
properties (validated), reruns, known issues, records that follow pytest's verdict, a run
that is never green by accident, KCIDB/SQUAD files, LAVA results, pytest-html and -q/-qq."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from fakes import golden, make_fake, make_host_root
from pytest_kvmmm.reports.results import read_results

SCHEMA = Path(__file__).parent / "schemas" / "junit-jenkins.xsd"
PT_STDOUT = golden("kvm_page_table_test.anonymous.stdout")
DIRTY_RING = """\
==== Test Assertion Failure ====
  dirty_log_test.c:561: test_bit_le(page, bmap)
  pid=26796 tid=26796 errno=1 - Operation not permitted
     1\t0x0000000000403a06: vm_dirty_log_verify at dirty_log_test.c:561
  Page 175 should have its dirty bit set in this iteration but it is missing
"""


def validate_junit(path: Path) -> ET.Element:
    """Valid against the Jenkins/GitLab JUnit model: as written (testcase properties allowed),
    and strictly (the xunit-plugin model has none) once testcase properties are taken out."""
    xmlschema = pytest.importorskip("xmlschema")
    xmlschema.XMLSchema(str(SCHEMA)).validate(str(path))
    strict_text = "\n".join(line for line in SCHEMA.read_text().splitlines() if 'ref="properties" minOccurs="0"/>' not in line)
    strict = xmlschema.XMLSchema(strict_text)
    tree = ET.parse(path)
    for case in tree.iter("testcase"):
        for props in case.findall("properties"):
            case.remove(props)
    strict.validate(tree.getroot())
    return ET.parse(path).getroot()


def case_properties(root: ET.Element, name: str) -> list[dict[str, str]]:
    return [
        {p.get("name", ""): p.get("value", "") for p in case.iter("property")}
        for case in root.iter("testcase") if case.get("name") == name
    ]


def flaky_fake(directory: Path, name: str, state: Path, fails: int, stderr: str = DIRTY_RING) -> Path:
    """A selftest that fails its first ``fails`` runs (the binary's assertion), then passes."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(f"#!{sys.executable}\n" + textwrap.dedent(f"""\
        import pathlib, sys
        state = pathlib.Path({str(state)!r})
        n = int(state.read_text()) if state.exists() else 0
        state.write_text(str(n + 1))
        if n < {fails}:
            sys.stderr.write({stderr!r}); sys.exit(254)
        sys.stdout.write({PT_STDOUT!r})
    """))
    path.chmod(0o755)
    return path


@pytest.fixture(autouse=True)
def _no_kernel_log_watch(monkeypatch: pytest.MonkeyPatch) -> None:
    """These runs are about reports: another session's kernel lines on this shared host must not
    fail their fake selftests (tests/test_kernel_health.py covers the watch)."""
    monkeypatch.setenv("PYTEST_ADDOPTS", "-o kvm_kernel_log=off")


@pytest.fixture
def bins(tmp_path: Path) -> Path:
    d = tmp_path / "selftests"
    make_fake(d, "kvm_page_table_test", stdout=PT_STDOUT)
    make_fake(d, "dirty_log_test", stderr=DIRTY_RING, exit=254)
    make_fake(d, "other_fail", stderr=DIRTY_RING.replace("Page 175 should have its dirty bit set in this iteration but it is missing", "Something else"), exit=254)
    return d


TESTS = """
    import pytest

    @pytest.mark.kvm_selftest("kvm_page_table_test", "-b", "64M")
    def test_pt(kvm_result):
        pass

    @pytest.mark.kvm_selftest("kvm_page_table_test")
    def test_needs_missing_metric(kvm_result):
        assert "writes" in kvm_result.metrics, "metric 'writes' missing"

    @pytest.mark.kvm_selftest("dirty_log_test", "-M", "dirty-ring")
    def test_ring():
        pass
"""


def test_junit_has_properties_and_validates(pytester: pytest.Pytester, bins: Path) -> None:
    pytester.makepyfile(TESTS)
    res = pytester.runpytest(f"--kvm-selftests={bins}", "--junitxml", "j.xml", "--kvm-results", "r.jsonl")
    res.assert_outcomes(passed=1, failed=2)
    root = validate_junit(pytester.path / "j.xml")
    (pt,) = case_properties(root, "test_pt")
    assert pt["kvm.host"] and pt["kvm.status"] == "passed" and pt["kvm.binary"] == "kvm_page_table_test"
    assert pt["kvm.fact.arch"] and pt["kvm.fact.kvm"] and "kvm.fact.kernel" in pt
    assert float(pt["kvm.metric.KVM_CREATE_MAPPINGS"]) > 0 and pt["kvm.unit.KVM_CREATE_MAPPINGS"] == "s"
    # a record follows pytest's verdict: the binary passed, the body failed on a missing metric
    (missing,) = case_properties(root, "test_needs_missing_metric")
    assert missing["kvm.status"] == "failed" and not any(k.startswith("kvm.metric.") for k in missing)
    recs = {r["nodeid"].split("::")[-1]: r for r in read_results(pytester.path / "r.jsonl")}
    rec = recs["test_needs_missing_metric"]
    assert rec["status"] == "failed" and "metric 'writes' missing" in str(rec["reason"])
    assert rec["metrics"] == {} and "KVM_CREATE_MAPPINGS" in rec["metrics_of_failed_run"]  # type: ignore[operator]
    assert recs["test_ring"]["status"] == "failed"
    res.stdout.fnmatch_lines(["FAILED *::test_needs_missing_metric", "*AssertionError: metric 'writes' missing"])


def test_a_failed_run_saves_no_baseline_samples(pytester: pytest.Pytester, bins: Path) -> None:
    pytester.makepyfile(TESTS)
    pytester.runpytest(f"--kvm-selftests={bins}", "--kvm-save", "b.json")
    doc = json.loads((pytester.path / "b.json").read_text())
    tests = next(iter(doc["hosts"].values()))["tests"]
    with_samples = {nodeid.split("::")[-1] for nodeid, t in tests.items() if t.get("samples")}
    assert with_samples == {"test_pt"}


def test_a_flaky_pass_is_one_passed_record_with_its_attempts(pytester: pytest.Pytester, tmp_path: Path) -> None:
    pytest.importorskip("pytest_rerunfailures")
    d = tmp_path / "b"
    flaky_fake(d, "kvm_page_table_test", tmp_path / "state", fails=1)
    pytester.makepyfile("""
        import pytest

        @pytest.mark.kvm_selftest("kvm_page_table_test")
        def test_ring():
            pass
    """)
    res = pytester.runpytest(f"--kvm-selftests={d}", "--reruns", "2", "--kvm-results", "r.jsonl",
                             "--junitxml", "j.xml", "--kvm-save", "b.json")
    assert res.parseoutcomes() == {"passed": 1, "rerun": 1}
    (rec,) = read_results(pytester.path / "r.jsonl")
    assert rec["status"] == "passed" and rec["flaky"] is True
    assert [a["status"] for a in rec["attempts"]] == ["failed", "passed"]  # type: ignore[union-attr]
    assert "Page 175" in rec["attempts"][0]["reason"]  # type: ignore[index]
    res.stdout.fnmatch_lines(["PASSED *::test_ring", "*attempts: failed, passed"])
    props = case_properties(validate_junit(pytester.path / "j.xml"), "test_ring")
    assert props[-1]["kvm.attempts"] == "2" and props[-1]["kvm.status"] == "passed"
    # the baseline has the passing attempt's samples only
    doc = json.loads((pytester.path / "b.json").read_text())
    (test,) = next(iter(doc["hosts"].values()))["tests"].values()
    assert set(test["samples"]) == {"KVM_CREATE_MAPPINGS", "KVM_UPDATE_MAPPINGS", "KVM_ADJUST_MAPPINGS"}


def test_a_rerun_that_never_passes_is_one_failed_record(pytester: pytest.Pytester, tmp_path: Path) -> None:
    pytest.importorskip("pytest_rerunfailures")
    d = tmp_path / "b"
    flaky_fake(d, "dirty_log_test", tmp_path / "state", fails=9)
    pytester.makepyfile("""
        import pytest

        @pytest.mark.kvm_selftest("dirty_log_test")
        def test_ring():
            pass
    """)
    res = pytester.runpytest(f"--kvm-selftests={d}", "--reruns", "1", "--kvm-results", "r.jsonl")
    assert res.parseoutcomes() == {"failed": 1, "rerun": 1}
    (rec,) = read_results(pytester.path / "r.jsonl")
    assert rec["status"] == "failed" and rec["flaky"] is False and len(rec["attempts"]) == 2  # type: ignore[arg-type]


KNOWN = """
[[issue]]
id = "pvm-dirty-ring"
tests = ["*::test_ring"]
failure = "dirty bit set in this iteration but it is missing"
link = "https://bugs.example.org/1"
note = "flaky on this host"

[[issue]]
id = "gone"
tests = ["test_pt"]
link = "https://bugs.example.org/2"
"""


def test_known_issues_expect_their_failures_and_report_their_passes(pytester: pytest.Pytester, bins: Path) -> None:
    pytester.makepyfile(TESTS + """
    @pytest.mark.kvm_selftest("other_fail")
    def test_ring_other():
        pass
    """)
    pytester.makefile(".toml", known=KNOWN)
    known = KNOWN.replace('"*::test_ring"', '"*::test_ring", "*::test_ring_other"')
    pytester.makefile(".toml", known2=known)
    pytester.makeini("[pytest]\nkvm_known_issues = known2.toml\n")
    res = pytester.runpytest(f"--kvm-selftests={bins}", "--kvm-results", "r.jsonl", "-rxX", "--junitxml", "j.xml",
                             "-k", "not test_needs_missing_metric")
    # the dirty-ring failure is expected with its link; another assertion of a listed test stays a failure
    res.assert_outcomes(passed=1, xfailed=1, failed=1)
    res.stdout.fnmatch_lines(["XFAIL *test_ring - known issue pvm-dirty-ring: https://bugs.example.org/1 (flaky on this host)"])
    res.stdout.fnmatch_lines(["*known issue gone did not show (passed): retire it? https://bugs.example.org/2"])
    recs = {r["nodeid"].split("::")[-1]: r for r in read_results(pytester.path / "r.jsonl")}
    assert recs["test_ring"]["status"] == "xfailed" and recs["test_ring"]["known_issue"]["link"] == "https://bugs.example.org/1"  # type: ignore[index]
    assert recs["test_ring_other"]["status"] == "failed" and "known_issue" not in recs["test_ring_other"]
    assert recs["test_pt"]["known_issue"]["passed"] is True  # type: ignore[index]
    root = validate_junit(pytester.path / "j.xml")
    ring = next(c for c in root.iter("testcase") if c.get("name") == "test_ring")
    skipped = ring.find("skipped")
    assert skipped is not None and "https://bugs.example.org/1" in skipped.get("message", "")


def test_known_issues_file_errors_are_usage_errors(pytester: pytest.Pytester, bins: Path) -> None:
    pytester.makepyfile("def test_x():\n    pass\n")
    pytester.makefile(".toml", bad="[[issue]]\ntests = ['x']\n")
    res = pytester.runpytest("--kvm-known-issues", "bad.toml")
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    res.stderr.fnmatch_lines([f"*known issues {pytester.path / 'bad.toml'}: entry 1: 'link' is required*"])
    assert "Traceback" not in res.stderr.str()


def test_a_named_build_that_lacks_programs_fails_the_run(pytester: pytest.Pytester, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    noexec = make_fake(tmp_path / "noexec", "kvm_page_table_test")
    noexec.chmod(0o644)
    pytester.makepyfile("""
        import pytest

        @pytest.mark.kvm_selftest("kvm_page_table_test")
        def test_pt():
            pass
    """)
    res = pytester.runpytest(f"--kvm-selftests={empty}")
    res.assert_outcomes(failed=1)
    res.stdout.fnmatch_lines(["*kvm_page_table_test not found in * (--kvm-selftests)*--kvm-selftests names this build, "
                              "and it lacks the program (--kvm-allow-missing skips instead)"])
    res = pytester.runpytest(f"--kvm-selftests={tmp_path / 'noexec'}")
    res.assert_outcomes(failed=1)
    res.stdout.fnmatch_lines(["*exists but is not executable*a build whose program cannot run is broken*"])
    res = pytester.runpytest(f"--kvm-selftests={empty}", "--kvm-allow-missing")
    res.assert_outcomes(skipped=1)
    pytester.makeini(f"[pytest]\nkvm_selftests = {empty}\nkvm_allow_missing = true\n")
    pytester.runpytest().assert_outcomes(skipped=1)


def test_the_suite_on_an_empty_named_build_is_red(pytester: pytest.Pytester, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    root = make_host_root(tmp_path / "root")
    res = pytester.runpytest("--pyargs", "pytest_kvmmm.suite", "-m", "pagetable", "--kvm-scale", "smoke",
                             f"--kvm-host-snapshot={root}", f"--kvm-selftests={empty}", "-q")
    assert res.ret == pytest.ExitCode.TESTS_FAILED
    outcomes = res.parseoutcomes()
    assert outcomes.get("failed", 0) >= 10 and "passed" not in outcomes


def test_kcidb_and_squad_files_validate(pytester: pytest.Pytester, bins: Path) -> None:
    kcidb_io = pytest.importorskip("kcidb_io")
    pytester.makepyfile(TESTS)
    res = pytester.runpytest(f"--kvm-selftests={bins}", "--kvm-kcidb", "out/kcidb.json", "--kvm-squad", "out/squad",
                             "--kvm-repeat", "3", "-p", "no:randomly")
    res.stdout.fnmatch_lines(["KCIDB: out/kcidb.json", "SQUAD: out/squad (1 host(s): *)"])
    doc = json.loads((pytester.path / "out/kcidb.json").read_text())
    kcidb_io.schema.LATEST.validate(doc)
    statuses = [t["status"] for t in doc["tests"]]
    assert statuses.count("PASS") == 1 and statuses.count("FAIL") == 2 and statuses.count("DONE") == 3
    done = [t for t in doc["tests"] if t["status"] == "DONE"]
    assert all(t["number"]["unit"] == "s" and t["environment"]["misc"]["arch"] for t in done)
    (host_dir,) = (pytester.path / "out/squad").iterdir()
    tests = json.loads((host_dir / "tests.json").read_text())
    metrics = json.loads((host_dir / "metrics.json").read_text())
    metadata = json.loads((host_dir / "metadata.json").read_text())
    assert sorted(tests.values()) == ["fail", "fail", "pass"]
    assert metadata["job_id"].endswith(host_dir.name) and metadata["host.arch"]
    assert set(metrics) == {f"kvmmm/test_kcidb_and_squad_files_validate/test_pt.{m}"
                            for m in ("KVM_CREATE_MAPPINGS", "KVM_UPDATE_MAPPINGS", "KVM_ADJUST_MAPPINGS")}


def test_lava_test_case_lines_inside_lava(pytester: pytest.Pytester, bins: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    shell = tmp_path / "lava"
    shell.mkdir()
    log = tmp_path / "lava.log"
    helper = shell / "lava-test-case"
    helper.write_text(f"#!{sys.executable}\nimport sys\nopen({str(log)!r}, 'a').write(' '.join(sys.argv[1:]) + '\\n')\n")
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{shell}{os.pathsep}{os.environ['PATH']}")
    pytester.makepyfile(TESTS)
    pytester.runpytest(f"--kvm-selftests={bins}")
    lines = log.read_text().splitlines()
    assert "test_lava_test_case_lines_inside_lava.test_pt --result pass" in lines
    assert "test_lava_test_case_lines_inside_lava.test_ring --result fail" in lines
    assert any(line.startswith("test_lava_test_case_lines_inside_lava.test_pt.KVM_CREATE_MAPPINGS --result pass "
                               "--measurement ") and line.endswith(" --units s") for line in lines)


def test_pytest_html_shows_metrics_and_host_facts(pytester: pytest.Pytester, bins: Path) -> None:
    pytest.importorskip("pytest_html")
    pytester.makepyfile(TESTS)
    pytester.runpytest(f"--kvm-selftests={bins}", "--html", "r.html", "--self-contained-html")
    page = (pytester.path / "r.html").read_text()
    assert "kvm host, metrics" in page and "KVM_CREATE_MAPPINGS = " in page
    assert "kvm host " in page and "kernel " in page and "tdp_mmu" in page


def test_quiet_terminal_sections(pytester: pytest.Pytester, bins: Path) -> None:
    pytester.makepyfile(TESTS)
    res = pytester.runpytest(f"--kvm-selftests={bins}", "-q")
    out = res.stdout.str()
    section = out[out.index("kvm selftests on"):out.index("short test summary") if "short test summary" in out else None]
    assert "test_pt" not in section and "test_ring" in section and "KVM_CREATE_MAPPINGS" not in section
    res.stdout.fnmatch_lines(["kvm: 2 failed, 1 passed on *"])
    res = pytester.runpytest(f"--kvm-selftests={bins}", "-qq")
    assert "kvm selftests on" not in res.stdout.str() and "kvm: " not in res.stdout.str()


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("mount") is None, reason="mounting a tmpfs needs root")
def test_a_disk_that_fills_keeps_complete_records_and_the_run(pytester: pytest.Pytester, bins: Path, tmp_path: Path) -> None:
    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8k", "kvmmm-test", str(small)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        pytester.makepyfile("\n".join(
            f"""
import pytest
@pytest.mark.kvm_selftest("kvm_page_table_test")
def test_pt{i}():
    pass
""" for i in range(12)))
        res = pytester.runpytest(f"--kvm-selftests={bins}", f"--kvm-results={small / 'r.jsonl'}")
        res.assert_outcomes(passed=12)
        assert res.ret == pytest.ExitCode.TESTS_FAILED, "missing results: the run is not green"
        lines = (small / "r.jsonl").read_text().splitlines()
        assert 0 < len(lines) < 12 and all(json.loads(line)["status"] == "passed" for line in lines)
        res.stdout.fnmatch_lines([f"--kvm-results {small / 'r.jsonl'}: {12 - len(lines)} of 12 records not written "
                                  f"(No space left on device); the file holds the {len(lines)} complete ones"])
        assert res.stdout.str().count("records not written") == 1
    finally:
        subprocess.run(["umount", str(small)], check=False)


def test_multi_host_run_gives_a_testcase_per_host(pytester: pytest.Pytester, bins: Path, tmp_path: Path) -> None:
    kcidb_io = pytest.importorskip("kcidb_io")
    arm = make_host_root(tmp_path / "arm", machine="aarch64", hostname="lab-arm64", kvm="arm64_ttrem2", kvm_modules={})
    pytester.makepyfile(test_hosts="""
        import pytest

        @pytest.mark.kvm_selftest("kvm_page_table_test")
        def test_pt():
            pass
    """)
    res = pytester.runpytest_subprocess(
        "test_hosts.py", "-p", "no:cacheprovider", "--dist", "each", "--tx", f"popen//env:KVMMM_HOST_SNAPSHOT={arm}",
        "--tx", "popen", f"--kvm-selftests={bins}", "--junitxml", "j.xml", "--kvm-kcidb", "k.json", "--kvm-squad", "sq",
    )
    res.assert_outcomes(passed=2)
    root = validate_junit(pytester.path / "j.xml")
    cases = {c.get("classname"): {p.get("name"): p.get("value") for p in c.iter("property")} for c in root.iter("testcase")}
    live = next(h for h in (v["kvm.host"] for v in cases.values()) if h != "lab-arm64")
    assert set(cases) == {"lab-arm64.test_hosts", f"{live.replace('.', '_')}.test_hosts"}
    assert cases["lab-arm64.test_hosts"]["kvm.fact.arch"] == "aarch64" and cases["lab-arm64.test_hosts"]["kvm.fact.ttrem"] == "2"
    assert all(float(v["kvm.metric.KVM_CREATE_MAPPINGS"]) > 0 for v in cases.values())
    doc = json.loads((pytester.path / "k.json").read_text())
    kcidb_io.schema.LATEST.validate(doc)
    assert {b["architecture"] for b in doc["builds"]} == {"aarch64", "x86_64"}
    assert {p.name for p in (pytester.path / "sq").iterdir()} == {"lab-arm64", live}

    # the CI lab stage's check of these files: clean here, and it notices a broken one
    spec = importlib.util.spec_from_file_location("kvmmm_lab_ci", Path(__file__).parent.parent / "ci" / "lab" / "lab.py")
    assert spec is not None and spec.loader is not None
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    share = tmp_path / "share"
    share.mkdir()
    shutil.copy(pytester.path / "j.xml", share / "lab-1.junit.xml")
    shutil.copy(pytester.path / "k.json", share / "lab-1.kcidb.json")
    shutil.copytree(pytester.path / "sq", share / "lab-1.squad")
    assert stage.export_problems(share, ["lab-arm64", live]) == []
    shutil.rmtree(share / "lab-1.squad" / "lab-arm64")
    (share / "lab-1.kcidb.json").write_text(json.dumps({**doc, "tests": [{"id": "bad"}]}))
    problems = stage.export_problems(share, ["lab-arm64", live])
    assert len(problems) == 2 and problems[0].startswith("lab-1.kcidb.json is not valid KCIDB: ")
    assert problems[1] == "lab-1.squad has no submission for lab-arm64"


def test_xdist_workers_get_the_known_issues_from_the_controller(pytester: pytest.Pytester, bins: Path) -> None:
    """Lab hosts may not have the file the ini names: workers use the controller's entries."""
    pytester.makepyfile(TESTS)
    pytester.makefile(".toml", known=KNOWN)
    pytester.makeini("[pytest]\nkvm_known_issues = known.toml\n")
    pytester.makeconftest("""
        import os

        def pytest_configure_node(node):
            if os.path.exists("known.toml"):
                os.unlink("known.toml")  # gone before any worker starts
    """)
    res = pytester.runpytest_subprocess(f"--kvm-selftests={bins}", "-n", "2", "-p", "no:cacheprovider", "-rx",
                                        "-k", "not test_needs_missing_metric")
    res.assert_outcomes(passed=1, xfailed=1)
    assert not (pytester.path / "known.toml").exists()
    res.stdout.fnmatch_lines(["XFAIL *test_ring - known issue pvm-dirty-ring: https://bugs.example.org/1*"])
