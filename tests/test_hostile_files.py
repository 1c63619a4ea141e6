"""Files given by users, parsed defensively (issue 13, section 1): a malformed or hostile baseline or
host snapshot ends in one line naming the file and what is wrong: no traceback, no
INTERNALERROR, bounded memory and disk."""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import pytest

from fakes import make_host_root
from pytest_kvmmm.baseline import store
from pytest_kvmmm.host import snapshot_check
from pytest_kvmmm.host.snapshot import open_snapshot
from pytest_kvmmm.host.sysfs import Unreadable, parse_id_list

HEAD = '{"kind": "pytest-kvmmm-baseline", "format": 1, '


def baseline_with(samples: str) -> str:
    return HEAD + '"hosts": {"vm": {"tests": {"t": {"binary": "b", "samples": {"M": ' + samples + "}}}}}}"


BAD_BASELINES = {
    "hosts-a-list": (HEAD + '"hosts": []}', "hosts: not an object"),
    "host-a-string": (HEAD + '"hosts": {"vm": "x"}}', "hosts.vm: not an object"),
    "tests-a-list": (HEAD + '"hosts": {"vm": {"tests": [1]}}}', "hosts.vm.tests: not an object"),
    "nan": (baseline_with("[0.5, NaN]"), "NaN is not a number"),
    "infinity": (baseline_with("[Infinity]"), "Infinity is not a number"),
    "negative": (baseline_with("[0.5, -1.0]"), "hosts.vm.tests.t.samples.M[1]: -1.0 is negative"),
    "string-samples": (baseline_with('"123"'), "hosts.vm.tests.t.samples.M: not a list of numbers"),
    "string-sample": (baseline_with('["1.5"]'), "hosts.vm.tests.t.samples.M[0]: '1.5' is not a number"),
    "bool-sample": (baseline_with("[true]"), "hosts.vm.tests.t.samples.M[0]: True is not a number"),
    "object-samples": (baseline_with('{"a": 1}'), "hosts.vm.tests.t.samples.M: not a list of numbers"),
    "huge-number": (baseline_with("[1e400]"), "is not a finite number"),
    "bool-format": ('{"kind": "pytest-kvmmm-baseline", "format": true, "hosts": {}}', "has baseline format True"),
    "bool-repeat": (HEAD + '"repeat": true, "hosts": {}}', "repeat: True is not a positive count"),
    "deep-nesting": (HEAD + '"hosts": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deeply"),
}


@pytest.mark.parametrize("text, message", list(BAD_BASELINES.values()), ids=list(BAD_BASELINES))
def test_a_malformed_baseline_is_one_line_naming_the_file(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "before.json"
    path.write_text(text)
    with pytest.raises(store.BaselineError) as caught:
        store.load(path)
    said = str(caught.value)
    assert str(path) in said and message in said and "\n" not in said and len(said) < 400, said


def test_a_baseline_larger_than_the_limit_is_not_read_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store, "MAX_BASELINE_BYTES", 1000)
    path = tmp_path / "big.json"
    path.write_text(baseline_with("[" + ", ".join(["0.5"] * 1000) + "]"))
    with pytest.raises(store.BaselineError, match=r"big.json is larger than 1000 bytes"):
        store.load(path)


def test_a_valid_baseline_still_loads(tmp_path: Path) -> None:
    path = tmp_path / "ok.json"
    path.write_text(baseline_with("[0.5, 1, 0]"))
    assert store.load(path).hosts["vm"].tests["t"].samples == {"M": (0.5, 1.0, 0.0)}


@pytest.mark.parametrize("case", ["nan", "deep-nesting", "bool-format", "string-samples"])
def test_a_malformed_baseline_is_a_usage_error_not_a_traceback(pytester: pytest.Pytester, case: str) -> None:
    text, message = BAD_BASELINES[case]
    (pytester.path / "before.json").write_text(text)
    pytester.makepyfile("def test_x():\n    pass\n")
    res = pytester.runpytest_subprocess("--kvm-compare", "before.json", "-p", "no:cacheprovider")
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    errors = [line for line in res.stderr.lines if line.startswith("ERROR:")]
    assert len(errors) == 1 and "--kvm-compare: " in errors[0] and message in errors[0], res.stderr.str()
    assert "Traceback" not in res.stderr.str() + res.stdout.str() and "INTERNALERROR" not in res.stdout.str()


# --- host snapshots ------------------------------------------------------------------------------


def tarball(root: Path, dest: Path) -> Path:
    with tarfile.open(dest, "w:gz") as tar:
        tar.add(root, arcname="snap")
    return dest


def test_a_truncated_snapshot_tarball_is_one_line(tmp_path: Path) -> None:
    root = make_host_root(tmp_path / "root")
    (root / "proc/filler").write_bytes(os.urandom(200_000))  # incompressible: the cut lands inside the data
    whole = tarball(root, tmp_path / "whole.tar.gz")
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(ValueError, match=rf"^{cut}: a damaged or truncated archive \("):
        open_snapshot(cut)


@pytest.mark.parametrize("limit, value, message", [
    ("MAX_ENTRIES", 10, "more than 10 entries: not a host snapshot"),
    ("MAX_FILE_BYTES", 10_000, "member 'snap/proc/big' is 20000 bytes, over 10000"),
    ("MAX_TOTAL_BYTES", 150, "more than 0 MiB unpacked"),
])
def test_snapshot_tarball_extraction_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limit: str, value: int, message: str) -> None:
    root = make_host_root(tmp_path / "root")
    (root / "proc/big").write_bytes(b"x" * 20_000)
    monkeypatch.setattr(snapshot_check, limit, value)
    with pytest.raises(ValueError, match=message):
        open_snapshot(tarball(root, tmp_path / "s.tar.gz"))


def test_snapshot_tarball_members_outside_are_refused(tmp_path: Path) -> None:
    evil = tmp_path / "evil.tar"
    payload = tmp_path / "payload"
    payload.write_text("x")
    with tarfile.open(evil, "w") as tar:
        tar.add(payload, arcname="../../escaped")
    with pytest.raises(ValueError, match=r"member '../../escaped' points outside the snapshot"):
        open_snapshot(evil)
    assert not (tmp_path.parent / "escaped").exists()


def _link_outside(root: Path) -> str:
    hostname = root / "proc/sys/kernel/hostname"
    hostname.unlink()
    hostname.symlink_to("/etc/hostname")
    return f"{hostname}: a link pointing outside the snapshot (to /etc/hostname)"


def _relative_link_outside(root: Path) -> str:
    nr = root / "sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"
    nr.unlink()
    nr.symlink_to("../../../../../../etc/passwd")
    return f"{nr}: a link pointing outside the snapshot"


def _fifo(root: Path) -> str:
    cpuinfo = root / "proc/cpuinfo"
    cpuinfo.unlink()
    os.mkfifo(cpuinfo)
    return f"{cpuinfo}: neither a file nor a directory"


def _absurd_cpu_list(root: Path) -> str:
    (root / "sys/devices/system/cpu/online").write_text("0-99999999\n")
    return f"{root}/sys/devices/system/cpu/online: 100000000 ids in '0-99999999'"


def _deep_meta(root: Path) -> str:
    (root / "kvmmm-snapshot.json").write_text("[" * 100_000 + "]" * 100_000)
    return f"{root}/kvmmm-snapshot.json: nested too deeply"


def _bad_kvm_answers(root: Path) -> str:
    (root / "kvmmm-snapshot.json").write_text(json.dumps({"format": 1, "kvm": {"cpuid": "lots"}}))
    return f"{root}/kvmmm-snapshot.json: KVM answers 'cpuid' must be a list"


@pytest.mark.parametrize("stage", [_link_outside, _relative_link_outside, _fifo, _absurd_cpu_list, _deep_meta, _bad_kvm_answers],
                         ids=["link-outside", "relative-link-outside", "fifo", "cpu-list-0-99999999", "deep-meta", "bad-kvm-answers"])
def test_a_hostile_snapshot_directory_is_a_usage_error(pytester: pytest.Pytester, tmp_path: Path, stage: object) -> None:
    root = make_host_root(tmp_path / "root")
    message = stage(root)  # type: ignore[operator]
    pytester.makepyfile("def test_x(kvm_host):\n    pass\n")
    res = pytester.runpytest_subprocess(f"--kvm-host-snapshot={root}", "-p", "no:cacheprovider", timeout=120)
    assert res.ret == pytest.ExitCode.USAGE_ERROR, res.stdout.str()
    errors = [line for line in res.stderr.lines if line.startswith("ERROR:")]
    assert len(errors) == 1 and errors[0].startswith(f"ERROR: --kvm-host-snapshot: {message}"), res.stderr.str()
    assert "Traceback" not in res.stderr.str() + res.stdout.str()


def test_a_link_inside_the_snapshot_is_fine(tmp_path: Path) -> None:
    root = make_host_root(tmp_path / "root")
    (root / "proc/cpuinfo.link").symlink_to("cpuinfo")
    assert open_snapshot(root) == root


def test_id_lists_are_bounded_on_the_live_path_too() -> None:
    assert parse_id_list("0-3,8") == (0, 1, 2, 3, 8)
    with pytest.raises(Unreadable, match="more than any machine has"):
        parse_id_list("0-99999999")
    with pytest.raises(Unreadable, match="more than any machine has"):
        parse_id_list(",".join(f"{i}-{i + 60000}" for i in range(0, 10**6, 70000)))
