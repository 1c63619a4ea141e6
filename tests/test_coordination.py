"""coordination: the hugetlb ledger and the perf lock, across real processes."""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

import pytest

from pytest_kvmmm.coordination.ledger import HostCoordinator, NeverFits

MP = multiprocessing.get_context("fork")


def _hold_pages(run_dir: Path, pages: int, hold: float, log: Path, name: str) -> None:
    coord = HostCoordinator(run_dir, {2048: 0})  # the budget is fixed by the first process
    with coord.hugetlb({2048: pages}, name):
        start = time.time()
        time.sleep(hold)
        with log.open("a") as f:
            f.write(f"{name} {start} {time.time()}\n")


def _spans(log: Path) -> list[tuple[str, float, float]]:
    return [(n, float(a), float(b)) for n, a, b in (ln.split() for ln in log.read_text().splitlines())]


def _overlap(spans: list[tuple[str, float, float]]) -> bool:
    return any(a[1] < b[2] and b[1] < a[2] for i, a in enumerate(spans) for b in spans[i + 1:])


def test_pool_for_one_case_serializes_two(tmp_path: Path) -> None:
    HostCoordinator(tmp_path / "run", {2048: 32})
    log = tmp_path / "log"
    procs = [MP.Process(target=_hold_pages, args=(tmp_path / "run", 32, 0.4, log, f"p{i}")) for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(10)
    assert len(_spans(log)) == 2 and not _overlap(_spans(log))


def test_pool_for_two_cases_lets_them_share(tmp_path: Path) -> None:
    HostCoordinator(tmp_path / "run", {2048: 64})
    log = tmp_path / "log"
    procs = [MP.Process(target=_hold_pages, args=(tmp_path / "run", 32, 2.0, log, f"p{i}")) for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(10)
    assert _overlap(_spans(log)), "two 32-page cases fit a 64-page pool at once"


def test_request_larger_than_the_pool_is_refused_at_once(tmp_path: Path) -> None:
    coord = HostCoordinator(tmp_path, {2048: 600, 1048576: 0})
    t0 = time.monotonic()
    with pytest.raises(NeverFits, match="needs 1024 2 MiB hugepages, but this run's pool holds 600 usable ones"):
        with coord.hugetlb({2048: 1024}, "big"):
            pass
    with pytest.raises(NeverFits):
        with coord.hugetlb({1048576: 1}, "1g"):
            pass
    assert time.monotonic() - t0 < 0.5


def test_a_killed_holder_frees_its_pages(tmp_path: Path) -> None:
    coord = HostCoordinator(tmp_path, {2048: 32})
    holder = MP.Process(target=_hold_pages, args=(tmp_path, 32, 600, tmp_path / "log", "victim"))
    holder.start()
    time.sleep(0.5)
    holder.kill()
    holder.join()
    t0 = time.monotonic()
    with coord.hugetlb({2048: 32}, "next") as waited:
        pass
    assert waited < 1 and time.monotonic() - t0 < 1


def _use_host(run_dir: Path, exclusive: bool, hold: float, log: Path, name: str, partner: str = "") -> None:
    coord = HostCoordinator(run_dir, {})
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
        if name == "f2":
            while not (tmp_path / "f2.in").exists():  # both shared users hold the host before perf queues
                time.sleep(0.02)
        time.sleep(0.05)
    for p in procs:
        p.join(30)
    rows = {n: (float(a), float(b), m == "1") for n, a, b, m in (ln.split() for ln in log.read_text().splitlines())}
    assert rows["f1"][2] and rows["f2"][2], "shared users hold the host together"
    perf = rows.pop("perf")
    for name, (a, b, _) in rows.items():
        assert not (a < perf[1] and perf[0] < b), f"{name} overlapped the perf test"


def test_no_coordinator_state_leaks_between_runs(tmp_path: Path) -> None:
    HostCoordinator(tmp_path / "a", {2048: 1})
    assert HostCoordinator(tmp_path / "b", {2048: 7}).budget == {2048: 7}
    assert os.path.exists(tmp_path / "a" / "hugetlb-budget.json")
