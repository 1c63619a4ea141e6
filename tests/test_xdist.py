"""pytest-xdist: one host shared by workers, and several hosts (gateways) in one run."""

from __future__ import annotations

from pathlib import Path

import pytest

from fakes import golden, make_fake, make_host_root
from pytest_kvmmm.host import probe_host
from pytest_kvmmm.reports.results import read_results

PT = ["--pyargs", "pytest_kvmmm.suite", "-m", "pagetable", "--kvm-scale", "smoke", "-p", "no:cacheprovider"]


def overlapping(a: dict[str, object], b: dict[str, object]) -> bool:
    return a["started_at"] < b["ended_at"] and b["started_at"] < a["ended_at"]  # type: ignore[operator]


@pytest.fixture
def slow_bins(tmp_path: Path) -> Path:
    d = tmp_path / "bins"
    make_fake(d, "kvm_page_table_test", stdout=golden("kvm_page_table_test.anonymous.stdout"), sleep=0.6)
    make_fake(d, "memslot_modification_stress_test", sleep=0.6)
    make_fake(d, "set_memory_region_test", sleep=0.6)
    return d


HUGETLB_TESTS = """
    import pytest

    @pytest.mark.kvm_requires(hugetlb={"2M": 32})
    @pytest.mark.kvm_selftest("slow_selftest")
    def test_first():
        pass

    @pytest.mark.kvm_requires(hugetlb={"2M": 32})
    @pytest.mark.kvm_selftest("slow_selftest")
    def test_second():
        pass
"""


@pytest.mark.parametrize("pool, serialized", [(32, True), (64, False)], ids=["pool-for-one", "pool-for-two"])
def test_hugetlb_cases_share_the_pool_without_overcommitting_it(
    pytester: pytest.Pytester, tmp_path: Path, pool: int, serialized: bool
) -> None:
    # Functional tests (no perf marker), so only the hugetlb ledger can keep them apart.
    make_fake(tmp_path / "bins", "slow_selftest", sleep=2.5)  # long enough for both workers to start
    root = make_host_root(tmp_path / "root", pools={2048: {"nr": pool, "free": pool}})
    pytester.makepyfile(HUGETLB_TESTS)
    res = pytester.runpytest_subprocess(
        "-n", "2", "-p", "no:cacheprovider", f"--kvm-host-snapshot={root}",
        f"--kvm-selftests={tmp_path / 'bins'}", "--kvm-results", "r.jsonl",
    )
    res.assert_outcomes(passed=2)
    a, b = read_results(pytester.path / "r.jsonl")
    assert overlapping(a, b) is not serialized


def test_a_pool_for_one_hugetlb_case_serializes_the_suite(pytester: pytest.Pytester, tmp_path: Path, slow_bins: Path) -> None:
    # 32 free 2 MiB pages: exactly one 64M smoke case of anonymous_hugetlb_2mb or shared_hugetlb.
    root = make_host_root(tmp_path / "root", pools={2048: {"nr": 32, "free": 32}, 1048576: {"nr": 0, "free": 0}})
    res = pytester.runpytest_subprocess(
        *PT, "-n", "2", "-k", "kvm_page_table and hugetlb_2mb or kvm_page_table and shared_hugetlb",
        f"--kvm-host-snapshot={root}", f"--kvm-selftests={slow_bins}", "--kvm-results", "r.jsonl",
    )
    res.assert_outcomes(passed=2)
    a, b = read_results(pytester.path / "r.jsonl")
    assert not overlapping(a, b), "two cases that each need the whole pool ran at once"


def test_perf_tests_never_overlap_and_outcomes_match_n0(pytester: pytest.Pytester, tmp_path: Path, slow_bins: Path) -> None:
    root = make_host_root(tmp_path / "root", pools={2048: {"nr": 128, "free": 128}})
    common = ["--pyargs", "pytest_kvmmm.suite", "-m", "pagetable or memslot", "--kvm-scale", "smoke",
              "-p", "no:cacheprovider", "-k", "kvm_page_table or memslot_modification or set_memory_region",
              f"--kvm-host-snapshot={root}", f"--kvm-selftests={slow_bins}"]
    serial = pytester.runpytest_subprocess(*common, "--kvm-results", "n0.jsonl")
    parallel = pytester.runpytest_subprocess(*common, "-n", "2", "--kvm-results", "n2.jsonl")
    def counts(res: pytest.RunResult) -> dict[str, int]:
        return {k: v for k, v in res.parseoutcomes().items() if k in ("passed", "skipped", "failed", "error")}

    assert counts(serial) == counts(parallel) == {"passed": 7, "skipped": 1}
    n0 = {r["nodeid"]: r["status"] for r in read_results(pytester.path / "n0.jsonl")}
    recs = read_results(pytester.path / "n2.jsonl")
    assert {r["nodeid"]: r["status"] for r in recs} == n0, "same outcomes, one record per test"
    ran = [r for r in recs if r["started_at"]]
    perf = [r for r in ran if "test_kvm_page_table" in str(r["nodeid"])]
    assert len(perf) == 5
    for p in perf:
        for other in ran:
            assert other is p or not overlapping(p, other), f"{other['nodeid']} ran during perf test {p['nodeid']}"


def test_two_gateways_two_hosts(pytester: pytest.Pytester, tmp_path: Path, slow_bins: Path) -> None:
    arm = make_host_root(tmp_path / "arm", machine="aarch64", hostname="lab-arm64", kvm="arm64_ttrem2",
                         kvm_modules={}, pools={2048: {"nr": 64, "free": 64}})
    pytester.makepyfile(test_handoff="""
        import pytest

        @pytest.mark.pagetable
        def test_handoff(request, kvm_host):
            handed = request.config.workerinput.get("kvmmm_host")
            # a gateway with its own snapshot in its environment probes for itself
            assert (handed is None) == (kvm_host.hostname == "lab-arm64")
    """)
    res = pytester.runpytest_subprocess(
        *PT, "-k", "kvm_page_table or handoff", "test_handoff.py",
        # one gateway sees an arm64 lab host (its snapshot), the other the live host
        "--dist", "each", "--tx", f"popen//env:KVMMM_HOST_SNAPSHOT={arm}", "--tx", "popen",
        f"--kvm-selftests={slow_bins}", "--kvm-results", "r.jsonl", "-rs",
    )
    out = res.stdout.str()
    assert "Different tests were collected" not in out
    recs = read_results(pytester.path / "r.jsonl")
    by_host: dict[str, dict[str, str]] = {}
    for r in recs:
        by_host.setdefault(str(r["host"]), {})[str(r["nodeid"]).split("::")[-1]] = str(r["status"])
    live = next(h for h in by_host if h != "lab-arm64")
    assert set(by_host) == {"lab-arm64", live} and by_host["lab-arm64"].keys() == by_host[live].keys()
    # the arm64 snapshot has 64 free 2 MiB pages, the live host's facts say what they say
    assert by_host["lab-arm64"]["test_kvm_page_table[anonymous_hugetlb_2mb]"] == "passed"
    live_pool = probe_host().hugetlb_pool(2048)
    if live_pool is None or live_pool.usable < 32:
        assert by_host[live]["test_kvm_page_table[anonymous_hugetlb_2mb]"] == "skipped", "skips differ as the facts say"
    res.stdout.fnmatch_lines([f"*= kvm selftests on {', '.join(sorted(by_host))} =*"])
    # each host's own facts, from its own worker: the controller only probed the live host
    res.stdout.fnmatch_lines(["lab-arm64: arch aarch64, kernel 6.12.0-test, page_size 4K, kvm arm64, ttrem 2, "
                              "arm64_mode ?, ipa_size 48 bits, parange * bits, s2_granules 4k,16k,64k, *"])
    res.stdout.fnmatch_lines([f"{live}: arch x86_64, *"])
    assert all(r["host_facts"]["arch"] == ("aarch64" if r["host"] == "lab-arm64" else "x86_64") for r in recs)
    res.stdout.fnmatch_lines(["*lab-arm64: *test_kvm_page_table*"])
    # test_handoff (no selftest record) passed on both gateways: the hand-off went only to the live one
    assert res.parseoutcomes()["passed"] == 2 + sum(s == "passed" for h in by_host.values() for s in h.values())
