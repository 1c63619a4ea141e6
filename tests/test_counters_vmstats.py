"""--kvm-counters vm: KVM's per-VM debugfs statistics, against a fake debugfs root: which VMs are
the run's, counts against levels, VMs that come and go, links and foreign files, and the notes
when sampling is not possible."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import pytest

from counter_fakes import X86_EVENTS, FakePerf, make_tracefs
from pytest_kvmmm.engine.counters import CounterSession, parse_selection, vmstats
from pytest_kvmmm.engine.counters.report import counters_header
from pytest_kvmmm.engine.counters.vmstats import VmSampler, find_kvm_dir, parent_of, wanted

ME = 4242
#: pid -> parent: 500 is our selftest (a child of ME), 600 another user's VM, 700 a grandchild.
PARENTS = {500: ME, 501: ME, 600: 1, 700: 500, 900: 800, 800: 1}


@pytest.fixture(autouse=True)
def _own_files(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fake debugfs is owned by whoever runs the tests, as the real one is by root."""
    monkeypatch.setattr(vmstats, "OWNER", os.getuid())


def make_debugfs(root: Path, *, mounted: bool = True, stats: Mapping[str, int] | None = None) -> Path:
    """A debugfs whose ``kvm/`` has the global files of ``stats`` (name -> mode): every stat of
    both arches' ``vm`` sets by default, counts writable (0644) and levels read-only, as KVM makes them."""
    kvm = root / "sys/kernel/debug/kvm"
    kvm.mkdir(parents=True)
    for d in (root / "sys/kernel/debug", kvm):
        d.chmod(0o755)
    if stats is None:
        every = {n for names in vmstats.SETS.values() for n in names} | {"pf_guest"}
        stats = {n: 0o444 if vmstats.is_level(n) else 0o644 for n in every}
    for name, mode in stats.items():
        (kvm / name).write_text("0\n")
        (kvm / name).chmod(mode)
    mounts = root / "proc/self/mounts"
    mounts.parent.mkdir(parents=True, exist_ok=True)
    old = mounts.read_text() if mounts.exists() else "sysfs /sys sysfs rw 0 0\n"
    mounts.write_text(old + ("debugfs /sys/kernel/debug debugfs rw,relatime 0 0\n" if mounted else ""))
    return kvm


def set_vm(kvm: Path, name: str, stats: Mapping[str, object]) -> None:
    d = kvm / name
    d.mkdir(exist_ok=True)
    d.chmod(0o755)
    for stat, value in stats.items():
        (d / stat).write_text(f"{value}\n")


def sampler(kvm: Path, *names: str) -> VmSampler:
    return VmSampler(kvm, tuple(f"vm:{n}" for n in names), me=ME, parent=PARENTS.get)


def test_only_the_runs_own_vms_are_read_and_counts_add_up_over_vms(tmp_path: Path) -> None:
    kvm = make_debugfs(tmp_path)
    set_vm(kvm, "500-11", {"remote_tlb_flush": 10, "remote_tlb_flush_requests": 30})
    set_vm(kvm, "600-11", {"remote_tlb_flush": 999})  # another user's VM
    set_vm(kvm, "700-5", {"remote_tlb_flush": 1})  # made by the selftest's child
    set_vm(kvm, "900-5", {"remote_tlb_flush": 7})  # not ours: too far from us, or not at all
    (kvm / "mmu_rmaps_stat").write_text("x\n")  # a global file, no VM directory
    s = sampler(kvm, "remote_tlb_flush", "remote_tlb_flush_requests")
    assert s.stage() == {"vm:remote_tlb_flush": 11, "vm:remote_tlb_flush_requests": 30}
    set_vm(kvm, "500-11", {"remote_tlb_flush": 15, "remote_tlb_flush_requests": 50})
    assert s.stage() == {"vm:remote_tlb_flush": 5, "vm:remote_tlb_flush_requests": 20}
    assert s.total() == {"vm:remote_tlb_flush": 16, "vm:remote_tlb_flush_requests": 50}


def test_a_vm_that_went_away_keeps_its_last_values_and_the_next_vm_adds_to_them(tmp_path: Path) -> None:
    kvm = make_debugfs(tmp_path)
    s = sampler(kvm, "pf_fixed", "pages_4k", "pages_2m")
    set_vm(kvm, "500-11", {"pf_fixed": 4096, "pages_4k": 4100, "pages_2m": 0})
    s.sample()  # the periodic thread's sample
    for entry in (kvm / "500-11").iterdir():
        entry.unlink()
    (kvm / "500-11").rmdir()  # the VM is destroyed; a new one (the next guest mode) comes
    set_vm(kvm, "500-12", {"pf_fixed": 100, "pages_4k": 36, "pages_2m": 31})
    stage = s.stage()
    # counts: both VMs' faults; levels: what lives now
    assert stage == {"vm:pf_fixed": 4196, "vm:pages_4k": 36, "vm:pages_2m": 31}
    assert s.total() == {"vm:pf_fixed": 4196, "vm:pages_4k": 4100, "vm:pages_2m": 31}  # levels: the highest


def test_a_new_vm_under_the_same_name_is_another_vm(tmp_path: Path) -> None:
    """kvm_page_table_test frees each guest mode's VM and creates the next: same pid, same fd."""
    kvm = make_debugfs(tmp_path)
    s = sampler(kvm, "exits")
    set_vm(kvm, "500-4", {"exits": 4200})
    assert s.stage() == {"vm:exits": 4200}
    for entry in (kvm / "500-4").iterdir():
        entry.unlink()
    (kvm / "500-4").rmdir()
    (kvm / "keep-the-inode-busy").mkdir()  # so the new directory cannot get the old one's inode
    set_vm(kvm, "500-4", {"exits": 10})
    assert s.stage() == {"vm:exits": 10}
    assert s.total() == {"vm:exits": 4210}


def test_a_vm_being_destroyed_keeps_what_was_read_before(tmp_path: Path) -> None:
    """Seen on the x86 lab host: the last periodic sample came while KVM destroyed the VM; its
    directory was still there but its files no longer opened, and the run's totals lost them."""
    kvm = make_debugfs(tmp_path)
    s = sampler(kvm, "exits", "pf_fixed", "pages_4k")
    set_vm(kvm, "500-4", {"exits": 8290, "pf_fixed": 8221, "pages_4k": 4125})
    s.sample()
    (kvm / "500-4" / "exits").unlink()
    (kvm / "500-4" / "pages_4k").unlink()
    s.sample()  # only pf_fixed still opens
    for entry in (kvm / "500-4").iterdir():
        entry.unlink()
    s.sample()  # nothing opens
    assert s.total() == {"vm:exits": 8290, "vm:pf_fixed": 8221, "vm:pages_4k": 4125}


def test_stats_the_kernel_lacks_are_left_out_not_zero(tmp_path: Path) -> None:
    kvm = make_debugfs(tmp_path)
    set_vm(kvm, "500-11", {"exits": 12})
    s = sampler(kvm, "exits", "pf_fast")
    assert s.stage() == {"vm:exits": 12} and s.total() == {"vm:exits": 12}


def test_links_and_what_is_not_a_number_are_never_read(tmp_path: Path) -> None:
    kvm = make_debugfs(tmp_path)
    secret = tmp_path / "secret"
    secret.write_text("1234\n")
    set_vm(kvm, "500-11", {"exits": "x" * 10_000})
    (kvm / "500-11" / "pf_fixed").symlink_to(secret)
    (kvm / "500-11" / "pf_taken").mkdir()
    (kvm / "501-3").symlink_to(kvm / "500-11")  # a VM directory that is a link
    s = sampler(kvm, "exits", "pf_fixed", "pf_taken")
    assert s.stage() == {} and s.total() == {}


def test_a_vm_directory_others_can_write_is_not_read(tmp_path: Path) -> None:
    kvm = make_debugfs(tmp_path)
    set_vm(kvm, "500-11", {"exits": 3})
    (kvm / "500-11").chmod(0o777)
    assert sampler(kvm, "exits").stage() == {}


def test_many_foreign_vms_are_bounded(tmp_path: Path) -> None:
    kvm = make_debugfs(tmp_path)
    for fd in range(40):
        set_vm(kvm, f"500-{fd}", {"exits": 1})
    assert sampler(kvm, "exits").stage() == {"vm:exits": vmstats.MAX_VMS}


def test_the_periodic_thread_catches_a_vm_between_stage_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vmstats, "SAMPLE_EVERY_S", 0.01)
    kvm = make_debugfs(tmp_path)
    s = sampler(kvm, "exits")
    s.start()
    try:
        set_vm(kvm, "500-11", {"exits": 77})
        for _ in range(500):
            if s.last:
                break
            os.sched_yield()
            import time

            time.sleep(0.01)
    finally:
        s.stop()
    assert s.total() == {"vm:exits": 77}


@pytest.mark.parametrize("euid, mounted, mkdir, words", [
    (1000, True, True, "debugfs is root's"),
    (0, False, True, "debugfs is not mounted (mount -t debugfs none /sys/kernel/debug)"),
    (0, True, False, "no /sys/kernel/debug/kvm (is KVM loaded?)"),
])
def test_why_sampling_is_not_possible_is_one_line(tmp_path: Path, euid: int, mounted: bool, mkdir: bool, words: str) -> None:
    kvm = make_debugfs(tmp_path, mounted=mounted, stats={})
    if not mkdir:
        kvm.rmdir()
    found, why = find_kvm_dir(tmp_path, euid=euid)
    assert found is None and words in why and why.startswith("per-VM stats off: ")


def test_a_kvm_directory_others_can_write_is_refused(tmp_path: Path) -> None:
    kvm = make_debugfs(tmp_path)
    kvm.chmod(0o777)
    assert "only root can write" in find_kvm_dir(tmp_path, euid=0)[1]


def test_the_vm_set_and_names_select_stats_and_the_rest_stays_tracepoints() -> None:
    names, rest = wanted(parse_selection("default,vm:pf_guest,vm,vm:pages_1g"), "x86_64")
    assert rest == ["default"] and "vm:remote_tlb_flush_requests" in names and names[0] == "vm:pf_guest" and names.count("vm:pages_1g") == 1
    assert "vm:hvc_exit_stat" in wanted(("vm",), "aarch64")[0]
    with pytest.raises(ValueError, match="per-VM statistic"):
        parse_selection("vm:../../etc")


def test_a_session_samples_vm_stats_without_tracefs_and_its_header_says_why_tracepoints_are_off(tmp_path: Path) -> None:
    make_debugfs(tmp_path)
    s = CounterSession.create(parse_selection("default,vm"), "x86_64", tmp_path, lambda: FakePerf(), euid=0)
    assert s.active and s.sampling and not s.counting
    header = counters_header(s)
    assert header.startswith("kvmmm: counters: 18 events (vm:remote_tlb_flush") and "tracefs is not mounted" in header


def test_a_session_without_debugfs_counts_tracepoints_and_notes_why_no_vm_stats(tmp_path: Path) -> None:
    root = make_tracefs(tmp_path, X86_EVENTS)
    s = CounterSession.create(parse_selection("kvm:kvm_exit,vm"), "x86_64", root, lambda: FakePerf(), euid=0)
    assert s.counting and not s.sampling and s.events == ("kvm:kvm_exit",)
    assert counters_header(s).endswith("per-VM stats off: debugfs is not mounted (mount -t debugfs none /sys/kernel/debug)")


def test_stage_lines_carry_tracepoint_counts_and_vm_stats_together(tmp_path: Path) -> None:
    root = make_tracefs(tmp_path, X86_EVENTS)
    kvm = make_debugfs(root)
    s = CounterSession.create(parse_selection("kvm:kvm_exit,vm:remote_tlb_flush"), "x86_64", root, lambda: FakePerf(), euid=0)
    run = s.start("kvm_page_table_test")
    assert run is not None and run._sampler is not None
    run._sampler.me, run._sampler.parent = ME, PARENTS.get
    flushes = iter((3, 5, 9))
    for line in ("KVM_CREATE_MAPPINGS: total execution time: 1.684691304s", "KVM_UPDATE_MAPPINGS: total execution time: 0.909214962s",
                 "KVM_ADJUST_MAPPINGS: total execution time: 0.807406598s"):
        set_vm(kvm, "500-11", {"remote_tlb_flush": next(flushes)})
        run.on_line(line)
    counts = run.finish()
    assert counts is not None
    assert [c["vm:remote_tlb_flush"] for c in counts.stages.values()] == [3, 2, 4]
    assert counts.total == {"kvm:kvm_exit": 412, "vm:remote_tlb_flush": 9}
    assert s.counters(counts).events == ("kvm:kvm_exit", "vm:remote_tlb_flush")


def test_under_lockdown_writable_stats_are_tried_once_and_left_out_with_a_note(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kvm = make_debugfs(tmp_path, stats={"remote_tlb_flush": 0o644, "pf_fixed": 0o644, "pages_4k": 0o444})
    tried: list[str] = []
    real_open = os.open

    def locked_down(path: object, flags: int, *args: object, **kw: object) -> int:
        tried.append(str(path))
        if str(path).endswith(("remote_tlb_flush", "pf_fixed")):
            raise PermissionError(1, "Operation not permitted")
        return real_open(path, flags, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(vmstats.os, "open", locked_down)
    found = vmstats.offered(kvm, ["vm:remote_tlb_flush", "vm:pages_4k", "vm:pf_fixed", "vm:pf_bogus"])
    assert found.names == ("vm:pages_4k",) and found.locked == ("vm:remote_tlb_flush", "vm:pf_fixed")
    assert found.missing == ("vm:pf_bogus",) and len(tried) == 1
    assert found.note() == (
        "per-VM stats not in this kernel: vm:pf_bogus; per-VM stats refused by the kernel's lockdown "
        "(debugfs files that can be written): remote_tlb_flush, pf_fixed"
    )


def test_a_session_whose_stats_are_all_refused_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_debugfs(tmp_path, stats={"remote_tlb_flush": 0o644})

    def refuse(*args: object, **kw: object) -> int:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(vmstats.os, "open", refuse)
    s = CounterSession.create(parse_selection("vm:remote_tlb_flush"), "x86_64", tmp_path, lambda: FakePerf(), euid=0)
    assert not s.active and counters_header(s).startswith("kvmmm: per-VM stats off: per-VM stats refused by the kernel's lockdown")


def test_parent_of_reads_proc_stat_with_a_command_that_holds_parentheses(tmp_path: Path) -> None:
    (tmp_path / "77").mkdir()
    (tmp_path / "77" / "stat").write_text("77 (a) b (c)) S 42 77 77 0 -1\n")
    assert parent_of(77, tmp_path) == 42
    assert parent_of(78, tmp_path) is None
    assert parent_of(os.getpid()) == os.getppid()


class RecordingChanges:
    """Host changes allowed: records what would be mounted (and mounts nothing)."""

    def __init__(self) -> None:
        self.mounted: list[tuple[str, str]] = []

    def mount(self, fstype: str, target: str) -> str | None:
        self.mounted.append((fstype, target))
        return "not really"


def test_vm_stats_alone_never_mount_tracefs_even_when_host_changes_are_allowed(tmp_path: Path) -> None:
    from pytest_kvmmm.engine.counters.setup import counter_session

    make_debugfs(tmp_path)
    (tmp_path / "sys/kernel/tracing").mkdir(parents=True)
    changes = RecordingChanges()
    s = counter_session(parse_selection("vm"), "x86_64", changes, tmp_path, lambda: FakePerf())  # type: ignore[arg-type]
    assert changes.mounted == [] and "tracefs" not in s.note
    counter_session(parse_selection("default"), "x86_64", changes, tmp_path, lambda: FakePerf())  # type: ignore[arg-type]
    assert changes.mounted == [("tracefs", "/sys/kernel/tracing")]
