"""Allure results: the pure mapping (title, labels, parameters, attachments, steps, categories,
environment) and, through pytester, what allure-pytest writes with it for fake selftests."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from fakes import describe_run, golden, make_fake, make_golden_fake, make_host_root
from pytest_kvmmm.engine.metrics import parse_metrics
from pytest_kvmmm.engine.outcome import Status
from pytest_kvmmm.engine.result import SelftestResult
from pytest_kvmmm.host import probe_host
from pytest_kvmmm.host.report import ENV_KEYS
from pytest_kvmmm.host.report import fact_texts as host_environment
from pytest_kvmmm.host.units import MIB
from pytest_kvmmm.pytest import allure as allure_glue
from pytest_kvmmm.reports import allure_report
from pytest_kvmmm.reports.allure_files import (
    CATEGORIES,
    categories_json,
    categorize,
    environment_properties,
    hosts_from_records,
    parse_properties,
    split_environment,
    write_session_files,
)
from pytest_kvmmm.reports.record import Record
from pytest_kvmmm.suite.cases import Case, cases
from pytest_kvmmm.suite.catalogue import BY_NAME
from pytest_kvmmm.suite.scale import Sizing

BIN = "/cache/selftests/6.12.117"
PT_ARGV = (f"{BIN}/kvm_page_table_test", "-s", "anonymous_thp", "-b", "64M", "-v", "2")
PT_METRICS = {"KVM_CREATE_MAPPINGS": 0.254, "KVM_UPDATE_MAPPINGS": 0.0768, "KVM_ADJUST_MAPPINGS": 0.0622}


def case(entry: str, case_id: str) -> Case:
    return next(c for c in cases(BY_NAME[entry], ("default",), None) if c.id == case_id)


def result(status: Status = Status.PASSED, argv: tuple[str, ...] = PT_ARGV, **kw: Any) -> SelftestResult:
    defaults: dict[str, Any] = {
        "binary": argv[0], "returncode": 0, "duration_s": 0.91, "stdout": "out\n", "stderr": "",
        "metrics": dict(PT_METRICS), "started_at": 1000.0,
    }
    defaults.update(kw)
    return SelftestResult(Path(argv[0]).name, argv, status, **defaults)


def params(annotation: allure_report.Annotation) -> dict[str, tuple[object, bool]]:
    return {p.name: (p.value, p.excluded) for p in annotation.parameters}


# --- describe: one test's view ------------------------------------------------------------


def test_page_table_case_title_labels_and_parameters() -> None:
    sizing = Sizing(64 * MIB, 2, 0)  # what run_case capped the case to: its -b 64M -v 2
    a = describe_run([result()], case("kvm_page_table_test", "anonymous_thp"), sizing, scale="smoke", host="vm",
                 markers=["pagetable", "perf", "thp", "parametrize"])
    assert a.title == "kvm_page_table_test: anonymous_thp, 2 vCPUs x 32M (64M total) on vm"
    assert dict(a.labels) == {
        "epic": "KVM MMU", "feature": "kvm_page_table_test", "story": "anonymous_thp",
        "parentSuite": "vm", "severity": "critical",
    }
    # host and scale make the test's identity (historyId); the rest follows from the case or the capping
    assert params(a) == {
        "host": ("vm", False), "scale": ("smoke", False), "kvm_case": ("anonymous_thp", False),
        "guest mode": ("default", True), "backing source": ("anonymous_thp", True), "vCPUs": (2, True),
        "memory per vCPU": ("32M", True), "memory total": ("64M", True),
    }


def test_per_vcpu_memory_variant_mode_notes_and_iterations() -> None:
    argv = (f"{BIN}/dirty_log_perf_test", "-g", "-s", "anonymous", "-b", "64M", "-v", "1", "-i", "2", "-m", "9")
    c = Case(BY_NAME["dirty_log_perf_test"], BY_NAME["dirty_log_perf_test"].variants[1], "anonymous", "pxxv48_4k")
    notes = ("vCPUs capped from 2 to 1 (online CPUs)",)
    sized = Sizing(64 * MIB, 1, 2, notes=notes)
    a = describe_run([result(argv=argv, notes=notes, metrics={})], c, sized, scale="default", host="lab-7", markers=["perf"])
    assert a.title == "dirty_log_perf_test: no_manual_protect, anonymous, pxxv48_4k, 1 vCPU, 64M on lab-7"
    assert dict(a.labels)["story"] == "no_manual_protect"
    assert dict(a.labels)["severity"] == "normal"
    p = params(a)
    assert p["guest mode"] == ("pxxv48_4k", True) and p["iterations"] == (2, True)
    assert p["memory per vCPU"] == ("64M", True) and p["memory total"] == ("64M", True)
    assert p["notes"] == ("vCPUs capped from 2 to 1 (online CPUs)", True)


def test_a_test_of_ones_own_keeps_its_name_and_has_no_scale() -> None:
    argv = (f"{BIN}/kvm_page_table_test", "-b", "256M", "-v", "4")
    a = describe_run([result(argv=argv)], None, scale="smoke", host="vm", test_name="test_fast")
    assert a.title == "test_fast: kvm_page_table_test, 4 vCPUs x 64M (256M total) on vm"
    assert "scale" not in params(a) and "story" not in dict(a.labels)
    assert params(a)["guest mode"] == ("default", True), "kvm_page_table_test takes -m: no -m is its default"
    mgm = (f"{BIN}/x86_64/max_guest_memory_test", "-c", "2", "-m", "4", "-s", "1")
    a = describe_run([result(argv=mgm, metrics={})], None, scale="smoke", host="vm", test_name="test_mgm")
    assert a.title == "test_mgm: max_guest_memory_test, 2 vCPUs on vm"
    assert set(params(a)) == {"host", "vCPUs"}, "its -m is memory and its -s a slot size: neither a mode nor a backing"


def test_attachments_of_a_pass() -> None:
    a = describe_run([result(stdout=golden("kvm_page_table_test.anonymous.stdout"))], case("kvm_page_table_test", "anonymous_thp"),
                 scale="smoke", host="vm")
    bodies = {x.name: x.body for x in a.attachments}
    assert list(bodies) == ["command", "stdout", "stderr", "metrics.json"]
    assert bodies["command"] == f"cd {BIN} && {BIN}/kvm_page_table_test -s anonymous_thp -b 64M -v 2\n"
    assert bodies["stdout"] == golden("kvm_page_table_test.anonymous.stdout")
    assert json.loads(bodies["metrics.json"]) == PT_METRICS


def test_attachments_of_a_failure_a_timeout_and_a_prechecked_skip() -> None:
    fail = result(Status.FAILED, returncode=254, reason="kvm_page_table_test exit 254: x", details="==== Test Assertion Failure ====\n  a.c:1: x")
    names = [x.name for x in describe_run([fail], None, scale="smoke", host="vm").attachments]
    assert names == ["command", "stdout", "stderr", "metrics.json", "failure reason"]
    reason = describe_run([fail], None, scale="smoke", host="vm").attachments[-1].body
    assert reason == "kvm_page_table_test exit 254: x\n\n==== Test Assertion Failure ====\n  a.c:1: x\n"

    hang = result(Status.TIMEOUT, returncode=None, metrics={}, stdout="Started all vCPUs successfully\n", reason="timed out")
    names = [x.name for x in describe_run([hang], None, scale="smoke", host="vm").attachments]
    assert names == ["command", "stdout (partial: killed at the timeout)", "stderr (partial: killed at the timeout)", "failure reason"]

    skip = result(Status.SKIPPED, returncode=None, metrics={}, stdout="", started_at=None, reason="needs 32 free 2 MiB hugepages")
    a = describe_run([skip], case("kvm_page_table_test", "anonymous_hugetlb_2mb"), scale="smoke", host="vm")
    assert [x.name for x in a.attachments] == ["command (not run)", "skip reason"]
    assert a.steps == (), "nothing ran: no step"

    unresolved = SelftestResult("kvm_page_table_test", ("kvm_page_table_test",), Status.SKIPPED, "guest mode p52v48_4k ...")
    assert [x.name for x in describe_run([unresolved], None, scale="smoke", host="vm").attachments] == ["skip reason"]


def test_several_runs_in_one_test_are_numbered() -> None:
    a = describe_run([result(), result(Status.FAILED, returncode=1, reason="r")], None, scale="smoke", host="vm", test_name="t")
    assert [x.name for x in a.attachments][:2] == ["run 1: command", "run 1: stdout"]
    assert "run 2: failure reason" in [x.name for x in a.attachments]
    assert [s.status for s in a.steps] == ["passed", "failed"]


def test_page_table_stages_are_steps_with_the_binarys_times() -> None:
    (run,) = describe_run([result()], case("kvm_page_table_test", "anonymous_thp"), scale="smoke", host="vm").steps
    assert run.name == "kvm_page_table_test -s anonymous_thp -b 64M -v 2 (0.91 s)"
    assert (run.start, run.stop, run.status) == (1_000_000, 1_000_910, "passed")
    assert [s.name for s in run.steps] == ["KVM_CREATE_MAPPINGS: 254.0 ms", "KVM_UPDATE_MAPPINGS: 76.8 ms", "KVM_ADJUST_MAPPINGS: 62.2 ms"]
    assert [s.stop - s.start for s in run.steps] == [254, 77, 62]
    assert run.steps[-1].stop == run.stop and run.steps[0].stop == run.steps[1].start


def test_a_page_table_run_that_died_shows_the_stage_it_did_not_finish() -> None:
    died = result(Status.CRASHED, returncode=-11, metrics={"KVM_CREATE_MAPPINGS": 0.25}, reason="crashed: killed by SIGSEGV")
    (run,) = describe_run([died], None, scale="smoke", host="vm", test_name="t").steps
    assert [(s.name, s.status) for s in run.steps] == [
        ("KVM_CREATE_MAPPINGS: 250.0 ms", "passed"),
        ("KVM_UPDATE_MAPPINGS: not finished (write every page again with dirty logging on)", "failed"),
    ]
    assert run.steps[-1].message == "crashed: killed by SIGSEGV"


def test_several_guest_modes_group_their_stages() -> None:
    metrics = {f"{m}/{k}": v for m in ("p40v48_4k", "p40v48_64k") for k, v in PT_METRICS.items()}
    (run,) = describe_run([result(metrics=metrics)], None, scale="smoke", host="vm", test_name="t").steps
    assert [s.name for s in run.steps] == ["guest mode p40v48_4k", "guest mode p40v48_64k"]
    assert all(len(s.steps) == 3 for s in run.steps)


def test_dirty_log_perf_stages_in_output_order() -> None:
    stdout = golden("dirty_log_perf_test.manual_protect.stdout")
    argv = (f"{BIN}/dirty_log_perf_test", "-s", "anonymous", "-b", "64M", "-v", "2", "-i", "2")
    r = result(argv=argv, stdout=stdout, metrics=parse_metrics("dirty_log_perf_test", stdout))
    (run,) = describe_run([r], case("dirty_log_perf_test", "anonymous"), scale="smoke", host="vm").steps
    names = [s.name.split(":")[0] for s in run.steps]
    assert names[0] == "populate_memory" and names[1] == "enable_dirty_logging" and names[-1] == "disable_dirty_logging"
    assert "iteration_1/dirty_memory" in names and "get_dirty_log_total" not in names


# --- categories ------------------------------------------------------------------------

REAL_DIRTY_RING = """\
Failed: dirty_log_test exit 254: dirty_log_test.c:561: test_bit_le(page, bmap): Page 904 should have its dirty bit set in this iteration but it is missing

==== Test Assertion Failure ====
  dirty_log_test.c:561: test_bit_le(page, bmap)
  pid=8464 tid=8464 errno=1 - Operation not permitted
     1\t0x0000000000403a06: vm_dirty_log_verify at dirty_log_test.c:561
     2\t (inlined by) run_test at dirty_log_test.c:803
  Page 904 should have its dirty bit set in this iteration but it is missing

command: /root/.cache/pytest-kvmmm/selftests/6.12.117/dirty_log_test -M dirty-ring -c 1024 -i 5 -I 10"""
ENOMEM = "Failed: kvm_page_table_test exit 254: lib/kvm_util.c:1000: region->mmap_start != MAP_FAILED: mmap() failed\n\n" + golden(
    "kvm_page_table_test.hugetlb_2mb_empty_pool.stderr"
)
INTERNAL = """\
Failed: kvm_page_table_test exit 254: lib/kvm_util.c:1700: Wanted KVM exit reason: 2 (IO), got: 17 (INTERNAL_ERROR)

==== Test Assertion Failure ====
  kvm_page_table_test.c:200: exit_reason == KVM_EXIT_IO
  Wanted KVM exit reason: 2 (IO), got: 17 (INTERNAL_ERROR)"""
TIMEOUT = "Failed: hang timed out after 2s; its process group was killed (raise --kvm-timeout or use a smaller --kvm-scale)\n\npartial output:\nStarted all vCPUs successfully"
WARNING_LINES = "\n\nkernel log:\n[  812.123456] WARNING: CPU: 1 PID: 4242 at arch/x86/kvm/mmu/tdp_mmu.c:1234 tdp_mmu_zap_leafs+0x1/0x2\n[  812.123460] Call Trace:"


@pytest.mark.parametrize(
    "status, message, expected",
    [
        ("failed", REAL_DIRTY_RING, "Guest assertion failure"),
        ("failed", ENOMEM, "Host resource shortage"),
        ("failed", INTERNAL, "KVM internal error"),
        ("failed", TIMEOUT, "Timeout"),
        ("failed", "Failed: segv crashed: killed by SIGSEGV (signal 11)\n\nStarted all vCPUs successfully", "Crash"),
        ("failed", TIMEOUT + WARNING_LINES, "Kernel warning in the log"),
        ("failed", REAL_DIRTY_RING + "\n<4>BUG: kernel NULL pointer dereference, address: 0000000000000000", "Kernel warning in the log"),
        ("broken", INTERNAL + "\nkernel: Oops: 0002 [#1] PREEMPT SMP", "Kernel warning in the log"),
        ("skipped", "Skipped: needs 32 free 2 MiB hugepages for anonymous_hugetlb_2mb, pool has 0 (nr=0 free=0 resv=0): echo 32 > x", "Host resource shortage"),
        ("skipped", "Skipped: needs 64 online CPUs, this host has 4", "Host resource shortage"),
        ("skipped", "Skipped: the host has too little free memory for a meaningful case (8 MiB < 16 MiB)", "Host resource shortage"),
        ("skipped", "Skipped: needs 64 2 MiB hugepages, but this run's pool holds 32 usable ones in all", "Host resource shortage"),
        ("skipped", "Skipped: not_built_test not found in /x (--kvm-selftests); build them with `kvmmm-build` (or ...)", "Selftest binary missing"),
        ("skipped", "Skipped: needs KVM parameter kvm.tdp_mmu=Y, it is N: it is read-only here", "Host lacks a feature"),
        ("skipped", "Skipped: CONFIG_IDLE_PAGE_TRACKING is not enabled", "Host lacks a feature"),
    ],
)
def test_each_failure_lands_in_exactly_one_category(status: str, message: str, expected: str) -> None:
    assert categorize(status, message) == [expected]


def test_what_no_category_claims() -> None:
    assert categorize("passed", "") == []
    # an unclassified failure stays in Allure's own "Product defects"
    assert categorize("failed", "Failed: garbage exit 1: garbage\n\ncommand: garbage") == []
    # a selftest's own words are no kernel line: only a line that starts with the marker counts
    assert categorize("failed", "Failed: t exit 1: mytest WARNING: low disk") == []


def test_categories_json_is_portable() -> None:
    data = categories_json()
    assert [c["name"] for c in data] == [c.name for c in CATEGORIES]
    for c in data:
        re.compile(c["messageRegex"])
        # Allure 2 applies DOTALL itself; Allure 3 matches in JavaScript, which has no inline flags
        assert not re.search(r"\(\?[a-z]", c["messageRegex"].replace("(?:", "").replace("(?!", ""))
        assert set(c["matchedStatuses"]) <= {"failed", "broken", "skipped", "passed", "unknown"}


# --- environment ---------------------------------------------------------------------------


def test_host_environment_x86_and_arm64(tmp_path: Path) -> None:
    x86 = probe_host(make_host_root(tmp_path / "x", hostname="lab-7", pools={2048: {"nr": 64, "free": 60}}))
    env = host_environment(x86, "/c/selftests/6.12.117 (kvmmm-build cache 6.12.117)")
    assert env == {
        "kernel": "6.12.0-test", "arch": "x86_64", "page_size": "4K", "cpus": "4",
        "memory": "16384 MiB total, 12288 MiB available", "kvm": "kvm_pvm", "tdp": "no", "tdp_mmu": "no",
        "guest_1g_pages": "no", "maxphyaddr": "48", "pre_fault": "no", "thp": "madvise", "page_idle": "no",
        "mglru": "no", "hugetlb_free_nr": "2M:60/64", "hugetlb_default": "2M",
        "selftests": "/c/selftests/6.12.117 (kvmmm-build cache 6.12.117)", "facts_from": str(tmp_path / "x"),
    }
    assert host_environment(x86, None, emulated="tcg")["emulated"] == "tcg"
    assert list(host_environment(x86, None, emulated="tcg"))[0] == "emulated"
    arm = probe_host(make_host_root(tmp_path / "a", machine="aarch64", kvm="arm64_ttrem2", kvm_modules={},
                                    extra={"/dev/kmsg": "6,1,1,-;kvm [1]: VHE mode initialized successfully\n"}))
    env = host_environment(arm, None)
    assert env["ttrem"] == "2" and "tdp_mmu" not in env and "selftests" not in env
    assert {k: env[k] for k in ("arm64_mode", "ipa_size", "parange", "fwb", "idc_dic")} == {
        "arm64_mode": "vhe", "ipa_size": "48 bits", "parange": "48 bits", "fwb": "yes", "idc_dic": "yes/no"}
    assert env["s2_granules"] and env["guest_granules"] and env["hafdbs"].isdigit()
    assert list(env) == [k for k in ENV_KEYS if k in env]  # written in ENV_KEYS order


def test_environment_properties_one_and_two_hosts() -> None:
    one = environment_properties({"vm": {"kernel": "6.12.117", "kvm": "kvm_intel"}})
    assert one.splitlines()[1:] == ["host=vm", "kernel=6.12.117", "kvm=kvm_intel"]
    two = environment_properties({"vm": {"kernel": "6.12"}, "lab-arm64.example.com": {"kernel": "6.16", "ttrem": "2"}})
    assert two.splitlines()[1:] == [
        "hosts=lab-arm64.example.com, vm", "lab-arm64.example.com.kernel=6.16", "lab-arm64.example.com.ttrem=2",
        "vm.kernel=6.12",
    ]
    assert split_environment(parse_properties(two)) == (
        {"vm": {"kernel": "6.12"}, "lab-arm64.example.com": {"kernel": "6.16", "ttrem": "2"}}, {},
    )
    assert split_environment(parse_properties(one)) == ({"vm": {"kernel": "6.12.117", "kvm": "kvm_intel"}}, {})


def test_properties_escaping_round_trips() -> None:
    tricky = {"kvm": " kvm_pvm (unusable: open /dev/kvm: Permission denied = 13)", "facts_from": "C:\\snap\\ü 🐧\nx"}
    text = environment_properties({"h": tricky}, {"build url": "http://ci/1#2"})
    assert text.isascii(), "Allure reads .properties as ISO-8859-1"
    assert split_environment(parse_properties(text)) == ({"h": tricky}, {"build url": "http://ci/1#2"})


def test_session_files_merge_hosts_and_keep_other_tools_keys(tmp_path: Path) -> None:
    d = tmp_path / "allure-results"
    d.mkdir()
    (d / "environment.properties").write_text("browser=none\n")
    (d / "categories.json").write_text(json.dumps([{"name": "Mine", "matchedStatuses": ["failed"]}]))
    write_session_files(d, {"vm": {"kernel": "1"}})
    write_session_files(d, {"lab-arm64": {"kernel": "2"}})
    write_session_files(d, {"vm": {"kernel": "3"}})
    props = parse_properties((d / "environment.properties").read_text())
    assert props == {"hosts": "lab-arm64, vm", "lab-arm64.kernel": "2", "vm.kernel": "3", "browser": "none"}
    names = [c["name"] for c in json.loads((d / "categories.json").read_text())]
    assert names == [*(c.name for c in CATEGORIES), "Mine"]
    assert sorted(p.name for p in d.iterdir()) == ["categories.json", "environment.properties"], "no temp files left"


def test_hosts_from_records() -> None:
    records = [Record.from_json(r) for r in (
        {"host": "vm", "host_facts": {"kernel": "1"}},
        {"host": "arm", "host_facts": {"kernel": "2"}},
        {"host": "vm"},  # a record from before the wiring: no facts
    )]
    assert hosts_from_records(records) == {"vm": {"kernel": "1"}, "arm": {"kernel": "2"}}


# --- no Allure, no writing ------------------------------------------------------------


def test_disabled_without_alluredir_or_without_allure(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def config(value: str | None) -> Any:
        return SimpleNamespace(option=SimpleNamespace(allure_report_dir=value), invocation_params=SimpleNamespace(dir=tmp_path))

    assert allure_glue.alluredir(config(None)) is None
    assert allure_glue.alluredir(SimpleNamespace(option=SimpleNamespace())) is None  # type: ignore[arg-type]
    assert allure_glue.alluredir(config("ar")) == tmp_path / "ar"
    monkeypatch.setitem(sys.modules, "allure", None)  # import allure -> ImportError
    assert allure_glue.alluredir(config("ar")) is None


PASSING = """
    import pytest

    @pytest.mark.kvm_selftest("kvm_page_table_test", "-b", "64M", "-v", 2)
    def test_pt():
        pass
"""


@pytest.mark.parametrize("args", [[], ["-p", "no:allure_pytest"]], ids=["no-alluredir", "no-allure-plugin"])
def test_nothing_is_written_without_allure(pytester: pytest.Pytester, tmp_path: Path, args: list[str]) -> None:
    d = tmp_path / "b"
    make_fake(d, "kvm_page_table_test", stdout=golden("kvm_page_table_test.anonymous.stdout"))
    pytester.makepyfile(PASSING)
    before = set(pytester.path.rglob("*"))
    pytester.runpytest(f"--kvm-selftests={d}", "-p", "no:cacheprovider", *args).assert_outcomes(passed=1)
    new = {p for p in set(pytester.path.rglob("*")) - before if p.is_file() and p.suffix != ".pyc"}
    assert new == set()


def test_a_broken_annotation_warns_and_never_fails_the_test(
    pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = tmp_path / "b"
    make_fake(d, "kvm_page_table_test", stdout=golden("kvm_page_table_test.anonymous.stdout"))

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(allure_report, "describe", boom)  # pytester runs in this process
    pytester.makepyfile(PASSING)
    res = pytester.runpytest(f"--kvm-selftests={d}", f"--alluredir={tmp_path / 'ar'}")
    res.assert_outcomes(passed=1, warnings=1)
    res.stdout.fnmatch_lines(["*pytest-kvmmm: no Allure annotation for test_*.py::test_pt: RuntimeError('boom')*"])


# --- allure-pytest writes it: a run of fake selftests -------------------------------------------

OWN_TESTS = """
    import pytest

    @pytest.mark.kvm_selftest("fail254")
    def test_fail254():
        pass

    @pytest.mark.kvm_selftest("hang", timeout=1)
    def test_hang():
        pass
"""
SUITE = ["--pyargs", "pytest_kvmmm.suite", "-m", "pagetable", "--kvm-scale", "smoke"]
PT = [*SUITE, "-k", "test_kvm_page_table"]


def results(directory: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(directory.glob("*-result.json"))]


def by_title(directory: Path) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in results(directory)}


def attachment(directory: Path, res: dict[str, Any], name: str) -> str:
    (a,) = [a for a in res["attachments"] if a["name"] == name]
    return (directory / a["source"]).read_text()


def test_allure_results_of_fake_selftests(pytester: pytest.Pytester, tmp_path: Path) -> None:
    d = tmp_path / "b"
    make_fake(d, "kvm_page_table_test", stdout=golden("kvm_page_table_test.anonymous.stdout"))
    make_golden_fake(d, "fail254", "kvm_page_table_test.hugetlb_2mb_empty_pool")
    make_fake(d, "hang", stdout="Started all vCPUs successfully\n", hang=True)
    root = make_host_root(tmp_path / "lab-7", hostname="lab-7", thp_enabled="never")
    ar = pytester.path / "ar"
    common = ["-p", "no:cacheprovider", f"--kvm-selftests={d}", f"--kvm-host-snapshot={root}", f"--alluredir={ar}"]
    pytester.runpytest(*PT, *common).assert_outcomes(passed=2, skipped=4)
    pytester.makepyfile(OWN_TESTS)
    pytester.runpytest(*common).assert_outcomes(failed=2)

    res = by_title(ar)
    ok = res["kvm_page_table_test: anonymous, 2 vCPUs x 32M (64M total) on lab-7"]
    assert ok["status"] == "passed"
    labels = {(lb["name"], lb["value"]) for lb in ok["labels"]}
    assert {("epic", "KVM MMU"), ("feature", "kvm_page_table_test"), ("story", "anonymous"), ("parentSuite", "lab-7"),
            ("severity", "critical"), ("tag", "pagetable"), ("tag", "perf")} <= labels
    assert [(p["name"], p["value"], p.get("excluded", False)) for p in ok["parameters"]] == [
        ("kvm_case", "'anonymous'", False), ("host", "'lab-7'", False), ("scale", "'smoke'", False),
        ("guest mode", "'default'", True), ("backing source", "'anonymous'", True), ("vCPUs", "2", True),
        ("memory per vCPU", "'32M'", True), ("memory total", "'64M'", True),
    ]
    assert attachment(ar, ok, "stdout") == golden("kvm_page_table_test.anonymous.stdout")
    assert attachment(ar, ok, "command") == f"cd {d} && {d}/kvm_page_table_test -s anonymous -b 64M -v 2\n"
    assert set(json.loads(attachment(ar, ok, "metrics.json"))) == {"KVM_CREATE_MAPPINGS", "KVM_UPDATE_MAPPINGS", "KVM_ADJUST_MAPPINGS"}
    (run,) = ok["steps"]
    assert [s["name"].split(":")[0] for s in run["steps"]] == ["KVM_CREATE_MAPPINGS", "KVM_UPDATE_MAPPINGS", "KVM_ADJUST_MAPPINGS"]

    thp = res["kvm_page_table_test: anonymous_thp, 2 vCPUs x 32M (64M total) on lab-7"]
    assert thp["status"] == "skipped" and "THP is 'never'" in attachment(ar, thp, "skip reason")
    assert [a["name"] for a in thp["attachments"]] == ["command (not run)", "skip reason"]

    fail = res["test_fail254: fail254 on lab-7"]
    assert "==== Test Assertion Failure ====" in attachment(ar, fail, "failure reason")
    assert categorize(fail["status"], fail["statusDetails"]["message"]) == ["Host resource shortage"]
    hang = res["test_hang: hang on lab-7"]
    assert attachment(ar, hang, "stdout (partial: killed at the timeout)") == "Started all vCPUs successfully\n"
    assert categorize(hang["status"], hang["statusDetails"]["message"]) == ["Timeout"]

    assert json.loads((ar / "categories.json").read_text()) == categories_json()
    env = parse_properties((ar / "environment.properties").read_text())
    assert env["host"] == "lab-7" and env["thp"] == "never" and env["selftests"] == f"{d} (--kvm-selftests)"


def test_history_ids_keep_hosts_apart_and_reruns_together(
    pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")])))
    d = tmp_path / "b"
    make_fake(d, "kvm_page_table_test", stdout=golden("kvm_page_table_test.anonymous.stdout"))
    x86 = make_host_root(tmp_path / "x86", hostname="lab-7")
    arm = make_host_root(tmp_path / "arm", hostname="lab-arm64", machine="aarch64", kvm="arm64_ttrem2", kvm_modules={})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    ids: dict[str, dict[str, str]] = {}
    for label, root, cwd in (("x86", x86, pytester.path), ("arm", arm, pytester.path), ("x86-again", x86, pytester.path),
                             ("x86-elsewhere", x86, elsewhere)):
        ar = tmp_path / label
        monkeypatch.chdir(cwd)
        # separate processes: an identity must not depend on object addresses, which differ per process
        pytester.runpytest_subprocess(*PT, f"--kvm-selftests={d}", f"--kvm-host-snapshot={root}", f"--alluredir={ar}")
        ids[label] = {f"{r['fullName']}[{dict((p['name'], p['value']) for p in r['parameters'])['kvm_case']}]": r["historyId"] for r in results(ar)}
    assert len(ids["x86"]) == 6
    assert next(iter(ids["x86"])).startswith("pytest_kvmmm.suite.test_mm#test_kvm_page_table[")
    assert ids["x86"] == ids["x86-again"], "a rerun on the same host keeps each test's history"
    assert ids["x86"] == ids["x86-elsewhere"], "... from whichever directory pytest runs"
    assert not set(ids["x86"].values()) & set(ids["arm"].values()), "two hosts never share a test"


def test_two_hosts_in_one_directory(pytester: pytest.Pytester, tmp_path: Path) -> None:
    d = tmp_path / "b"
    make_fake(d, "kvm_page_table_test", stdout=golden("kvm_page_table_test.anonymous.stdout"))
    ar = tmp_path / "ar"
    for host in ("lab-7", "lab-8"):
        root = make_host_root(tmp_path / host, hostname=host)
        pytester.runpytest(*SUITE, "-k", "test_kvm_page_table and anonymous and not hugetlb and not thp",
                           f"--kvm-selftests={d}", f"--kvm-host-snapshot={root}", f"--alluredir={ar}")
    assert sorted(r["name"] for r in results(ar)) == [
        "kvm_page_table_test: anonymous, 2 vCPUs x 32M (64M total) on lab-7",
        "kvm_page_table_test: anonymous, 2 vCPUs x 32M (64M total) on lab-8",
    ]
    env = parse_properties((ar / "environment.properties").read_text())
    assert env["hosts"] == "lab-7, lab-8" and env["lab-7.kvm"] == env["lab-8.kvm"] == "kvm_pvm"


def test_under_xdist_workers_write_results_and_the_controller_the_session_files(
    pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")])))
    d = tmp_path / "b"
    make_fake(d, "kvm_page_table_test", stdout=golden("kvm_page_table_test.anonymous.stdout"))
    root = make_host_root(tmp_path / "lab-7", hostname="lab-7", pools={2048: {"nr": 64, "free": 64}})
    ar = tmp_path / "ar"
    ar.mkdir()
    (ar / "keep-me.txt").write_text("an earlier file")
    # The workers look at lab-7 (their gateway's snapshot), the controller at this machine: the
    # environment can only name lab-7 through the facts in the workers' records.
    res = pytester.runpytest_subprocess(*PT, "--dist=load", "--tx", f"2*popen//env:KVMMM_HOST_SNAPSHOT={root}",
                                        f"--kvm-selftests={d}", f"--alluredir={ar}")
    res.assert_outcomes(passed=5, skipped=1)
    assert len(results(ar)) == 6 and (ar / "keep-me.txt").exists(), "the controller wipes nothing"
    env = parse_properties((ar / "environment.properties").read_text())
    assert env["host"] == "lab-7" and env["hugetlb_free_nr"] == "2M:64/64"
