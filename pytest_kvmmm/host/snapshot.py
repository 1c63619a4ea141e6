"""Host snapshots: the files the probes read, plus the KVM API's answers, in a directory or tarball.

A snapshot is a directory that stands in for ``/``: the same relative paths, each file with
the owner-write bit set exactly when the live file was writable by the capturing process,
and ``kvmmm-snapshot.json`` with the KVM answers (``KvmAnswers.to_json``), the base page size
(no file holds it) and who/when.
``--kvm-host-snapshot DIR`` then gives the plugin the facts of that host, so skip decisions
can be reviewed offline and a snapshot can be attached to a bug report.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import socket
import tarfile
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .kvm import kernel_log
from .kvmapi import KvmAnswers, probe_kvm
from .snapshot_check import check_snapshot, extract
from .sysfs import FactReader, rw_open_error

SNAPSHOT_META = "kvmmm-snapshot.json"
SNAPSHOT_FORMAT = 1

FILES = (
    "/proc/cpuinfo", "/proc/meminfo", "/proc/cmdline", "/proc/sys/kernel/arch", "/proc/sys/kernel/osrelease",
    "/proc/sys/kernel/hostname", "/sys/devices/system/cpu/online", "/sys/devices/system/node/online",
    "/sys/kernel/mm/transparent_hugepage/enabled", "/sys/kernel/mm/transparent_hugepage/defrag",
    "/sys/kernel/mm/transparent_hugepage/shmem_enabled", "/sys/kernel/mm/transparent_hugepage/hpage_pmd_size",
    "/sys/kernel/mm/lru_gen/enabled",
)
#: Directories whose small files are copied whole (globs relative to /).
TREES = ("sys/kernel/mm/hugepages/*/*", "sys/devices/system/node/node*/hugepages/*/*", "sys/module/kvm*/parameters/*")
#: Present only as an (empty) marker: the bitmap itself is huge and per-boot.
MARKERS = ("/sys/kernel/mm/page_idle/bitmap",)


def _copy(live: FactReader, path: str, dest: Path) -> None:
    try:
        text = live.text(path)
    except Exception:  # noqa: BLE001 - anything unreadable is simply absent from the snapshot
        return
    target = dest / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    target.chmod(0o644 if live.writable(path) else 0o444)


def capture(dest: Path, source: Path = Path("/"), kvm: KvmAnswers | None = None) -> Path:
    """Write a snapshot of the host under ``source`` (normally ``/``) into the directory ``dest``."""
    live = FactReader(source, source.resolve() == Path("/"))
    dest.mkdir(parents=True, exist_ok=True)
    for path in FILES:
        _copy(live, path, dest)
    for pattern in TREES:
        for found in sorted(source.glob(pattern)):
            if found.is_file():
                _copy(live, "/" + str(found.relative_to(source)), dest)
    for module in sorted(source.glob("sys/module/kvm*")):
        (dest / module.relative_to(source)).mkdir(parents=True, exist_ok=True)
    for path in MARKERS:
        if live.path(path).exists():
            target = dest / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.touch()
            usable = live.live and rw_open_error(live.path(path)) is None
            target.chmod(0o644 if usable else 0o444)
    machine = (dest / "proc/sys/kernel/arch").read_text().strip() if (dest / "proc/sys/kernel/arch").exists() else None
    if machine in ("aarch64", "arm64") and live.live:
        kvm_lines = [ln for ln in kernel_log(live).splitlines() if "kvm" in ln.lower()]
        (dest / "dev").mkdir(exist_ok=True)
        (dest / "dev/kmsg").write_text("\n".join(kvm_lines) + "\n")
    answers = kvm if kvm is not None else probe_kvm(machine=machine)
    meta: dict[str, Any] = {
        "format": SNAPSHOT_FORMAT,
        "captured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "captured_on": socket.gethostname(),
        "kvm": answers.to_json(),
    }
    if live.live:
        meta["page_size"] = os.sysconf("SC_PAGE_SIZE")
    (dest / SNAPSHOT_META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return dest


def read_meta(root: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((root / SNAPSHOT_META).read_text())
    except (OSError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def load_kvm_answers(root: Path, meta: Mapping[str, Any] | None) -> KvmAnswers:
    """The KVM answers stored in the snapshot ``root``, from its already read ``meta``
    (``read_meta(root)``); a snapshot without them reads as a host without KVM."""
    if meta is None or "kvm" not in meta:
        return KvmAnswers.from_json({"open_error": f"the snapshot {root} has no {SNAPSHOT_META} with KVM answers"})
    try:
        return KvmAnswers.from_json(meta["kvm"])
    except ValueError as exc:
        return KvmAnswers.from_json({"open_error": f"{root}/{SNAPSHOT_META}: {exc}"})


def open_snapshot(path: Path) -> Path:
    """A snapshot directory for ``path``: the directory itself, or a tarball unpacked to a temp dir;
    checked first (``snapshot_check``): a ValueError's one line names the file and the fault.

    The temp dir is removed when the process exits (each xdist worker unpacks its own).
    """
    if path.is_dir():
        return check_snapshot(path)
    if not path.exists():
        raise ValueError(f"{path} does not exist")
    try:
        is_tar = tarfile.is_tarfile(path)
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not is_tar:
        raise ValueError(f"{path} is neither a snapshot directory nor a tarball")
    target = Path(tempfile.mkdtemp(prefix="kvmmm-snapshot-"))
    atexit.register(shutil.rmtree, target, True)
    try:
        extract(path, target)
    except ValueError:
        shutil.rmtree(target, ignore_errors=True)  # a refused archive leaves nothing behind
        raise
    entries = list(target.iterdir())
    root = entries[0] if len(entries) == 1 and entries[0].is_dir() and not (target / SNAPSHOT_META).exists() else target
    return check_snapshot(root)
