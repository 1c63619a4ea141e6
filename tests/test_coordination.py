"""coordination and hostwide: the host-wide hugetlb ledger, presence and the perf lock, across real processes."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest

from fakes import make_host_root
from pytest_kvmmm.coordination.hostwide import (
    HostLedger,
    LedgerError,
    NeverFits,
    WaitedTooLong,
    ledger_dir,
    private_dir,
)
from pytest_kvmmm.coordination.ledger import HostCoordinator

MP = multiprocessing.get_context("fork")
NR = "sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"


def _root(tmp_path: Path, nr: int, free: int | None = None) -> Path:
    return make_host_root(tmp_path / "root", pools={2048: {"nr": nr, "free": nr if free is None else free}})


def _ledger(root: Path, session: str = "s1") -> HostLedger:
    return HostLedger(ledger_dir(root), root, session)


def _hold_pages(root: Path, pages: int, hold: float, log: Path, name: str, session: str = "s1") -> None:
    with _ledger(root, session).hugetlb({2048: pages}, name, wait_s=60):
        start = time.time()
        time.sleep(hold)
        with log.open("a") as f:
            f.write(f"{name} {start} {time.time()}\n")


def _wait_in_ledger(ledger: HostLedger, text: str) -> None:
    path, deadline = ledger.directory / "ledger.json", time.monotonic() + 10
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text():
            return
        time.sleep(0.05)
    raise AssertionError(f"{text!r} never appeared in the ledger")


def _spans(log: Path) -> list[tuple[str, float, float]]:
    return [(n, float(a), float(b)) for n, a, b in (ln.split() for ln in log.read_text().splitlines())]


def _overlap(spans: list[tuple[str, float, float]]) -> bool:
    return any(a[1] < b[2] and b[1] < a[2] for i, a in enumerate(spans) for b in spans[i + 1:])


@pytest.mark.parametrize("sessions", [("s1", "s1"), ("s1", "s2")], ids=["one run", "two sessions"])
def test_pool_for_one_case_serializes_two(tmp_path: Path, sessions: tuple[str, str]) -> None:
    root, log = _root(tmp_path, 32), tmp_path / "log"
    procs = [MP.Process(target=_hold_pages, args=(root, 32, 0.4, log, f"p{i}", s)) for i, s in enumerate(sessions)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(20)
    assert len(_spans(log)) == 2 and not _overlap(_spans(log))


def test_pool_for_two_cases_lets_them_share(tmp_path: Path) -> None:
    root, log = _root(tmp_path, 64), tmp_path / "log"
    procs = [MP.Process(target=_hold_pages, args=(root, 32, 2.0, log, f"p{i}", f"s{i}")) for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(20)
    assert _overlap(_spans(log)), "two 32-page cases fit a 64-page pool at once"


def test_request_larger_than_the_pool_is_refused_at_once(tmp_path: Path) -> None:
    root = make_host_root(tmp_path / "root", pools={2048: {"nr": 600, "free": 600}, 1048576: {"nr": 0, "free": 0}})
    ledger = _ledger(root)
    t0 = time.monotonic()
    with pytest.raises(NeverFits, match=r"needs 1024 2 MiB hugepages, the pool has 600 usable \(nr=600 free=600 resv=0\)"):
        with ledger.hugetlb({2048: 1024}, "big", wait_s=60):
            pass
    with pytest.raises(NeverFits):
        with ledger.hugetlb({1048576: 1}, "1g", wait_s=60):
            pass
    assert time.monotonic() - t0 < 0.5


def test_pages_in_use_by_others_are_not_granted(tmp_path: Path) -> None:
    """A user's own program holds 20 of 32 pages (free 12): 16 never fit, 12 do."""
    root = _root(tmp_path, 32, free=12)
    with pytest.raises(NeverFits, match="the pool has 12 usable"):
        with _ledger(root).hugetlb({2048: 16}, "x", wait_s=60):
            pass
    with _ledger(root).hugetlb({2048: 12}, "y", wait_s=60) as waited:
        assert waited < 0.5


def test_a_wait_is_bounded_and_names_the_holder(tmp_path: Path) -> None:
    root = _root(tmp_path, 32)
    holder = MP.Process(target=_hold_pages, args=(root, 32, 600, tmp_path / "log", "kvm_page_table_test[a]", "s2"))
    holder.start()
    try:
        ledger = _ledger(root)
        _wait_in_ledger(ledger, "kvm_page_table_test")
        t0 = time.monotonic()
        with pytest.raises(WaitedTooLong, match=rf"held by kvm_page_table_test\[a\] \(pid {holder.pid}\)"):
            with ledger.hugetlb({2048: 32}, "next", wait_s=1.0):
                pass
        assert 1.0 <= time.monotonic() - t0 < 3
    finally:
        holder.kill()
        holder.join()


def test_a_sigkilled_holder_frees_its_pages_while_still_a_zombie(tmp_path: Path) -> None:
    """xdist reaps a killed worker late: the zombie must not hold its grant."""
    root = _root(tmp_path, 32)
    ledger = _ledger(root)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            with _ledger(root).hugetlb({2048: 32}, "victim", wait_s=5):
                time.sleep(600)
        finally:
            os._exit(0)
    try:
        _wait_in_ledger(ledger, "victim")
        os.kill(pid, signal.SIGKILL)
        while Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
            time.sleep(0.01)
        with ledger.hugetlb({2048: 32}, "next", wait_s=2) as waited:
            assert waited < 1
        assert Path(f"/proc/{pid}").exists(), "still a zombie: not reaped while we took its pages"
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def test_restoring_keeps_pages_another_session_holds_and_pays_them_back_later(tmp_path: Path) -> None:
    """Session A added 32 pages (nr 8 -> 40) and ends while session B holds a 32-page grant
    it has not mapped yet: A's restore may take only 8 of its pages now; B's release pays the rest."""
    root = _root(tmp_path, 40)
    nr = root / NR
    b = _ledger(root, "B")
    with b.hugetlb({2048: 32}, "b", wait_s=5):
        with _ledger(root, "A").restoring() as target:
            assert target("/" + NR, 40, 8) == 32, "40 free, 32 granted: 8 can go now"
        nr.write_text("32\n")  # what HostChanges writes with that target
        assert nr.read_text().strip() == "32"
    assert nr.read_text().strip() == "8", "the debt is paid when the grant ends"


def test_restoring_alone_shrinks_below_pages_in_use(tmp_path: Path) -> None:
    """Pages in use are safe from a shrink (the kernel keeps them as surplus): no grant, no floor."""
    root = _root(tmp_path, 40, free=0)
    with _ledger(root, "A").restoring() as target:
        assert target("/" + NR, 40, 8) == 8


def _run_selftest(root: Path, session: str, hold: float, out: Path) -> None:
    with _ledger(root, session).selftest("t") as presence:
        time.sleep(hold)
    out.write_text(f"{presence.alone} {presence.others}")


def test_presence_tells_a_selftest_that_ran_alone(tmp_path: Path) -> None:
    root = _root(tmp_path, 0)
    alone = tmp_path / "alone"
    p = MP.Process(target=_run_selftest, args=(root, "s1", 0.1, alone))
    p.start()
    p.join(10)
    assert alone.read_text().startswith("True")
    # two sessions at once: neither was alone
    outs = [tmp_path / "a", tmp_path / "b"]
    procs = [MP.Process(target=_run_selftest, args=(root, s, 1.0, o)) for s, o in zip(("s1", "s2"), outs)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(10)
    for o in outs:
        assert o.read_text().startswith("False"), o.read_text()


def test_presence_after_the_other_session_died(tmp_path: Path) -> None:
    root = _root(tmp_path, 0)
    other = MP.Process(target=_run_selftest, args=(root, "s2", 600, tmp_path / "x"))
    other.start()
    deadline = time.monotonic() + 10
    while not (ledger_dir(root) / "ledger.json").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    other.kill()
    other.join()
    with _ledger(root, "s1").selftest("t") as presence:
        pass
    assert presence.alone, "a killed session is gone from the host"


def test_ledger_dir_refuses_links_foreign_owners_and_open_modes(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(LedgerError, match="is a symbolic link: no host-wide hugetlb ledger there"):
        private_dir(link)
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    with pytest.raises(LedgerError, match="writable by group or others"):
        private_dir(open_dir)
    made = tmp_path / "new"
    private_dir(made)
    assert made.stat().st_mode & 0o777 == 0o700
    if os.geteuid() == 0:
        foreign = tmp_path / "foreign"
        foreign.mkdir(mode=0o700)
        os.chown(foreign, 65534, 65534)
        with pytest.raises(LedgerError, match="is owned by .*uid 65534"):
            private_dir(foreign)


def _use_host(run_dir: Path, exclusive: bool, hold: float, log: Path, name: str, partner: str = "") -> None:
    coord = HostCoordinator(run_dir)
    with coord.host(exclusive):
        start = time.time()
        (run_dir / f"{name}.in").touch()
        met = False
        if partner:  # a shared user waits, holding the host, until its partner got in too
            deadline = time.monotonic() + 10
            while not (met := (run_dir / f"{partner}.in").exists()) and time.monotonic() < deadline:
                time.sleep(0.02)
        time.sleep(hold)
        with log.open("a") as f:
            f.write(f"{name} {start} {time.time()} {int(met)}\n")


def test_exclusive_runs_alone_shared_runs_together(tmp_path: Path) -> None:
    log = tmp_path / "log"
    plan = [("f1", False, "f2"), ("f2", False, "f1"), ("perf", True, ""), ("f3", False, "")]
    procs = []
    for name, exclusive, partner in plan:
        procs.append(MP.Process(target=_use_host, args=(tmp_path, exclusive, 0.3, log, name, partner)))
        procs[-1].start()
        if name == "f2":  # both shared users hold the host before perf queues (f1 may start last under load)
            while not ((tmp_path / "f1.in").exists() and (tmp_path / "f2.in").exists()):
                time.sleep(0.02)
        time.sleep(0.05)
    for p in procs:
        p.join(30)
    rows = {n: (float(a), float(b), m == "1") for n, a, b, m in (ln.split() for ln in log.read_text().splitlines())}
    assert rows["f1"][2] and rows["f2"][2], "shared users hold the host together"
    perf = rows.pop("perf")
    for name, (a, b, _) in rows.items():
        assert not (a < perf[1] and perf[0] < b), f"{name} overlapped the perf test"
