"""``kvmmm-lab build``: every part the chosen host kinds need, then one image record per kind.

Shared parts are built once per architecture (userspace, selftests) or per kernel; each is
cached (``image.py``, ``debian.py``, ``kbuild.py``), so a second build only checks them. The
record ``images/<kind>.json`` lists the kernel and the initramfs parts of the kind, and how
long each part took this time (``seconds``: cold when it was built, small when cached).
"""

from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Any

from . import debian, kbuild
from .buildlock import build_lock
from .hosts import ARCHES, HOST_KINDS, HostKind
from .image import (
    BuildSettings,
    LabPaths,
    LabUnavailable,
    build_base,
    build_selftests,
    read_json,
    say,
    write_json,
)


def kernel_for(s: BuildSettings, kind: HostKind) -> dict[str, Any]:
    build = kind.kernel_build
    if build is None:
        return debian.debian_kernel(s, kind)
    if build.name in s.kernel_images:
        return kbuild.prebuilt_kernel(s.kernel_images[build.name], build)
    ks = kbuild.KbuildSettings(s.paths.root, s.jobs, s.kernel_tree, s.force, progress=s.progress)
    return kbuild.build_kernel(ks, build)


def build_all(s: BuildSettings) -> dict[str, dict[str, Any]]:
    """Every part, then one record per host kind, under the cache's build lock (one build at
    a time: ``buildlock.py``); returns the records."""
    if platform.machine() not in ("x86_64", "aarch64"):
        raise LabUnavailable(f"the lab is built on x86_64 (or aarch64) Debian, not {platform.machine()}")
    with build_lock(s.paths.root, s.progress):
        return _build_all(s)


def _build_all(s: BuildSettings) -> dict[str, dict[str, Any]]:
    start = time.monotonic()
    kinds = [HOST_KINDS[h] for h in s.hosts]
    arches = [ARCHES[a] for a in dict.fromkeys(k.arch for k in kinds)]
    debian.ensure_tools(s, arches)
    shared: dict[str, dict[str, Any]] = {}
    for arch in arches:
        probe = next(k.kernel for k in kinds if k.arch == arch.machine and k.kernel_build is None) \
            if any(k.arch == arch.machine and k.kernel_build is None for k in kinds) else "python3-minimal"
        t0 = time.monotonic()
        debian.ensure_archive(s, arch.debian, probe)
        selftests = build_selftests(s, arch)
        base = build_base(s, arch)
        shared[arch.machine] = {"selftests": selftests, "base": base, "seconds": round(time.monotonic() - t0, 1)}
    records = {}
    for kind in kinds:
        t0 = time.monotonic()
        kernel = kernel_for(s, kind)
        made = shared[kind.arch]
        parts = [str(s.paths.base / made["base"]["key"] / "base.cpio")]
        if kernel.get("modules_part"):
            parts.append(str(kernel["modules_part"]))
        parts.append(made["selftests"]["part"])
        record = {
            "kind": kind.name, "hostname": kind.hostname, "arch": kind.arch, "page_kib": kind.page_kib,
            "kernel": kernel["kernel"], "release": kernel.get("release", "?"), "modules": kernel.get("modules", []),
            "kernel_source": {k: v for k, v in kernel.items() if k not in ("modules", "modules_part")},
            "parts": parts, "selftests": made["selftests"], "base_key": made["base"]["key"],
            "pins": made["base"]["pins"], "seconds": round(time.monotonic() - t0 + made["seconds"], 1),
        }  # fmt: skip
        write_json(s.paths.image_record(kind.name), record)
        records[kind.name] = record
        made["seconds"] = 0.0  # counted once, with the first kind of the arch
    say(s.progress, f"images ready in {time.monotonic() - start:.1f} s: "
                    + ", ".join(f"{n} ({r['release']}, {r['seconds']} s)" for n, r in records.items()))
    return records


def load_image(paths: LabPaths, kind: str) -> dict[str, Any]:
    """A kind's image record whose parts all exist; LabUnavailable if it needs ``kvmmm-lab build``."""
    record = read_json(paths.image_record(kind))
    if not isinstance(record, dict) or "kind" not in record:
        raise LabUnavailable(f"no {kind} lab image in {paths.images}: run `kvmmm-lab build --hosts {kind}`")
    missing = [p for p in [record["kernel"], *record["parts"]] if not Path(p).is_file()]
    if missing:
        raise LabUnavailable(f"the {kind} lab image lacks {missing[0]}: run `kvmmm-lab build --hosts {kind}`")
    return record
