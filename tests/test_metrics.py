"""Metric parsers and exit-0 output checks on real and synthetic selftest output.

``tests/golden/`` holds captures from the real 6.12 binaries on a PVM host (see
capture.py), ``*.lab-<host>`` captures on the lab's emulated hosts (page_idle, TDP, 1 GiB
guest pages: ``capture.py --lab``), and ``*.synthetic*`` samples built from the format
strings of versions or host features no host here runs (6.1, 6.16's lru_gen, a
dirty-ring-less KVM).
"""

from __future__ import annotations

import re

import pytest

from fakes import GOLDEN, golden
from pytest_kvmmm.engine.metrics import PARSERS, UNIT_SUFFIXES, metric_unit, parse_metrics
from pytest_kvmmm.engine.output_checks import OutputVerdict, check_output, output_notes
from pytest_kvmmm.engine.process import _Capture

CASES = sorted(p.name[: -len(".stdout")] for p in GOLDEN.glob("*.stdout"))


def raw(name: str) -> str:
    """A golden file as written: ``golden()`` reads text mode, which turns ``\\r`` into ``\\n``."""
    return (GOLDEN / name).read_bytes().decode()


def binary(case: str) -> str:
    return case.split(".")[0]


def metrics(case: str) -> dict[str, float]:
    return parse_metrics(binary(case), raw(f"{case}.stdout"))


# --- exact values, one sample per binary at least ------------------------------------------


def test_dirty_log_perf_manual_protect_exact() -> None:
    assert metrics("dirty_log_perf_test.manual_protect") == {
        "populate_memory": 0.805807975,
        "enable_dirty_logging": 0.000064165,
        "iteration_1/dirty_memory": 0.595908349,
        "iteration_1/get_dirty_log": 0.000005328,
        "iteration_1/clear_dirty_log": 0.000215290,
        "iteration_2/dirty_memory": 0.623917911,
        "iteration_2/get_dirty_log": 0.000006219,
        "iteration_2/clear_dirty_log": 0.000215951,
        "disable_dirty_logging": 0.000047661,
        "get_dirty_log_total": 0.000011547,
        "get_dirty_log_avg": 0.000005773,
        "clear_dirty_log_total": 0.000431241,
        "clear_dirty_log_avg": 0.000215620,
    }


def test_dirty_log_perf_without_manual_protect_has_no_clear_metrics() -> None:
    found = metrics("dirty_log_perf_test.no_manual_protect")
    assert not [name for name in found if "clear" in name]
    assert {f"iteration_{i}/{what}" for i in (1, 2, 3) for what in ("dirty_memory", "get_dirty_log")} <= set(found)
    assert found["get_dirty_log_total"] == 0.000642767


def test_demand_paging_6_12_tab_separated_exact() -> None:
    assert metrics("demand_paging_test.missing") == {
        "total_guest_execution": 0.740517944,
        "per_vcpu_demand_paging_rate_pgs_per_s": 22125.054677,
        "overall_demand_paging_rate_pgs_per_s": 44250.109353,
    }
    assert set(metrics("demand_paging_test.minor_shmem")) == set(metrics("demand_paging_test.missing"))


def test_demand_paging_6_1_space_separated_without_per_vcpu_rate() -> None:
    assert metrics("demand_paging_test.missing.synthetic-6.1") == {
        "total_guest_execution": 1.339244454,
        "overall_demand_paging_rate_pgs_per_s": 7460.082808,
    }


#: access_tracking_perf_test -b 16M -v 1 on lab-x86-idle (the lab's kernel built with
#: CONFIG_IDLE_PAGE_TRACKING, KVM with the TDP MMU, emulated by TCG): captured for real.
PAGE_IDLE_REAL = "access_tracking_perf_test.page_idle.lab-x86-idle"
PAGE_IDLE = {
    "populating_memory": 4.084928948,
    "writing_to_populated_memory": 0.069874221,
    "reading_from_populated_memory": 0.049492321,
    "mark_memory_idle": 4.522027785,
    "writing_to_idle_memory": 0.056990213,
    "mark_memory_idle_2": 4.074492473,
    "reading_from_idle_memory": 0.076890659,
}


def test_access_tracking_page_idle_6_12_exact() -> None:
    assert metrics(PAGE_IDLE_REAL) == PAGE_IDLE
    assert set(metrics("access_tracking_perf_test.page_idle_overlap.lab-x86-idle")) == set(PAGE_IDLE)


def test_access_tracking_page_idle_names_are_the_same_before_and_after_6_16() -> None:
    """6.16 prints its aging method ("Mark memory idle (page_idle)"): the same metric names."""
    assert metrics("access_tracking_perf_test.page_idle.synthetic-6.16") == {
        "populating_memory": 0.736512006,
        "writing_to_populated_memory": 0.061358233,
        "reading_from_populated_memory": 0.031207591,
        "mark_memory_idle": 2.364221447,
        "writing_to_idle_memory": 0.297104233,
        "mark_memory_idle_2": 2.198743350,
        "reading_from_idle_memory": 0.159926702,
    }


def test_access_tracking_lru_gen_6_16_exact() -> None:
    assert metrics("access_tracking_perf_test.lru_gen.synthetic-6.16") == {
        "populating_memory": 0.701234567,
        "re_populating_memory": 0.052345678,
        "writing_to_populated_memory": 0.050123456,
        "reading_from_populated_memory": 0.030123456,
        "mark_memory_idle_lru_gen": 0.210987654,
        "writing_to_idle_memory": 0.250123456,
        "mark_memory_idle_lru_gen_2": 0.198765432,
        "reading_from_idle_memory": 0.140123456,
    }


def test_max_guest_memory_two_spaces_and_carriage_return_progress() -> None:
    text = raw("max_guest_memory_test.pass.synthetic.stdout")
    assert "run2 =  0." in text and "\r" in text
    assert parse_metrics("max_guest_memory_test", text) == {
        "run1": 1.234567890,
        "reset": 0.012345678,
        "run2": 0.456789012,
    }


def test_max_guest_memory_real_pass_on_the_x86_tdp_lab_host() -> None:
    """Captured on lab-x86-tdp (capture.py --lab): 1 GiB, one vCPU, TDP MMU with 1 GiB guest pages."""
    text = raw("max_guest_memory_test.pass.lab-x86-tdp.stdout")
    assert "Running with 1gb of guest memory and 1 vCPUs" in text and "\r" in text
    assert metrics("max_guest_memory_test.pass.lab-x86-tdp") == {
        "run1": 209.284835880,
        "reset": 0.014939060,
        "run2": 1.081399710,
    }


def test_mmu_stress_test_adds_ro_and_rw() -> None:
    assert metrics("mmu_stress_test.pass.synthetic-6.16") == {
        "run1": 1.234567890,
        "reset": 0.012345678,
        "run2": 0.456789012,
        "ro": 0.098765432,
        "rw": 0.087654321,
    }
    assert PARSERS["mmu_stress_test"] is PARSERS["max_guest_memory_test"]


def test_max_guest_memory_real_guest_page_fault_has_no_metrics() -> None:
    # x86 maps guest memory with 1 GiB pages; KVM here lacks GBPAGES: #PF before run 1 ends.
    assert int(golden("max_guest_memory_test.no_gbpages.rc")) == 254
    assert metrics("max_guest_memory_test.no_gbpages") == {}


def test_memslot_perf_exact() -> None:
    assert metrics("memslot_perf_test.map_unmap") == {
        "map/run_1/slot_setup": 0.021116052,
        "map/run_1/guest_runtime": 1.040949924,
        "map/run_1/completed_iterations": 20,
        "map/run_1/iteration_avg": 0.052047496,
        "map/best_iteration_avg": 0.052047496,
        "map/best_completed_iterations": 20,
        "unmap/run_1/slot_setup": 0.020785727,
        "unmap/run_1/guest_runtime": 1.000712766,
        "unmap/run_1/completed_iterations": 17,
        "unmap/run_1/iteration_avg": 0.058865456,
        "unmap/best_iteration_avg": 0.058865456,
        "unmap/best_completed_iterations": 17,
    }


def test_memslot_perf_soft_failures_measure_nothing_or_little() -> None:
    assert metrics("memslot_perf_test.count_too_high") == {}
    assert metrics("memslot_perf_test.may_be_too_high.synthetic") == {}
    assert metrics("memslot_perf_test.no_full_loops") == {
        "map/run_1/slot_setup": 0.126239718,
        "map/run_1/guest_runtime": 0.000000220,
    }


def test_memslot_perf_several_runs_and_best_slot_setup() -> None:
    text = (
        "Testing RW performance with 2 runs, 1 seconds each\n"
        "Test took 0.100000000s for slot setup + 1.000000000s all iterations\n"
        "Done 4 iterations, avg 0.250000000s each\n"
        "Test took 0.200000000s for slot setup + 1.000000000s all iterations\n"
        "Done 5 iterations, avg 0.200000000s each\n"
        "Best runtime result was 0.200000000s per iteration (with 5 iterations)\n"
        "Best slot setup time for the whole test area was 0.100000000s\n"
    )
    found = parse_metrics("memslot_perf_test", text)
    assert found["rw/run_2/completed_iterations"] == 5
    assert found["rw/run_1/slot_setup"] == 0.1
    assert found["rw/best_iteration_avg"] == 0.2
    assert found["best_slot_setup"] == 0.1


def test_dirty_log_test_bitmap_mode_exact() -> None:
    assert metrics("dirty_log_test.dirty_log") == {
        "dirtied_pages": 4096,
        "dirty_bits_checked": 264195,
        "clear_bits_checked": 784393,
        "track_next_bits_checked": 262211,
    }


def test_dirty_log_test_ring_collections_per_iteration() -> None:
    found = metrics("dirty_log_test.dirty_ring_1024")
    assert [found[f"iteration_{i}/collected_pages"] for i in (1, 2, 3, 4)] == [898, 1024, 997, 754]
    assert found["track_next_bits_checked"] == 1024


def test_dirty_log_test_rework_format() -> None:
    found = metrics("dirty_log_test.dirty_log.synthetic-6.16")
    assert found["iteration_1/dirty_pages"] == 262147
    assert found["iteration_3/clean_pages"] == 257084
    assert found["iteration_2/writes"] == 5272
    assert found["dirty_bits_checked"] == 272322
    assert "track_next_bits_checked" not in found and "dirtied_pages" not in found


def test_dirty_ring_collections_of_one_iteration_add_up() -> None:
    text = "Iteration 3 collected 100 pages\nIteration 3 collected 24 pages\n"
    assert parse_metrics("dirty_log_test", text) == {"iteration_3/collected_pages": 124}


def test_page_table_test_unchanged() -> None:
    assert metrics("kvm_page_table_test.anonymous")["KVM_CREATE_MAPPINGS"] == 0.253970162


# --- sections ------------------------------------------------------------------------------


def test_dirty_log_test_all_log_modes_are_prefixed() -> None:
    # Real -M all run: dirty-log and clear-log passed, dirty-ring failed in iteration 3.
    found = metrics("dirty_log_test.all_ring_1024")
    assert found["dirty_log/dirty_bits_checked"] == 264193
    assert found["clear_log/track_next_bits_checked"] == 888
    assert found["dirty_ring/iteration_2/collected_pages"] == 1024
    assert not [name for name in found if not name.startswith(("dirty_log/", "clear_log/", "dirty_ring/"))]


def _two_modes(case: str) -> str:
    """The single x86 section twice, under two arm64 guest modes."""
    text = golden(f"{case}.stdout")
    body = text[text.index("Testing guest mode:"):].split("\n", 1)[1]
    return (
        "Random seed: 0x6b8b4567\n"
        + "Testing guest mode: PA-bits:40,  VA-bits:48,  4K pages\n" + body
        + "Testing guest mode: PA-bits:48,  VA-bits:48, 64K pages\n" + body
    )


@pytest.mark.parametrize(
    "case",
    [
        "dirty_log_perf_test.manual_protect",
        "demand_paging_test.missing",
        PAGE_IDLE_REAL,
        "dirty_log_test.dirty_log",
    ],
)
def test_guest_mode_sections_are_prefixed(case: str) -> None:
    single = metrics(case)
    found = parse_metrics(binary(case), _two_modes(case))
    assert found == {f"{mode}/{name}": v for mode in ("p40v48_4k", "p48v48_64k") for name, v in single.items()}


# --- conventions and robustness --------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_names_are_ascii_snake_case_and_announce_their_unit(case: str) -> None:
    for name, value in metrics(case).items():
        assert isinstance(value, float)
        if binary(case) == "kvm_page_table_test":
            assert re.fullmatch(r"KVM_[A-Z]+_MAPPINGS", name)
            continue
        assert re.fullmatch(r"[a-z0-9_]+(/[a-z0-9_]+)*", name), name
        unit = metric_unit(name)
        if unit == "s":
            # seconds, from 10-second runs; captures from emulated lab hosts (".lab-") take minutes
            assert 0 <= value < (3600 if ".lab-" in case else 60), name
        else:
            assert value == int(value) or unit == "pgs_per_s", name


@pytest.mark.parametrize(
    "name, unit",
    [
        ("populate_memory", "s"),
        ("iteration_1/dirty_memory", "s"),
        ("map/run_1/completed_iterations", "iterations"),
        ("overall_demand_paging_rate_pgs_per_s", "pgs_per_s"),
        ("dirty_ring/dirty_bits_checked", "bits_checked"),
        ("iteration_2/collected_pages", "pages"),
        ("iteration_2/writes", "writes"),
    ],
)
def test_metric_unit(name: str, unit: str) -> None:
    assert metric_unit(name) == unit
    assert unit == "s" or "_" + unit in UNIT_SUFFIXES


@pytest.mark.parametrize("case", [c for c in CASES if binary(c) in PARSERS])
def test_truncated_output_gives_a_subset_with_the_same_values(case: str) -> None:
    text = raw(f"{case}.stdout")
    full = parse_metrics(binary(case), text)
    for cut in range(0, len(text), 3):
        part = parse_metrics(binary(case), text[:cut])
        assert all(full.get(name) == value for name, value in part.items()), (cut, part)


GARBAGE = [
    "",
    "\x00\xff\ufffd" * 50,
    "Populate memory time: s\nIteration x dirty memory time: 1.0s\nPopulate memory time: 1.5s\n",
    "Overall demand paging rate:\tinf pgs/sec\nPer-vcpu demand paging rate:\t-nan pgs/sec/vcpu\n",
    "Overall demand paging rate:\t1.2.3 pgs/sec\nTotal guest execution time:\t1.2.3s\n",
    "run1 = 0.500000000s, reset = , run2 =  0.100000000s\nrun1 = 1e400s\n",
    "Testing  performance with x runs\nDone 3 iterations, avg 0.100000000s each\nTest took 1.0s for",
    "Mark memory idle (page_idle)  : 1.00000000x0s\n: 1.000000000s\nmark memory idle: 1.000000000s\n",
    "Testing Log Mode ''\nTesting Log Mode ''\nTotal bits checked: dirty (1), clear (",
    "Total bits checked: dirty (12), clear (34)",  # no newline: cut off, maybe mid-number
    "Iteration  1: dirty: 12 clean: \nDirtied pages\n",
    "Testing guest mode: PA-bits:??\nTesting guest mode: PA-bits:!!\nPopulate memory time: 1.500000000s\n",
]


@pytest.mark.parametrize("parser", sorted(PARSERS))
@pytest.mark.parametrize("text", GARBAGE)
def test_garbage_never_raises_and_never_invents_numbers(parser: str, text: str) -> None:
    found = parse_metrics(parser, text)
    assert all(isinstance(v, float) and v == v and abs(v) != float("inf") for v in found.values())
    assert set(found.values()) <= {1.5}  # the one well-formed line, in the last sample


def test_unknown_mode_strings_still_split() -> None:
    found = parse_metrics("dirty_log_perf_test", GARBAGE[-1])
    assert found == {"mode1/populate_memory": 1.5}


def test_lines_around_the_runners_drop_marker_are_left_out() -> None:
    text = raw("dirty_log_test.dirty_log.synthetic-6.16.stdout")
    cut = text.index("writes: 5272") + len("writes: 52")  # the head ends mid-number
    capture = _Capture(2 * cut)  # keeps the first and the last `cut` bytes
    capture.feed(text.encode() + b"x" * 3 * cut + b"\nIteration  9: dirty: 1 clean: 2 writes: 3\n")
    assert "\n[... pytest-kvmmm dropped" in capture.text()
    assert parse_metrics("dirty_log_test", capture.text()) == {
        "iteration_1/dirty_pages": 262147,
        "iteration_1/clean_pages": 0,
        "iteration_1/writes": 5271,
        "iteration_9/dirty_pages": 1,
        "iteration_9/clean_pages": 2,
        "iteration_9/writes": 3,
    }


def test_arch_directory_is_ignored() -> None:
    assert parse_metrics("x86_64/dirty_log_perf_test", golden("dirty_log_perf_test.manual_protect.stdout"))


# --- check_output / output_notes ------------------------------------------------------------


def verdict(case: str) -> OutputVerdict | None:
    return check_output(binary(case), golden(f"{case}.stdout"), golden(f"{case}.stderr"))


EXIT_0_VERDICTS = {
    "memslot_perf_test.count_too_high": OutputVerdict(
        "failed", "Memslot count too high for this test, decrease the cap (max is 8209)"
    ),
    "memslot_perf_test.no_full_loops": OutputVerdict(
        "failed", "No full loops done - too short test time or system too loaded?"
    ),
    "memslot_perf_test.may_be_too_high.synthetic": OutputVerdict(
        "failed", "Memslot count may be too high for this test, try adjusting the cap"
    ),
    "dirty_log_test.ring_unsupported.synthetic": OutputVerdict(
        "skipped", "Log mode 'dirty-ring' not supported, skipping test"
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_check_output_on_every_sample(case: str) -> None:
    assert verdict(case) == EXIT_0_VERDICTS.get(case)
    if case in EXIT_0_VERDICTS:
        assert int(golden(f"{case}.rc")) == 0  # the reason these checks exist


def test_partial_log_mode_skip_is_a_pass_with_a_note() -> None:
    case = "dirty_log_test.all_ring_unsupported.synthetic"
    assert verdict(case) is None
    assert output_notes(binary(case), golden(f"{case}.stdout"), "") == (
        "Log mode 'dirty-ring' not supported, skipping test",
    )


def test_every_log_mode_skipped_is_a_skip() -> None:
    text = "Testing Log Mode 'clear-log'\n" + "Log mode 'clear-log' not supported, skipping test\n" * 2
    text += "Testing Log Mode 'dirty-ring'\nLog mode 'dirty-ring' not supported, skipping test\n"
    assert check_output("dirty_log_test", text, "") == OutputVerdict(
        "skipped",
        "Log mode 'clear-log' not supported, skipping test; Log mode 'dirty-ring' not supported, skipping test",
    )


@pytest.mark.parametrize(
    "case, notes",
    [
        ("set_memory_region_test.two_loops", ("Skipping tests for KVM_MEM_GUEST_MEMFD memory regions",)),
        (PAGE_IDLE_REAL, ()),
        (
            "access_tracking_perf_test.lru_gen.synthetic-6.16",
            ("Skipping idle page count sanity check, because the test is run nested",),
        ),
        ("dirty_log_test.dirty_log", ()),
        ("dirty_log_test.ring_unsupported.synthetic", ()),  # the verdict says it already
        ("memslot_perf_test.map_unmap", ()),
    ],
)
def test_output_notes(case: str, notes: tuple[str, ...]) -> None:
    assert output_notes(binary(case), golden(f"{case}.stdout"), golden(f"{case}.stderr")) == notes


def test_output_notes_keep_access_trackings_idle_warning() -> None:
    """The warning 6.12 prints (instead of asserting) when too many pages stayed idle, as its
    format string has it, inserted where it comes in the real output of lab-x86-idle."""
    warning = "WARNING: vCPU1: Too many pages still idle (2650 out of 16384), this will affect performance results."
    out = golden(f"{PAGE_IDLE_REAL}.stdout").replace("Mark memory idle", f"{warning}\nMark memory idle", 1)
    assert output_notes("access_tracking_perf_test", out, "") == (warning,)
    assert parse_metrics("access_tracking_perf_test", out) == PAGE_IDLE


def test_output_notes_for_lines_without_a_newline() -> None:
    out = "Skipping testing with MANUAL_PROTECT as it is not supported"
    assert output_notes("x86_64/dirty_log_page_splitting_test", out, "") == (out,)
    assert output_notes("pre_fault_memory_test", "Skipping tests for vm_type 0x1\n", "") == (
        "Skipping tests for vm_type 0x1",
    )
