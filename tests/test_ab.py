"""kvmmm-ab: paired verdicts, the cover-letter table, the rounds, and the module swap.

The swap runs against a fake ``/sys/module`` and fake ``insmod``/``rmmod`` programs that load
"modules" (small ELF files with real GNU build ids) into it, so every path of a swap, a failed
load and a restore after a crash is exercised without touching this host's KVM.
"""

from __future__ import annotations

import json
import lzma
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pytest_kvmmm.ab import cli, modules, paired, rounds, table
from pytest_kvmmm.ab.modules import ModuleSwap, SwapError
from pytest_kvmmm.ab.paired import RoundRecords
from pytest_kvmmm.provision import kvm_modules
from pytest_kvmmm.provision.source import ProvisionError

NODE = "pytest_kvmmm/suite/test_mm.py::test_kvm_page_table[anonymous]"


def record(value: float, *, nodeid: str = NODE, status: str = "passed", counters: dict | None = None, argv: list | None = None) -> dict:
    rec = {"host": "vm", "nodeid": nodeid, "binary": "kvm_page_table_test", "status": status,
           "argv": argv or ["kvm_page_table_test", "-s", "anonymous", "-v", "2"],
           "samples": {"KVM_CREATE_MAPPINGS": [value, value * 1.01, value * 0.99]}, "host_facts": {"arch": "x86_64", "tdp_mmu": "yes"}}  # fmt: skip
    if counters is not None:
        rec["counters"] = counters
    return rec


def runs_of(before: list[float], after: list[float], **kw: object) -> list[RoundRecords]:
    out = []
    for r, (b, a) in enumerate(zip(before, after), start=1):
        out += [RoundRecords(r, "before", [record(b, **kw)]), RoundRecords(r, "after", [record(a, **kw)])]  # type: ignore[arg-type]
    return out


# -- paired verdicts -------------------------------------------------------------------------------


def test_a_drifting_host_gives_no_verdict_when_both_sides_drift_alike() -> None:
    # The host's speed moves 2x between rounds; both sides move with it: no change.
    before = [0.40, 0.80, 0.42, 0.85, 0.41, 0.79]
    after = [0.41, 0.79, 0.43, 0.84, 0.41, 0.80]
    [c] = paired.paired_changes(runs_of(before, after))
    assert c.verdict == paired.NO_CHANGE and c.metric == "KVM_CREATE_MAPPINGS"


def test_a_slower_after_in_every_round_is_regressed_despite_the_drift() -> None:
    before = [0.40, 0.80, 0.42, 0.85, 0.41, 0.82]
    after = [0.52, 1.00, 0.55, 1.10, 0.50, 1.01]
    [c] = paired.paired_changes(runs_of(before, after))
    assert c.verdict == paired.REGRESSED and c.change < -20 and all(r < 0 for r in c.rounds)
    # Pooled, the two sides overlap completely: only pairing sees the change.
    assert c.after.low < c.before.high


def test_one_round_against_the_others_is_no_verdict_and_five_rounds_are_too_few_for_times() -> None:
    [mixed] = paired.paired_changes(runs_of([0.4] * 6, [0.5, 0.5, 0.3, 0.5, 0.5, 0.5]))
    assert mixed.verdict == paired.NO_CHANGE
    # The CI lab's no-op build: five rounds of one sign (odds 1 in 16 by chance) are no evidence
    no_op = paired.paired_changes(runs_of([0.32, 0.30, 0.355, 0.33, 0.31], [0.37, 0.35, 0.50, 0.345, 0.36]))
    assert [c.verdict for c in no_op] == [paired.TOO_FEW]
    [six] = paired.paired_changes(runs_of([0.32, 0.30, 0.355, 0.33, 0.31, 0.3], [0.37, 0.35, 0.50, 0.345, 0.36, 0.4]))
    assert six.verdict == paired.REGRESSED


def test_small_consistent_time_changes_are_below_the_effect_threshold() -> None:
    [c] = paired.paired_changes(runs_of([1.0] * 6, [1.02] * 6))
    assert c.verdict == paired.NO_CHANGE


def counts(total: int, stage: int | None = None) -> dict:
    """A record's ``counters`` as ``--kvm-counters`` writes them (three runs of the binary)."""
    stages = {} if stage is None else {"KVM_CREATE_MAPPINGS": {"kvm:kvm_page_fault": stage}}
    run = {"total": {"kvm:kvm_page_fault": total}, "stages": stages}
    return {"events": ["kvm:kvm_page_fault"], "fault_event": "kvm:kvm_page_fault", "runs": [run, run, run]}


def test_counts_get_their_own_rule_more_or_fewer_events() -> None:
    same = runs_of([1.0] * 4, [1.0] * 4, counters=counts(4096))
    by_kind = {c.kind: c for c in paired.paired_changes(same)}
    assert by_kind["count"].verdict == paired.NO_CHANGE and by_kind["count"].metric == "kvm:kvm_page_fault"
    runs = []
    for r, n in enumerate([4096, 4100, 4090], start=1):
        runs += [RoundRecords(r, "before", [record(1.0, counters=counts(n, n))]),
                 RoundRecords(r, "after", [record(1.0, counters=counts(n // 2, n // 2))])]  # fmt: skip
    got = {c.metric: c for c in paired.paired_changes(runs) if c.kind == "count"}
    assert got["kvm:kvm_page_fault"].verdict == paired.FEWER
    assert got["KVM_CREATE_MAPPINGS/kvm:kvm_page_fault"].verdict == paired.FEWER


def test_failed_runs_contribute_nothing() -> None:
    runs = runs_of([0.4] * 3, [0.8] * 3, status="failed")
    assert paired.paired_changes(runs) == []


# -- the table -------------------------------------------------------------------------------------


def test_lines_shape_names_builds_command_and_deciding_facts() -> None:
    runs = runs_of([0.40, 0.80, 0.42, 0.41, 0.79, 0.43], [0.52, 1.00, 0.55, 0.53, 0.99, 0.56])
    report = cli.report_for(runs, {"before": "stock", "after": "Linux 6.12.117 + slow.patch (3f2a9c1e)"}, 6, ["-m", "pagetable"])
    text = table.terminal(report)
    assert "after: Linux 6.12.117 + slow.patch (3f2a9c1e)" in text
    assert "command: pytest -m pagetable" in text and "$ kvm_page_table_test -s anonymous -v 2" in text
    assert "host vm: arch x86_64, tdp_mmu yes" in text
    assert "KVM_CREATE_MAPPINGS: before 0.4" in text and "regressed" in text
    md = table.markdown(report)
    assert "| kvm_page_table_test [anonymous] on vm | KVM_CREATE_MAPPINGS |" in md
    doc = table.to_json(report)
    assert json.loads(json.dumps(doc))["changes"][0]["verdict"] == "regressed"


def test_a_vcpu_sweep_is_one_table_with_a_row_per_vcpu_count() -> None:
    runs = []
    for r in range(1, 7):
        for side, scale in (("before", 1.0), ("after", 1.3)):
            recs = [record(0.1 * v * scale, nodeid=f"{NODE[:-1]}-v{v}]", argv=["kvm_page_table_test", "-v", str(v)]) for v in (1, 2, 4)]
            runs.append(RoundRecords(r, side, recs))
    report = cli.report_for(runs, {"before": "a", "after": "b"}, 6, [])
    text = table.terminal(report)
    assert "kvm_page_table_test: KVM_CREATE_MAPPINGS" in text
    rows = [ln.split() for ln in text.splitlines() if ln.startswith("  ") and ln.split()[0].isdigit()]
    assert [r[0] for r in rows] == ["1", "2", "4"] and all("regressed" in r for r in rows)
    assert "| vcpus | before | after | change | rounds | verdict |" in table.markdown(report)


def test_case_params_prefer_the_record_fields_over_the_command_line() -> None:
    assert table.case_params({"argv": ["x", "-v", "4", "-m", "3"], "vcpus": 8}) == {"vcpus": "8", "guest_mode": "3"}


# -- rounds ----------------------------------------------------------------------------------------


def test_rounds_alternate_their_order() -> None:
    assert rounds.schedule(3) == [(1, "before"), (1, "after"), (2, "after"), (2, "before"), (3, "before"), (3, "after")]


def test_run_rounds_reads_each_sides_results_and_stops_on_a_broken_round(tmp_path: Path) -> None:
    seen: list[str] = []

    def runner(args: list[str], log: Path, cwd: Path | None) -> int:
        results = Path(next(a for a in args if a.startswith("--kvm-results=")).split("=", 1)[1])
        seen.append(results.stem)
        results.write_text(json.dumps(record(0.5)) + "\nnot json\n")
        log.write_text("ok\n")
        return 1

    sides = {s: rounds.Side(s, s) for s in rounds.SIDES}
    got = rounds.run_rounds(sides, 2, ["-m", "pagetable"], tmp_path, None, runner=runner)
    assert seen == ["round1-before", "round1-after", "round2-after", "round2-before"]
    assert all(len(r.records) == 1 for r in got)

    def broken(args: list[str], log: Path, cwd: Path | None) -> int:
        log.write_text("ERROR: usage: unrecognized arguments: --bogus\n")
        return 4

    with pytest.raises(rounds.RoundError, match="round 1 \\(before\\): pytest exited 4: ERROR: usage"):
        rounds.run_rounds(sides, 1, ["--bogus"], tmp_path, None, runner=broken)


def test_baselines_saved_from_the_rounds_compare_again_later(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pytest_kvmmm.baseline import compare, store

    monkeypatch.setenv(store.BASELINES_ENV, str(tmp_path))
    runs = runs_of([0.40, 0.41, 0.42], [0.80, 0.81, 0.82])
    paths = cli.save_baselines("slow", runs, ["-m", "pagetable"])
    assert [p.name for p in paths] == ["slow-before.json", "slow-after.json"]
    cmp = compare.compare(store.load(paths[0]), store.load(paths[1]))
    [row] = cmp.rows
    assert row.change.verdict.value == "regressed" and row.change.before.n == 9


# -- modules: build ids, the swap, the journal -------------------------------------------------------


def elf(tmp_path: Path, name: str, marker: str) -> Path:
    src = tmp_path / f"{name}.c"
    src.write_text(f'const char marker[] = "{marker}";\n')
    out = tmp_path / name
    subprocess.run(["gcc", "-shared", "-fPIC", "-Wl,--build-id=sha1", "-o", str(out), str(src)], check=True)
    return out


def readelf_build_id(path: Path) -> str:
    out = subprocess.run(["readelf", "-n", str(path)], capture_output=True, text=True, check=True).stdout
    return next(ln.split(":", 1)[1].strip() for ln in out.splitlines() if "Build ID" in ln)


needs_gcc = pytest.mark.skipif(not (shutil.which("gcc") and shutil.which("readelf")), reason="needs gcc and readelf (apt-get install gcc binutils)")


@needs_gcc
def test_build_ids_are_read_from_plain_and_xz_modules(tmp_path: Path) -> None:
    ko = elf(tmp_path, "kvm.ko", "one")
    assert modules.file_build_id(ko) == readelf_build_id(ko)
    xz = tmp_path / "kvm.ko.xz"
    xz.write_bytes(lzma.compress(ko.read_bytes(), format=lzma.FORMAT_XZ))
    assert modules.file_build_id(xz) == readelf_build_id(ko)
    assert modules.file_build_id(tmp_path / "kvm.c") is None and modules.file_build_id(tmp_path / "absent") is None


FAKE_KMOD = """\
#!{python}
import os, sys, shutil, struct
sys.path.insert(0, {root!r})
from pytest_kvmmm.ab.modules import file_build_id
sysm = os.environ["FAKE_SYS_MODULE"]
log = os.environ["FAKE_KMOD_LOG"]
prog = os.path.basename(sys.argv[0])
open(log, "a").write(" ".join([prog, *[os.path.basename(a) for a in sys.argv[1:]]]) + "\\n")
if prog == "rmmod":
    d = os.path.join(sysm, sys.argv[1])
    if open(os.path.join(d, "refcnt")).read().strip() != "0":
        sys.exit("rmmod: ERROR: Module is in use")
    shutil.rmtree(d)
else:
    path = sys.argv[1]
    if os.environ.get("FAKE_INSMOD_FAIL") and os.environ["FAKE_INSMOD_FAIL"] in path:
        sys.exit("insmod: ERROR: could not insert module: Invalid module format")
    name = os.path.basename(path).split(".ko")[0].replace("-", "_")
    d = os.path.join(sysm, name)
    os.makedirs(os.path.join(d, "notes")); os.makedirs(os.path.join(d, "parameters"))
    open(os.path.join(d, "initstate"), "w").write("live\\n")
    open(os.path.join(d, "refcnt"), "w").write("0\\n")
    bid = bytes.fromhex(file_build_id(__import__("pathlib").Path(path)))
    open(os.path.join(d, "notes", ".note.gnu.build-id"), "wb").write(struct.pack("<III", 4, len(bid), 3) + b"GNU\\0" + bid)
    for kv in sys.argv[2:]:
        k, v = kv.split("=", 1)
        open(os.path.join(d, "parameters", k), "w").write(v + "\\n")
"""


@pytest.fixture
def fake_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """A host with stock kvm + kvm_amd loaded from /lib/modules, fake kmod tools on PATH, and a
    patched build in a directory."""
    if not (shutil.which("gcc") and shutil.which("readelf")):
        pytest.skip("needs gcc and readelf (apt-get install gcc binutils)")
    bin_dir, sysm = tmp_path / "bin", tmp_path / "sys/module"
    bin_dir.mkdir()
    sysm.mkdir(parents=True)
    script = FAKE_KMOD.format(python=sys.executable, root=str(Path(__file__).resolve().parents[1]))
    for prog in ("insmod", "rmmod"):
        (bin_dir / prog).write_text(script)
        (bin_dir / prog).chmod(0o755)
    log = tmp_path / "kmod.log"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SYS_MODULE", str(sysm))
    monkeypatch.setenv("FAKE_KMOD_LOG", str(log))
    stock = tmp_path / "lib/modules/6.12.117+deb12-amd64/kernel/arch/x86/kvm"
    stock.mkdir(parents=True)
    build = tmp_path / "build"
    build.mkdir()
    for name in ("kvm.ko", "kvm-amd.ko"):
        s = elf(tmp_path, name, f"stock {name}")
        (stock / (name + ".xz")).write_bytes(lzma.compress(s.read_bytes(), format=lzma.FORMAT_XZ))
        shutil.move(str(elf(tmp_path, name, f"patched {name}")), build / name)
    for name in ("kvm", "kvm_amd"):
        subprocess.run(["insmod", str(stock / (name.replace("_", "-") + ".ko.xz")), *(["tdp_mmu=Y"] if name == "kvm" else [])], check=True)
    log.write_text("")
    return {"sys": sysm, "modules": tmp_path / "lib/modules", "build": build, "log": log, "journal": tmp_path / "journal"}


def swap_for(h: dict[str, Path]) -> ModuleSwap:
    return ModuleSwap(h["journal"], "6.12.117+deb12-amd64", h["sys"], h["modules"])


def test_a_swap_loads_the_build_and_the_stock_modules_go_back_with_their_parameters(fake_host: dict[str, Path]) -> None:
    h = fake_host
    stock_ids = dict(modules.loaded(h["sys"]).build_ids)  # type: ignore[union-attr]
    with swap_for(h) as swap:
        swap.switch(modules.build_files(h["build"], "kvm_amd"))
        assert swap.journal.is_file() and oct(swap.journal.stat().st_mode & 0o777) == "0o600"
        now = modules.loaded(h["sys"])
        assert now is not None and now.build_ids["kvm"] == modules.file_build_id(h["build"] / "kvm.ko")
    assert dict(modules.loaded(h["sys"]).build_ids) == stock_ids  # type: ignore[union-attr]
    assert (h["sys"] / "kvm/parameters/tdp_mmu").read_text().strip() == "Y"
    assert not list(h["journal"].glob("kvm-modules.*"))
    assert h["log"].read_text().splitlines() == [
        "rmmod kvm_amd", "rmmod kvm", "insmod kvm.ko", "insmod kvm-amd.ko",
        "rmmod kvm_amd", "rmmod kvm", "insmod kvm.ko.xz tdp_mmu=Y", "insmod kvm-amd.ko.xz",
    ]


def test_a_failed_insmod_puts_the_stock_modules_back_at_once(fake_host: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    h = fake_host
    stock_ids = dict(modules.loaded(h["sys"]).build_ids)  # type: ignore[union-attr]
    monkeypatch.setenv("FAKE_INSMOD_FAIL", str(h["build"] / "kvm-amd.ko"))
    swap = swap_for(h)
    with pytest.raises(SwapError, match="Invalid module format"):
        swap.switch(modules.build_files(h["build"], "kvm_amd"))
    assert dict(modules.loaded(h["sys"]).build_ids) == stock_ids  # type: ignore[union-attr]


def test_a_vm_alive_refuses_the_swap(fake_host: dict[str, Path]) -> None:
    h = fake_host
    (h["sys"] / "kvm_amd/refcnt").write_text("1\n")
    with pytest.raises(SwapError, match="kvm_amd is in use"):
        swap_for(h).switch(modules.build_files(h["build"], "kvm_amd"))


def test_without_the_stock_files_nothing_is_swapped(fake_host: dict[str, Path]) -> None:
    h = fake_host
    shutil.rmtree(h["modules"])
    with pytest.raises(SwapError, match="cannot find the file of the loaded kvm"):
        swap_for(h)
    assert h["log"].read_text() == ""


def test_a_crashed_swap_is_restored_by_the_next_run_and_foreign_journals_are_ignored(fake_host: dict[str, Path]) -> None:
    h = fake_host
    stock_ids = dict(modules.loaded(h["sys"]).build_ids)  # type: ignore[union-attr]
    swap = swap_for(h)
    swap.switch(modules.build_files(h["build"], "kvm_amd"))
    # The process "died": its journal names a pid that no longer runs.
    data = json.loads(swap.journal.read_text())
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    data["pid"] = int(dead)
    crashed = h["journal"] / f"kvm-modules.{dead}.json"
    crashed.write_text(json.dumps(data))
    crashed.chmod(0o600)
    swap.journal.unlink()
    writable = h["journal"] / "kvm-modules.1.json"  # writable by others: never acted on
    writable.write_text(json.dumps({**data, "pid": 999999}))
    writable.chmod(0o666)
    done = modules.restore_stale(h["journal"], h["sys"])
    assert done and "restored the stock KVM modules" in done[0]
    assert dict(modules.loaded(h["sys"]).build_ids) == stock_ids  # type: ignore[union-attr]
    assert not crashed.exists() and writable.exists()


def test_the_cli_refuses_to_swap_without_consent_and_names_bad_params(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    build = tmp_path / "b"
    build.mkdir()
    (build / "kvm.ko").write_bytes(b"")
    assert cli.main(["stock", str(build), "--", "-m", "pagetable"]) == 2
    assert "add --allow-host-changes" in capsys.readouterr().err
    with pytest.raises(SwapError, match="give MODULE.NAME=VALUE"):
        cli.parse_params(["tdp_mmu=Y"])
    assert cli.parse_params(["kvm-amd.npt=1", "kvm.tdp_mmu=Y"]) == {"kvm_amd": {"npt": "1"}, "kvm": {"tdp_mmu": "Y"}}


# -- module builds: the pure parts -------------------------------------------------------------------


def test_localversion_matches_the_target_release_or_refuses_another_version() -> None:
    assert kvm_modules.localversion("6.12.117", "6.12.117+deb12-amd64") == "+deb12-amd64"
    assert kvm_modules.localversion("6.12.117", "6.12.117") == ""
    with pytest.raises(ProvisionError, match="modules load only into the kernel version"):
        kvm_modules.localversion("6.12.117", "6.12.1170")
    with pytest.raises(ProvisionError, match="target kernel is 6.12.118"):
        kvm_modules.localversion("6.12.117", "6.12.118+deb12-amd64")


def test_a_debian_headers_dir_is_a_target(tmp_path: Path) -> None:
    kb = tmp_path / "linux-headers-6.12.117+deb12-amd64"
    kb.mkdir()
    (kb / ".config").write_text("CONFIG_KVM=m\n")
    (kb / "Module.symvers").write_text("0x0\tsym\tvmlinux\tEXPORT_SYMBOL\t\n")
    (kb / ".kernelvariables").write_text(textwrap.dedent("""\
        override ARCH = x86
        override KERNELRELEASE = 6.12.117+deb12-amd64
    """))
    target = kvm_modules.target_from_kbuild(kb)
    assert target.release == "6.12.117+deb12-amd64" and len(target.identity) == 16
    (kb / "Module.symvers").unlink()
    with pytest.raises(ProvisionError, match="has no Module.symvers"):
        kvm_modules.target_from_kbuild(kb)


def test_patch_info_names_each_patch_by_subject_and_hash(tmp_path: Path) -> None:
    p = tmp_path / "0001-slow.patch"
    p.write_text("From 1 Mon Sep 17 00:00:00 2001\nSubject: [PATCH] KVM: x86/mmu: slow down faults\n\n---\n")
    [info] = kvm_modules.patch_info([p])
    assert info["subject"] == "[PATCH] KVM: x86/mmu: slow down faults" and len(info["sha256"]) == 64
    with pytest.raises(ProvisionError, match="cannot read patch"):
        kvm_modules.patch_info([tmp_path / "absent.patch"])


def test_a_config_that_olddefconfig_changed_is_refused_with_the_missing_tool() -> None:
    target = "CONFIG_KVM=m\nCONFIG_DEBUG_INFO_BTF=y\nCONFIG_DEBUG_INFO_BTF_MODULES=y\nCONFIG_CC_VERSION_TEXT=\"x86_64-linux-gnu-gcc-12\"\nCONFIG_PAHOLE_VERSION=124\n"
    built = "CONFIG_KVM=m\n# CONFIG_DEBUG_INFO_BTF is not set\nCONFIG_CC_VERSION_TEXT=\"gcc\"\nCONFIG_PAHOLE_VERSION=0\n"
    drift = kvm_modules.config_drift(target, built)
    assert drift == ["CONFIG_DEBUG_INFO_BTF: y -> unset", "CONFIG_DEBUG_INFO_BTF_MODULES: y -> unset"]
    err = kvm_modules.drift_error(drift, "6.12.117+deb12-amd64")
    assert "modules built so would not load (install dwarves (pahole) and build again)" in str(err)
    assert kvm_modules.config_drift(target, target.replace("gcc-12", "gcc")) == []


def test_pahole_is_needed_only_for_a_kernel_with_btf() -> None:
    def have(tool: str) -> str | None:
        return None if tool == "pahole" else f"/usr/bin/{tool}"

    assert kvm_modules.needed_packages({"CONFIG_DEBUG_INFO_BTF": "y"}, have) == ["dwarves"]
    assert kvm_modules.needed_packages({}, have) == []


def test_a_tiny_count_moving_from_zero_is_no_verdict_and_zero_counts_are_not_shown() -> None:
    runs = []
    for r in (1, 2, 3):
        def c(n: int) -> dict:
            return {"events": ["kvm:kvm_userspace_exit"], "runs": [{"total": {"kvm:kvm_userspace_exit": n, "kvm:kvm_exit": 0},
                                                                     "stages": {"KVM_ADJUST_MAPPINGS": {"kvm:kvm_userspace_exit": n}}}]}
        runs += [RoundRecords(r, "before", [record(1.0, counters=c(0))]), RoundRecords(r, "after", [record(1.0, counters=c(3))])]
    changes = {ch.metric: ch for ch in paired.paired_changes(runs)}
    assert changes["kvm:kvm_userspace_exit"].verdict == paired.NO_CHANGE
    assert changes["KVM_ADJUST_MAPPINGS/kvm:kvm_userspace_exit"].verdict == paired.NO_CHANGE
    text = table.terminal(cli.report_for(runs, {"before": "a", "after": "b"}, 3, []))
    assert "kvm:kvm_userspace_exit: before 0 -> after 3" in text
    assert "kvm:kvm_exit" not in text and "KVM_ADJUST_MAPPINGS/kvm:kvm_userspace_exit" not in text


def test_a_host_event_that_grows_with_a_slower_run_is_never_judged() -> None:
    runs = []
    for r in (1, 2, 3):
        c = lambda n: {"events": ["tlb:tlb_flush"], "runs": [{"total": {"tlb:tlb_flush": n}, "stages": {}}]}  # noqa: E731
        runs += [RoundRecords(r, "before", [record(1.0, counters=c(800))]), RoundRecords(r, "after", [record(1.0, counters=c(1140))])]
    [flush] = [c for c in paired.paired_changes(runs) if c.kind == "count"]
    assert flush.verdict == paired.HOST_EVENT and not flush.flagged
