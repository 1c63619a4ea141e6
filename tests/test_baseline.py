"""Baselines without pytest: storage, fingerprints, statistics and verdicts, tables, kvmmm-compare."""

from __future__ import annotations

import dataclasses
import json
import random
import sys
from pathlib import Path

import pytest

from fakes import GOLDEN, make_host_root
from pytest_kvmmm.baseline import cli, store
from pytest_kvmmm.baseline.compare import compare, failing, metric_changes, pair_hosts
from pytest_kvmmm.baseline.fingerprint import (
    Fingerprint,
    compared_differences,
    fingerprint,
    machine_differences,
    selftests_build,
)
from pytest_kvmmm.baseline.plot import INSTALL_HINT, PlotError, write_png
from pytest_kvmmm.baseline.stats import (
    MIN_SAMPLES,
    Verdict,
    change_pct,
    compare_samples,
    direction,
    is_headline,
)
from pytest_kvmmm.baseline.table import (
    format_change,
    format_value,
    markdown,
    regression_message,
    terminal_lines,
)
from pytest_kvmmm.engine.discovery import SearchRoot
from pytest_kvmmm.host import probe_host
from pytest_kvmmm.provision.cache import BuildManifest, write_manifest

PT = "pytest_kvmmm/suite/test_mm.py::test_kvm_page_table"
VM = Fingerprint(
    machine="x86_64", cpu_model="AMD EPYC", cpus=2, memory_gib=23.5, kvm_flavour="kvm_pvm", tdp=False,
    tdp_mmu=False, thp="madvise", thp_shmem="never", kernel_release="6.18.44", selftests="6.12.117",
)


def jitter(base: float, n: int = 10, spread: float = 0.04, seed: int = 1) -> tuple[float, ...]:
    """``n`` samples around ``base``, within +-``spread`` (relative), reproducibly."""
    rng = random.Random(seed)
    return tuple(round(base * (1 + rng.uniform(-spread, spread)), 6) for _ in range(n))


def run(name: str, tests: dict[str, dict[str, tuple[float, ...]]], fp: Fingerprint = VM, host: str = "vm",
        repeat: int = 10, created_at: str = "2026-01-02T10:00:00Z") -> store.Baseline:
    return store.Baseline(
        name, created_at,
        {host: store.HostRun(fp, {n: store.TestRun("kvm_page_table_test", "passed", s) for n, s in tests.items()})},
        scale="smoke", repeat=repeat,
    )


def page_table(create: float, update: float, adjust: float, seed: int = 1) -> dict[str, tuple[float, ...]]:
    return {
        "KVM_CREATE_MAPPINGS": jitter(create, seed=seed),
        "KVM_UPDATE_MAPPINGS": jitter(update, seed=seed + 1),
        "KVM_ADJUST_MAPPINGS": jitter(adjust, seed=seed + 2),
    }


BEFORE = run("before", {f"{PT}[anonymous]": page_table(104.35, 178.80, 20.0), f"{PT}[shmem]": page_table(0.25, 0.1, 0.1)})
AFTER = run(
    "after",
    {f"{PT}[anonymous]": page_table(3.70, 123.35, 26.0, seed=7), f"{PT}[shmem]": page_table(0.25, 0.1, 0.1, seed=11)},
    fp=dataclasses.replace(VM, kernel_release="6.19.0"),
    created_at="2026-01-03T11:30:00Z",
)


# --- direction and statistics ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("metric", "sign"),
    [
        ("KVM_CREATE_MAPPINGS", -1),
        ("populate_memory", -1),
        ("p40v48_4k/KVM_ADJUST_MAPPINGS", -1),
        ("overall_demand_paging_rate_pgs_per_s", 1),
        ("map/best_completed_iterations", 1),
        ("dirty_bits_checked", 0),
        ("dirtied_pages", 0),
        ("iteration_2/writes", 0),
    ],
)
def test_direction_comes_from_the_metric_name(metric: str, sign: int) -> None:
    assert direction(metric) == sign


def test_series_points_are_not_headline_numbers() -> None:
    assert is_headline("get_dirty_log_total") and is_headline("map/best_iteration_avg")
    assert not is_headline("iteration_1/dirty_memory") and not is_headline("map/run_2/slot_setup")


def test_change_is_positive_when_better_as_in_cover_letters() -> None:
    assert change_pct(104.35, 3.70, -1) == pytest.approx(96.4542, abs=1e-3)  # time down: better
    assert change_pct(178.80, 123.35, -1) == pytest.approx(31.01, abs=1e-2)
    assert change_pct(1000.0, 800.0, 1) == pytest.approx(-20.0)  # rate down: worse
    assert change_pct(1.0, 1.5, -1) == pytest.approx(-50.0)  # time up: worse


def test_clear_regression_and_improvement_get_verdicts_noise_does_not() -> None:
    base = jitter(1.0, seed=3)
    worse = compare_samples("KVM_CREATE_MAPPINGS", base, jitter(1.3, seed=4))
    better = compare_samples("KVM_CREATE_MAPPINGS", base, jitter(0.7, seed=5))
    same = compare_samples("KVM_CREATE_MAPPINGS", base, jitter(1.0, seed=6))
    assert worse is not None and worse.verdict is Verdict.REGRESSED and worse.regression > 25
    assert better is not None and better.verdict is Verdict.IMPROVED and better.regression == 0
    assert same is not None and same.verdict is Verdict.NO_CHANGE
    rate = compare_samples("overall_demand_paging_rate_pgs_per_s", base, jitter(0.7, seed=5))
    assert rate is not None and rate.verdict is Verdict.REGRESSED, "a rate that drops is a regression"


def test_a_wide_spread_hides_a_shift_a_small_change_is_no_verdict() -> None:
    wide_before = (0.5, 0.8, 1.0, 1.2, 1.6, 0.7, 1.4)
    wide_after = (0.6, 0.9, 1.15, 1.3, 1.7, 0.8, 1.5)
    noisy = compare_samples("KVM_CREATE_MAPPINGS", wide_before, wide_after)
    assert noisy is not None and noisy.verdict is Verdict.NO_CHANGE
    tight = compare_samples("KVM_CREATE_MAPPINGS", jitter(1.0, spread=0.001), jitter(1.03, spread=0.001, seed=2))
    assert tight is not None and tight.interval is not None and tight.interval[1] < 0, "significant ..."
    assert tight.verdict is Verdict.NO_CHANGE, "... but under the noise floor"


def test_verdicts_are_deterministic_for_a_seed() -> None:
    a, b = jitter(1.0, n=6, spread=0.2, seed=8), jitter(1.1, n=6, spread=0.2, seed=9)
    first = compare_samples("KVM_UPDATE_MAPPINGS", a, b, seed=42)
    assert first == compare_samples("KVM_UPDATE_MAPPINGS", a, b, seed=42)


def test_too_few_samples_and_counters() -> None:
    few = compare_samples("KVM_CREATE_MAPPINGS", (1.0,) * (MIN_SAMPLES - 1), (2.0,) * 10)
    assert few is not None and few.verdict is Verdict.TOO_FEW and few.change == pytest.approx(-100.0)
    assert compare_samples("dirtied_pages", (1.0,) * 5, (2.0,) * 5) is None


def test_failing_needs_a_regression_verdict_beyond_the_threshold() -> None:
    before = store.TestRun("kvm_page_table_test", "passed", page_table(1.0, 1.0, 1.0))
    after = page_table(1.5, 1.08, 0.5, seed=20)  # +50 % time, +8 % time, -50 % time
    changes = metric_changes(before, after, host="vm", nodeid="t")
    assert [c.metric for c, _ in failing(changes, {}, 10.0)] == ["KVM_CREATE_MAPPINGS"]
    assert failing(changes, {"KVM_CREATE_MAPPINGS": 60.0}, 10.0) == []
    assert [c.metric for c, _ in failing(changes, {}, 5.0)] == ["KVM_CREATE_MAPPINGS", "KVM_UPDATE_MAPPINGS"]


# --- fingerprints ----------------------------------------------------------------------------------


def test_fingerprint_of_a_host(tmp_path: Path) -> None:
    root = make_host_root(tmp_path / "h", cpus="0-3", mem_total_kb=16 * 1024 * 1024 - 70_000, release="6.12.9")
    fp = fingerprint(probe_host(root), "6.12.117")
    assert fp.machine == "x86_64" and fp.cpus == 4 and fp.cpu_model == "AMD EPYC"
    assert fp.memory_gib == 15.9 and fp.kernel_release == "6.12.9" and fp.selftests == "6.12.117"
    assert fp.kvm_flavour == "kvm_pvm" and fp.tdp is False and fp.thp == "madvise"
    assert Fingerprint.from_json({**fp.to_json(), "future_field": 1}) == fp


def test_selftests_build_is_the_manifest_version_else_the_directory(tmp_path: Path) -> None:
    build = tmp_path / "6.12.117"
    build.mkdir()
    assert selftests_build([SearchRoot(build, "cache")]) == str(build)
    write_manifest(build, BuildManifest("6.12.117", "x86_64", "linux-source-6.12"))
    assert selftests_build([SearchRoot(build, "cache 6.12.117")]) == "6.12.117"
    assert selftests_build([]) is None


def test_the_kernel_and_build_are_what_is_compared_the_machine_must_match() -> None:
    newer = dataclasses.replace(VM, kernel_release="6.19.0", selftests="6.19.0", memory_gib=23.4)
    assert machine_differences(VM, newer) == [], "MemTotal moves a little between kernels"
    assert [str(d) for d in compared_differences(VM, newer)] == [
        "kernel 6.18.44 -> 6.19.0", "selftests build 6.12.117 -> 6.19.0",
    ]
    other = dataclasses.replace(VM, cpus=4, tdp_mmu=True, memory_gib=31.0)
    assert [str(d) for d in machine_differences(VM, other)] == [
        "online CPUs 2 -> 4", "memory (GiB) 23.5 -> 31.0", "TDP MMU no -> yes",
    ]


# --- storage ------------------------------------------------------------------------------------------


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "b" / "before.json"
    store.save(BEFORE, path)
    loaded = store.load(path)
    assert loaded == BEFORE and loaded.path == path
    data = json.loads(path.read_text())
    assert data["kind"] == "pytest-kvmmm-baseline" and data["format"] == 1
    test = data["hosts"]["vm"]["tests"][f"{PT}[shmem]"]
    assert len(test["samples"]["KVM_CREATE_MAPPINGS"]) == 10 and "KVM_CREATE_MAPPINGS" in test["metrics"]
    assert not list(path.parent.glob("*.tmp"))


def test_the_format_1_golden_file_still_loads() -> None:
    """Pins format 1: a file written by this version must stay readable by later ones."""
    b = store.load(GOLDEN / "baseline-format1.json")  # saved by a real smoke run on the dev host
    assert b.name == "before" and b.repeat == 5 and b.scale == "smoke"
    t = b.hosts["vm"].tests["test_mm.py::test_kvm_page_table[anonymous]"]
    assert t.binary == "kvm_page_table_test" and t.argv[1:] == ("-s", "anonymous", "-b", "64M", "-v", "2")
    assert t.samples["KVM_CREATE_MAPPINGS"][:2] == (0.610060602, 0.549594261)
    assert len(t.samples["KVM_ADJUST_MAPPINGS"]) == 5
    fp = b.hosts["vm"].fingerprint
    assert (fp.kvm_flavour, fp.cpus, fp.selftests) == ("kvm_pvm", 2, "6.12.117")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"kind": "pytest-kvmmm-baseline", "format": 2, "hosts": {}}',
         "has baseline format 2, this pytest-kvmmm reads format 1; upgrade pytest-kvmmm to read it"),
        ('{"kind": "pytest-kvmmm-baseline", "hosts": {}}', "has baseline format None, this pytest-kvmmm reads format 1"),
        ('{"nodeid": "x", "metrics": {}}', 'is not a pytest-kvmmm baseline (no "kind": "pytest-kvmmm-baseline")'),
        ("{oops", "is not a pytest-kvmmm baseline (not JSON: Expecting property name enclosed in double quotes: line 1 column 2 (char 1))"),
        ('{"kind": "pytest-kvmmm-baseline", "format": 1, "hosts": {"vm": {"tests": {"t": {"samples": {"m": ["x"]}}}}}}',
         "is a damaged pytest-kvmmm baseline: hosts.vm.tests.t.samples.m[0]: 'x' is not a number"),
    ],
)
def test_unreadable_files_are_refused_in_one_clear_line(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "b.json"
    path.write_text(content)
    with pytest.raises(store.BaselineError) as exc:
        store.load(path)
    assert str(exc.value).startswith(str(path)) and str(exc.value).endswith(message)
    assert "\n" not in str(exc.value)


def test_names_and_files(tmp_path: Path) -> None:
    d = tmp_path / "baselines"
    assert store.save_path("before-6.19", d) == d / "before-6.19.json"
    assert store.save_path("runs/x.json", d) == Path("runs/x.json")
    with pytest.raises(store.BaselineError, match="is not a baseline name"):
        store.save_path("a b", d)
    with pytest.raises(store.BaselineError, match=r"no baseline named 'before' in .* \(none saved there yet; save one with --kvm-save NAME\)"):
        store.find("before", d)
    store.save(BEFORE, d / "before.json")
    store.save(AFTER, d / "after.json")
    assert store.find("before", d) == d / "before.json"
    assert store.find(str(d / "after.json"), tmp_path) == d / "after.json"
    with pytest.raises(store.BaselineError, match=r"no baseline named 'befor' in .* \(saved: after, before\)"):
        store.find("befor", d)
    with pytest.raises(store.BaselineError, match="no baseline file nowhere/x.json"):
        store.find("nowhere/x.json", d)


def test_the_folder_option_env_and_default(tmp_path: Path) -> None:
    assert store.baselines_dir("/x", {"KVMMM_BASELINES_DIR": "/y"}) == Path("/x")
    assert store.baselines_dir(None, {"KVMMM_BASELINES_DIR": "/y"}) == Path("/y")
    assert store.baselines_dir(None, {"HOME": "/home/u"}) == Path("/home/u/.cache/pytest-kvmmm/baselines")
    assert store.baselines_dir(None, {"KVMMM_CACHE_DIR": "/c"}) == Path("/c/baselines")


def test_records_become_a_baseline_keyed_by_host_and_test() -> None:
    records = [
        {"host": "a", "nodeid": "t1", "binary": "kvm_page_table_test", "status": "passed",
         "metrics": {"KVM_CREATE_MAPPINGS": 1.0}, "samples": {"KVM_CREATE_MAPPINGS": [1.0, 1.1]}},
        {"host": "b", "nodeid": "t1", "binary": "kvm_page_table_test", "status": "passed",
         "metrics": {"KVM_CREATE_MAPPINGS": 2.0}},  # no samples: an older record
        {"host": "b", "nodeid": "t2", "binary": "x", "status": "skipped", "metrics": {}, "samples": {}},
    ]
    b = store.from_records(records, {"a": VM}, name="n", repeat=2, created_at="now")
    assert b.hosts["a"].tests["t1"].samples == {"KVM_CREATE_MAPPINGS": (1.0, 1.1)}
    assert b.hosts["b"].tests["t1"].samples == {"KVM_CREATE_MAPPINGS": (2.0,)}
    assert b.hosts["a"].fingerprint == VM and b.hosts["b"].fingerprint == Fingerprint()
    assert b.hosts["b"].tests["t2"].status == "skipped"


# --- comparing runs ---------------------------------------------------------------------------------


def test_hosts_pair_by_name_or_a_single_host_each() -> None:
    assert pair_hosts(["a", "b"], ["b", "c"]) == [("b", "b")]
    assert pair_hosts(["old-name"], ["new-name"]) == [("old-name", "new-name")]
    assert pair_hosts(["a", "b"], ["c"]) == []


def test_ids_from_another_rootdir_match_by_file_name() -> None:
    """--pyargs from another directory names the suite's file without its directory."""
    elsewhere = run("after", {"test_mm.py::test_kvm_page_table[anonymous]": page_table(3.70, 123.35, 26.0, seed=7)})
    c = compare(BEFORE, elsewhere)
    assert {r.nodeid for r in c.rows} == {"test_mm.py::test_kvm_page_table[anonymous]"} and len(c.rows) == 3
    assert c.only_before == (("vm", f"{PT}[shmem]"),)


def test_compare_rows_and_unmatched_tests() -> None:
    extra = run("after", {f"{PT}[anonymous]": page_table(3.70, 123.35, 26.0, seed=7), f"{PT}[thp]": page_table(1, 1, 1)})
    c = compare(BEFORE, extra)
    assert [(r.nodeid.rsplit("[", 1)[1], r.change.metric, r.change.verdict) for r in c.rows] == [
        ("anonymous]", "KVM_CREATE_MAPPINGS", Verdict.IMPROVED),
        ("anonymous]", "KVM_UPDATE_MAPPINGS", Verdict.IMPROVED),
        ("anonymous]", "KVM_ADJUST_MAPPINGS", Verdict.REGRESSED),
    ]
    assert c.only_after == (("vm", f"{PT}[thp]"),) and c.only_before == (("vm", f"{PT}[shmem]"),)


def test_another_machine_refuses_verdicts_unless_forced() -> None:
    elsewhere = dataclasses.replace(AFTER, hosts={"vm": dataclasses.replace(AFTER.hosts["vm"], fingerprint=dataclasses.replace(VM, cpus=8))})
    refused = compare(BEFORE, elsewhere)
    assert refused.mismatched and {r.change.verdict for r in refused.rows} == {Verdict.REFUSED}
    forced = compare(BEFORE, elsewhere, force=True)
    assert Verdict.IMPROVED in {r.change.verdict for r in forced.rows}
    assert any("WARNING: host vm differs (online CPUs 2 -> 8): " in line for line in terminal_lines(refused))


def test_an_emulated_side_refuses_verdicts_even_when_forced() -> None:
    """A lab host's timings (QEMU TCG) are never compared with a physical host's, forced or not."""
    lab = dataclasses.replace(AFTER, hosts={"vm": dataclasses.replace(AFTER.hosts["vm"], fingerprint=dataclasses.replace(VM, emulated="tcg"))})
    for force in (False, True):
        c = compare(BEFORE, lab, force=force)
        assert c.mismatched and {r.change.verdict for r in c.rows} == {Verdict.REFUSED}
        assert any("WARNING: host vm differs (emulated unknown -> tcg): timings from an emulated host are never "
                   "compared with a physical host's, so no verdicts, forced or not" in line for line in terminal_lines(c))
    both = dataclasses.replace(BEFORE, hosts={"vm": dataclasses.replace(BEFORE.hosts["vm"], fingerprint=dataclasses.replace(VM, emulated="tcg"))})
    same = compare(both, lab)
    assert not same.mismatched and Verdict.IMPROVED in {r.change.verdict for r in same.rows}, "emulated vs emulated is fine"
    assert Fingerprint.from_json(dataclasses.replace(VM, emulated="tcg").to_json()).emulated == "tcg"


# --- tables ------------------------------------------------------------------------------------------------


def test_numbers_read_like_a_cover_letter() -> None:
    assert format_value("KVM_CREATE_MAPPINGS", 104.35) == "104.35s"
    assert format_value("KVM_CREATE_MAPPINGS", 0.25417) == "0.2542s"
    assert format_value("KVM_CREATE_MAPPINGS", 0.0012345) == "0.001234s"
    assert format_value("overall_demand_paging_rate_pgs_per_s", 123456.7) == "123,457 pgs/s"
    assert format_value("map/best_completed_iterations", 12.0) == "12 iterations"
    assert format_change(96.4542) == "+96.45%" and format_change(-0.001) == "+0.00%" and format_change(-31.0) == "-31.00%"


def test_terminal_table_golden() -> None:
    text = "\n".join(terminal_lines(compare(BEFORE, AFTER))) + "\n"
    assert text == (GOLDEN / "baseline-table.txt").read_text()


def test_markdown_table_golden() -> None:
    assert markdown(compare(BEFORE, AFTER)) == (GOLDEN / "baseline-table.md").read_text()


def test_regression_message_puts_the_numbers_first() -> None:
    before = store.TestRun("kvm_page_table_test", "passed", page_table(1.0, 1.0, 1.0))
    found = failing(metric_changes(before, page_table(1.5, 1.0, 1.0, seed=20), host="vm", nodeid="t"), {}, 10.0)
    lines = regression_message("before", found).splitlines()
    assert lines[0] == "regressed against baseline 'before': KVM_CREATE_MAPPINGS before 0.9978s -> after 1.53s -53.05%"
    assert lines[1].startswith("  KVM_CREATE_MAPPINGS: -53.05% is beyond the 10% threshold; 95% interval -")
    assert lines[1].endswith("; before 0.9623..1.03 n=10, after 1.46..1.55 n=10")


# --- kvmmm-compare ----------------------------------------------------------------------------------------


@pytest.fixture
def saved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "baselines"
    store.save(BEFORE, d / "before.json")
    store.save(AFTER, d / "after.json")
    monkeypatch.setenv("KVMMM_BASELINES_DIR", str(d))
    return d


def test_cli_prints_the_terminal_table_or_markdown(saved: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["before", "after"]) == 0
    assert capsys.readouterr().out == (GOLDEN / "baseline-table.txt").read_text()
    assert cli.main(["before", str(saved / "after.json"), "--markdown"]) == 0
    assert capsys.readouterr().out == (GOLDEN / "baseline-table.md").read_text()


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["before", "nope"], "kvmmm-compare: no baseline named 'nope' in {d} (saved: after, before, broken)\n"),
        (["before", "{d}/broken.json"], "kvmmm-compare: {d}/broken.json is not a pytest-kvmmm baseline"),
        (["before", "/nonexistent/x.json"], "kvmmm-compare: no baseline file /nonexistent/x.json\n"),
    ],
)
def test_cli_errors_are_one_line_and_exit_1(saved: Path, capsys: pytest.CaptureFixture[str], args: list[str], error: str) -> None:
    (saved / "broken.json").write_text("[]")
    assert cli.main([a.format(d=saved) for a in args]) == 1
    out = capsys.readouterr()
    assert out.out == "" and out.err.startswith(error.format(d=saved)) and out.err.count("\n") == 1


def test_cli_refuses_verdicts_for_another_machine_unless_forced(saved: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other = dataclasses.replace(AFTER, hosts={"vm": dataclasses.replace(AFTER.hosts["vm"], fingerprint=dataclasses.replace(VM, cpu_model="Intel Xeon"))})
    store.save(other, saved / "other.json")
    assert cli.main(["before", "other"]) == 0
    out = capsys.readouterr().out
    assert "WARNING: host vm differs (CPU model AMD EPYC -> Intel Xeon)" in out and "improved" not in out
    assert cli.main(["before", "other", "--force"]) == 0
    assert "improved" in capsys.readouterr().out


def test_cli_png_without_matplotlib_says_how_to_get_it(
    saved: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails as if it were not installed
    assert cli.main(["before", "after", "--png", str(tmp_path / "c.png")]) == 1
    assert capsys.readouterr().err == f"kvmmm-compare: {INSTALL_HINT}\n"
    with pytest.raises(PlotError):
        write_png(compare(BEFORE, AFTER), tmp_path / "c.png")


def test_cli_png_draws_a_chart(saved: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="the [plot] extra (matplotlib) is not installed")
    assert cli.main(["before", "after", "--png", str(tmp_path / "c.png")]) == 0
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- per-test thresholds -------------------------------------------------------------------------------


def test_thresholds_most_specific_first() -> None:
    from pytest_kvmmm.pytest.baseline import resolve_thresholds

    entry = {"*": 15.0, "KVM_ADJUST_MAPPINGS": 25.0}
    assert resolve_thresholds(10.0, {}, None) == (10.0, {})
    assert resolve_thresholds(10.0, entry, None) == (15.0, {"KVM_ADJUST_MAPPINGS": 25.0})
    assert resolve_thresholds(10.0, entry, (None, {"KVM_CREATE_MAPPINGS": 30.0})) == (
        15.0, {"KVM_ADJUST_MAPPINGS": 25.0, "KVM_CREATE_MAPPINGS": 30.0},
    )
    assert resolve_thresholds(10.0, entry, (40.0, {"KVM_CREATE_MAPPINGS": 30.0})) == (40.0, {"KVM_CREATE_MAPPINGS": 30.0})


def test_a_catalogue_entry_gives_thresholds_through_its_case() -> None:
    """``Entry.regression_pct`` reaches a catalogue test through its ``kvm_case`` parameter."""
    from types import SimpleNamespace

    from pytest_kvmmm.pytest.baseline import _entry_thresholds

    case = SimpleNamespace(entry=SimpleNamespace(regression_pct={"KVM_ADJUST_MAPPINGS": 25.0}))
    item = SimpleNamespace(callspec=SimpleNamespace(params={"kvm_case": case}))
    assert _entry_thresholds(item) == {"KVM_ADJUST_MAPPINGS": 25.0}  # type: ignore[arg-type]
    assert _entry_thresholds(SimpleNamespace()) == {}  # type: ignore[arg-type]
