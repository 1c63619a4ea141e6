"""--kvm-counters' pure parts against a fake tracefs and a fake perf kernel: resolution of sets
and names, the perf_event_attr the kernel gets, stage deltas, the record and the tables."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

from counter_fakes import ARM64_EVENTS, X86_EVENTS, FakePerf, make_tracefs
from pytest_kvmmm.engine.counters import (
    Counters,
    CounterSession,
    RunCounts,
    guest_memory_bytes,
    parse_selection,
)
from pytest_kvmmm.engine.counters.model import combined, is_count, split_series
from pytest_kvmmm.engine.counters.perf import (
    ATTR_SIZE,
    INHERIT,
    PERF_FORMAT_GROUP,
    PERF_TYPE_TRACEPOINT,
    CounterSpec,
    CountingError,
    OpenCounters,
)
from pytest_kvmmm.engine.counters.report import (
    COUNTERS_OFF,
    count_tables,
    counters_header,
    off_lines,
)
from pytest_kvmmm.engine.counters.sets import resolve
from pytest_kvmmm.engine.counters.stages import StageTracker
from pytest_kvmmm.engine.counters.tracefs import EventIds, find_tracefs, read_ids


def session(root: Path, selection: str = "default", arch: str = "x86_64", perf: FakePerf | None = None) -> CounterSession:
    fake = perf or FakePerf()
    return CounterSession.create(parse_selection(selection), arch, root, lambda: fake)


# --- tracefs -----------------------------------------------------------------------------


def test_an_unmounted_tracefs_says_how_to_mount_it(tmp_path: Path) -> None:
    root = make_tracefs(tmp_path, X86_EVENTS, mounted=None)
    found = find_tracefs(root)
    assert found.path is None
    assert "mount -t tracefs nodev /sys/kernel/tracing" in found.problem and "--kvm-allow-host-changes" in found.problem
    s = session(root)
    assert not s.active and counters_header(s).startswith("kvmmm: counters off: tracefs is not mounted")


def test_the_debugfs_location_is_found_when_only_it_is_mounted(tmp_path: Path) -> None:
    root = make_tracefs(tmp_path, X86_EVENTS, mounted="/sys/kernel/debug/tracing")
    assert find_tracefs(root).path == "/sys/kernel/debug/tracing"


def test_an_id_file_that_is_not_a_number_is_no_event(tmp_path: Path) -> None:
    root = make_tracefs(tmp_path, X86_EVENTS)
    events = root / "sys/kernel/tracing/events"
    (events / "kvm/kvm_exit/id").write_text("garbage\n")
    (events / "kvm/kvm_entry").mkdir()  # no id file at all
    ids = read_ids(events, ["kvm"])
    assert "kvm:kvm_exit" not in ids.ids and "kvm:kvm_entry" not in ids.ids
    assert ids.ids["kvm:kvm_page_fault"] == 101


# --- selection and resolution ---------------------------------------------------------------


@pytest.mark.parametrize("bad, why", [
    ("bogus", "unknown counter set 'bogus'"),
    ("kvm:", "not a tracepoint name"),
    ("kvm:kvm_exit[translation]", "only kvm:kvm_guest_fault has classes"),
    (",", "empty"),
])
def test_a_bad_selection_says_what_is_wrong(bad: str, why: str) -> None:
    with pytest.raises(ValueError, match=why.replace("[", r"\[")):
        parse_selection(bad)


def test_sets_expand_to_what_the_host_offers_and_explicit_names_it_lacks_are_reported(tmp_path: Path) -> None:
    root = make_tracefs(tmp_path, X86_EVENTS)
    ids = read_ids(root / "sys/kernel/tracing/events", ["kvm", "kvmmmu", "tlb"])
    got = resolve(parse_selection("mmu,tlb,kvm:kvm_nonexistent"), "x86_64", ids)
    assert list(got.counters) == [
        "kvm:kvm_page_fault", "kvmmmu:kvm_mmu_pagetable_walk", "kvmmmu:kvm_mmu_paging_element",
        "kvmmmu:kvm_mmu_prepare_zap_page", "tlb:tlb_flush",
    ]  # kvmmmu:* in name order, no duplicate of kvm_mmu_prepare_zap_page from tlb
    assert got.missing == ("kvm:kvm_nonexistent",)
    assert got.counters["tlb:tlb_flush"] == 200


def test_the_arm64_default_counts_guest_faults_by_class_with_an_esr_filter(tmp_path: Path) -> None:
    perf = FakePerf()
    s = session(make_tracefs(tmp_path, ARM64_EVENTS), arch="aarch64", perf=perf)
    assert s.specs["kvm:kvm_guest_fault"] == CounterSpec(301)
    assert s.specs["kvm:kvm_guest_fault[translation]"] == CounterSpec(301, "(hsr & 0x4) && !(hsr & 0x38)")
    assert s.specs["kvm:kvm_guest_fault[permission]"].filter == "(hsr & 0x4) && (hsr & 0x8) && !(hsr & 0x30)"
    assert s.specs["kvm:kvm_guest_fault[access_flag]"].filter == "(hsr & 0x8) && !(hsr & 0x34)"
    assert "(hsr & 0x4) && !(hsr & 0x38)" in perf.filters.values()  # the probe open set them


def test_nothing_the_selection_names_is_offered(tmp_path: Path) -> None:
    s = session(make_tracefs(tmp_path, {"sched:sched_switch": 1}), "kvm:kvm_exit")
    assert not s.active and "none of kvm:kvm_exit is offered" in s.note


# --- the perf layer ---------------------------------------------------------------------------


def test_the_kernel_gets_an_inherited_counting_tracepoint_event() -> None:
    perf = FakePerf()
    counters = OpenCounters({"kvm:kvm_exit": CounterSpec(103), "kvm:kvm_pio": CounterSpec(110)}, perf)
    exit_fd, pio_fd = counters.fds["kvm:kvm_exit"], counters.fds["kvm:kvm_pio"]
    type_, size, config, period, sample_type, read_format, flags, *_ = perf.opened[exit_fd]
    assert (type_, size, config, period, sample_type) == (PERF_TYPE_TRACEPOINT, ATTR_SIZE, 103, 0, 0)
    assert read_format == PERF_FORMAT_GROUP and flags == INHERIT  # enabled from the start, kernel events kept
    assert ATTR_SIZE == 64  # PERF_ATTR_SIZE_VER0
    assert perf.groups == {exit_fd: exit_fd, pio_fd: exit_fd}  # one group, led by the first
    assert counters.read() == {"kvm:kvm_exit": 103, "kvm:kvm_pio": 110}  # one read of the leader


@pytest.mark.parametrize("err, words", [
    (errno.EACCES, ["perf_event_paranoid", "run as root"]),
    (errno.ENOENT, ["module was reloaded"]),
    (errno.EMFILE, ["ulimit -n"]),
])
def test_a_refused_open_closes_what_was_opened_and_says_why(err: int, words: list[str]) -> None:
    perf = FakePerf(refuse=err, refuse_after=1)
    with pytest.raises(CountingError) as exc:
        OpenCounters({"kvm:kvm_exit": CounterSpec(103), "kvm:kvm_entry": CounterSpec(102)}, perf)
    assert all(w in str(exc.value) for w in words) and "\n" not in str(exc.value)
    assert not perf.open_fds


def test_a_refusal_at_session_start_turns_counting_off_with_a_note(tmp_path: Path) -> None:
    s = session(make_tracefs(tmp_path, X86_EVENTS), perf=FakePerf(refuse=errno.EACCES))
    assert not s.active and s.start("kvm_page_table_test") is None
    assert "counters off: perf_event_open refused" in counters_header(s)


def test_a_filter_the_kernel_refuses_turns_counting_off(tmp_path: Path) -> None:
    s = session(make_tracefs(tmp_path, ARM64_EVENTS), arch="aarch64", perf=FakePerf(bad_filter=True))
    assert not s.active and "refused the filter of kvm:kvm_guest_fault[" in s.note


# --- one run: stages -----------------------------------------------------------------------------

PAGE_TABLE_LINES = [
    "Random seed: 0x6b8b4567",
    "Testing guest mode: PA-bits:ANY, VA-bits:48,  4K pages",
    "Started all vCPUs successfully",
    "KVM_CREATE_MAPPINGS: total execution time: 1.684691304s",
    "",
    "KVM_UPDATE_MAPPINGS: total execution time: 0.909214962s",
    "KVM_ADJUST_MAPPINGS: total execution time: 0.807406598s",
]


def test_each_stage_gets_the_counts_since_the_previous_stage_line(tmp_path: Path) -> None:
    perf = FakePerf()
    s = session(make_tracefs(tmp_path, X86_EVENTS), "kvm:kvm_exit", perf=perf)
    run = s.start("kvm_page_table_test")
    assert run is not None
    for line in PAGE_TABLE_LINES:
        run.on_line(line)
    counts = run.finish()
    assert counts is not None and not perf.open_fds
    # the fake counts 103 per read: three stage reads, then the final one
    assert counts.stages == {
        "KVM_CREATE_MAPPINGS": {"kvm:kvm_exit": 103},
        "KVM_UPDATE_MAPPINGS": {"kvm:kvm_exit": 103},
        "KVM_ADJUST_MAPPINGS": {"kvm:kvm_exit": 103},
    }
    assert counts.total == {"kvm:kvm_exit": 412}


def test_several_guest_modes_prefix_stages_as_metrics_are() -> None:
    tracker = StageTracker("kvm_page_table_test")
    marks = [tracker.stage_of(line) for line in [
        "Testing guest mode: PA-bits:40, VA-bits:48,  4K pages",
        "KVM_CREATE_MAPPINGS: total execution time: 1.000000000s",
        "Testing guest mode: PA-bits:48, VA-bits:48, 64K pages",
        "KVM_CREATE_MAPPINGS: total execution time: 1.000000000s",
    ]]
    stages = [m for m in marks if m is not None]
    assert [tracker.name(*m) for m in stages] == ["p40v48_4k/KVM_CREATE_MAPPINGS", "p48v48_64k/KVM_CREATE_MAPPINGS"]


def test_dirty_log_perf_iterations_are_stages_and_summaries_are_not() -> None:
    tracker = StageTracker("dirty_log_perf_test")
    names = [m[1] for line in [
        "Populate memory time: 0.393546129s",
        "Iteration 1 dirty memory time: 0.012345678s",
        "Iteration 1 get dirty log time: 0.000012345s",
        "Get dirty log over 2 iterations took 0.000024690s. (Avg 0.000012345s/iteration)",
    ] if (m := tracker.stage_of(line)) is not None]
    assert names == ["populate_memory", "iteration_1/dirty_memory", "iteration_1/get_dirty_log"]


def test_a_binary_without_stage_lines_has_totals_only() -> None:
    assert StageTracker("demand_paging_test").stage_of("Total guest execution time:\t0.100000000s") is None


@pytest.mark.parametrize("binary, argv, expected", [
    ("kvm_page_table_test", ["-s", "anonymous", "-b", "64M", "-v", "2"], 64 << 20),
    ("dirty_log_perf_test", ["-b", "32M", "-v", "2"], 64 << 20),
    ("dirty_log_perf_test", ["-b1G"], 1 << 30),
    ("kvm_page_table_test", [], 1 << 30),
    ("kvm_page_table_test", ["-b", "lots"], None),
    ("memslot_perf_test", ["-b", "1G"], None),
])
def test_guest_memory_of_a_run(binary: str, argv: list[str], expected: int | None) -> None:
    assert guest_memory_bytes(binary, argv) == expected


# --- the record -------------------------------------------------------------------------------


def counters(*walks: int) -> Counters:
    runs = tuple(
        RunCounts(
            {"kvm:kvm_page_fault": 0, "kvmmmu:kvm_mmu_pagetable_walk": w},
            {"KVM_CREATE_MAPPINGS": {"kvm:kvm_page_fault": 0, "kvmmmu:kvm_mmu_pagetable_walk": w // 2}},
        )
        for w in walks
    )
    return Counters(("kvm:kvm_page_fault", "kvmmmu:kvm_mmu_pagetable_walk"), runs)


def test_series_keep_runs_in_order_for_pairing_by_round() -> None:
    c = counters(1000, 1200, 1100)
    assert c.series()["kvmmmu:kvm_mmu_pagetable_walk"] == (1000, 1200, 1100)
    assert c.series()["KVM_CREATE_MAPPINGS/kvmmmu:kvm_mmu_pagetable_walk"] == (500, 600, 550)
    assert is_count("KVM_CREATE_MAPPINGS/kvm:kvm_exit") and not is_count("iteration_1/dirty_memory")
    assert split_series("iteration_1/dirty_memory/kvm:kvm_exit") == ("iteration_1/dirty_memory", "kvm:kvm_exit")


def test_time_per_fault_uses_the_fault_event_that_counted() -> None:
    data = counters(1000).to_json({"KVM_CREATE_MAPPINGS": 0.001}, 64 << 20)
    assert data["derived"] == {
        "faults_per_gib": 16000.0,  # 1000 walks over 1/16 GiB
        "KVM_CREATE_MAPPINGS/ns_per_fault": 2000.0,  # 1 ms over 500 walks
        "KVM_CREATE_MAPPINGS/faults_per_gib": 8000.0,
    }  # kvm_page_fault counted nothing: PVM's walks stand for the faults
    assert Counters.from_json(data) == counters(1000)


def test_repeats_combine_run_by_run() -> None:
    both = combined([counters(1000), None, counters(1200)])
    assert both is not None and both.series()["kvmmmu:kvm_mmu_pagetable_walk"] == (1000, 1200)
    assert both.to_json()["total"]["kvmmmu:kvm_mmu_pagetable_walk"] == 1100


def test_the_terminal_table_shows_stages_and_events_that_counted() -> None:
    rec = {"nodeid": "t.py::test_kvm_page_table[anonymous]", "binary": "kvm_page_table_test", "host": "vm",
           "counters": counters(1000).to_json({"KVM_CREATE_MAPPINGS": 0.001})}
    lines = count_tables([rec])
    assert lines[1].split() == ["kvm_page_table_test", "counts", "kvm_mmu_pagetable_walk", "ns/fault"]
    assert lines[2].split() == ["[anonymous]", "total", "1,000", "-"]
    assert lines[3].split() == ["[anonymous]", "KVM_CREATE_MAPPINGS", "500", "2,000"]
    assert "kvm_page_fault" not in "\n".join(lines)  # counted nothing anywhere


def test_stage_order_survives_the_results_file_sorting_keys() -> None:
    runs = (RunCounts({"kvm:kvm_exit": 9}, {"UPDATE": {"kvm:kvm_exit": 1}, "ADJUST": {"kvm:kvm_exit": 2}}),)
    data = json.loads(json.dumps(Counters(("kvm:kvm_exit",), runs).to_json(), sort_keys=True))
    assert list(data["stages"]) == ["ADJUST", "UPDATE"]  # as --kvm-results writes it
    assert list(Counters.from_json(data).runs[0].stages) == ["UPDATE", "ADJUST"]
    lines = count_tables([{"nodeid": "t::x", "binary": "b", "counters": data}])
    assert [line.split()[1] for line in lines[2:]] == ["total", "UPDATE", "ADJUST"]


def test_a_host_that_counted_nothing_says_why_once_unless_its_header_did() -> None:
    recs = [{"host": "vm", COUNTERS_OFF: "counters off: tracefs is not mounted"},
            {"host": "lab", COUNTERS_OFF: "counters off: perf_event_open refused"},
            {"host": "lab", COUNTERS_OFF: "counters off: perf_event_open refused"}, {"host": "lab2"}]
    assert off_lines(recs, "vm") == ["kvmmm: lab: counters off: perf_event_open refused"]


def run_page_table(tmp_path: Path, fail_reads: int) -> tuple[RunCounts | None, str]:
    perf = FakePerf()
    s = session(make_tracefs(tmp_path, X86_EVENTS), "kvm:kvm_exit", perf=perf)
    run = s.start("kvm_page_table_test")
    assert run is not None
    perf.fail_reads = fail_reads
    for line in PAGE_TABLE_LINES:
        run.on_line(line)
    return run.finish(), run.note


def test_a_read_that_fails_for_a_moment_is_retried(tmp_path: Path) -> None:
    counts, note = run_page_table(tmp_path, fail_reads=3)
    assert counts is not None and list(counts.stages) == ["KVM_CREATE_MAPPINGS", "KVM_UPDATE_MAPPINGS", "KVM_ADJUST_MAPPINGS"]
    assert note == ""


def test_a_stage_that_cannot_be_read_is_left_out_with_the_next_not_the_run(tmp_path: Path) -> None:
    counts, note = run_page_table(tmp_path, fail_reads=5)
    assert counts is not None and counts.stages == {"KVM_ADJUST_MAPPINGS": {"kvm:kvm_exit": 103}}
    assert counts.total == {"kvm:kvm_exit": 309}  # exact: read after the exit
    assert note == "no counts for stage(s) KVM_CREATE_MAPPINGS, KVM_UPDATE_MAPPINGS: reading the perf counters failed: No child processes"


def test_the_x86_default_leaves_out_what_fires_per_guest_pte() -> None:
    ids = EventIds(X86_EVENTS)
    got = resolve(parse_selection("default"), "x86_64", ids)
    assert "kvmmmu:kvm_mmu_pagetable_walk" not in got.counters and "kvm:kvm_page_fault" in got.counters
    assert "kvmmmu:kvm_mmu_pagetable_walk" in resolve(parse_selection("faults"), "x86_64", ids).counters
    assert "kvmmmu:kvm_mmu_paging_element" not in got.counters and "kvm:kvm_emulate_insn" not in got.counters
    assert "kvmmmu:kvm_mmu_paging_element" in resolve(parse_selection("mmu"), "x86_64", ids).counters


def test_the_last_read_after_the_exit_is_retried_while_the_kernel_answers_echild(tmp_path: Path) -> None:
    """Seen on the TCG lab host: the read after the selftest exited failed with ECHILD (an exiting
    thread's inherited group torn down apart from its parent's) and the run lost all its counts."""
    perf = FakePerf()
    s = session(make_tracefs(tmp_path, X86_EVENTS), "kvm:kvm_exit", perf=perf)
    run = s.start("kvm_page_table_test")
    assert run is not None
    for line in PAGE_TABLE_LINES:
        run.on_line(line)
    perf.fail_reads = 4
    counts = run.finish()
    assert counts is not None and counts.total == {"kvm:kvm_exit": 412} and run.error is None
    run = s.start("kvm_page_table_test")
    assert run is not None
    perf.fail_reads = 1000
    assert run.finish() is None and run.error == "reading the perf counters failed: No child processes"
    assert not perf.open_fds
