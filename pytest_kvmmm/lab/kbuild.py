"""Kernels built to order (``kvmmm-lab build``): a kernel tree or Debian's ``linux-source``,
a base configuration and a fragment, built out of tree and cached.

Cached under ``<cache>/lab/kernels/build-<name>-<key>/`` where ``key`` hashes the tree's
revision (a git tree: HEAD and its uncommitted diff; ``linux-source``: the tarball's
identity; another tree: its path and version, so rebuild it with ``--force`` after editing),
the base targets and the fragment's text. A build is checked against its fragment: an option
the fragment asks for that Kconfig dropped (an unmet dependency) fails the build with its name.

The tree is never written: ``make O=<cache dir>`` builds beside it. A tree in which
``make headers`` or a build ran is refused by Kbuild's own check; the message says so.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, TextIO

from .hosts import ARCHES, KernelBuild
from .image import LabError, LabUnavailable, read_json, say, step, write_json

LINUX_SOURCE = Path("/usr/src/linux-source-6.12.tar.xz")
_OPTION = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")
_UNSET = re.compile(r"^# (CONFIG_[A-Za-z0-9_]+) is not set$")


def parse_config(text: str) -> dict[str, str]:
    """A .config or fragment -> option -> value; ``=n`` and ``# ... is not set`` are "n"."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        m = _OPTION.match(line)
        if m:
            out[m.group(1)] = m.group(2)
            continue
        m = _UNSET.match(line)
        if m:
            out[m.group(1)] = "n"
    return out


def fragment_mismatches(fragment: str, config: str) -> list[str]:
    """Options of the fragment the final .config does not have as asked (unmet dependencies)."""
    want, got = parse_config(fragment), parse_config(config)
    return [f"{k}={v} (got {got.get(k, 'n')})" for k, v in want.items() if got.get(k, "n") != v]


def fragment_text(build: KernelBuild) -> str:
    return (resources.files("pytest_kvmmm.lab") / "kconfig" / build.fragment).read_text()


def build_key(revision: str, build: KernelBuild, fragment: str) -> str:
    text = "\0".join([revision, build.arch, *build.base, fragment])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _git(tree: Path, *args: str) -> str | None:
    try:
        proc = subprocess.run(["git", "-C", str(tree), *args], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode == 0 else None


def tree_revision(tree: Path) -> str:
    """What identifies the tree's sources (see the module's doc)."""
    head = _git(tree, "rev-parse", "HEAD") if (tree / ".git").exists() else None
    if head:
        diff = _git(tree, "diff", "HEAD") or ""
        dirty = hashlib.sha256(diff.encode()).hexdigest()[:12] if diff else "clean"
        return f"git:{head.strip()}:{dirty}"
    try:
        makefile = (tree / "Makefile").read_text(errors="replace")[:4000]
    except OSError:
        raise LabError(f"{tree} is not a kernel tree (no Makefile)") from None
    version = ".".join(re.findall(r"^(?:VERSION|PATCHLEVEL|SUBLEVEL) = (\d+)", makefile, re.MULTILINE))
    return f"tree:{tree.resolve()}:{version}"


def tarball_identity(tarball: Path) -> str:
    st = tarball.stat()
    return f"{tarball.name}:{st.st_size}:{st.st_mtime_ns}"


def unpack_linux_source(lab_root: Path, tarball: Path, progress: TextIO | None) -> tuple[Path, str]:
    """Debian's linux-source tarball, unpacked once into the cache; (tree, revision)."""
    if not tarball.is_file():
        raise LabUnavailable(f"no {tarball}: apt-get install linux-source-6.12, or pass --kernel-tree")
    identity = tarball_identity(tarball)
    top = lab_root / "kernel-src"
    stem = tarball.name.split(".tar")[0]
    tree, stamp = top / stem, top / f"{stem}.unpacked"
    if stamp.is_file() and stamp.read_text().strip() == identity and (tree / "Makefile").is_file():
        return tree, f"linux-source:{identity}"
    shutil.rmtree(tree, ignore_errors=True)
    top.mkdir(parents=True, exist_ok=True)
    with step(progress, f"unpacking {tarball}"):
        proc = subprocess.run(["tar", "-xf", str(tarball), "-C", str(top)], capture_output=True, text=True)
    if proc.returncode != 0 or not (tree / "Makefile").is_file():
        raise LabError(f"unpacking {tarball} failed: {proc.stderr.strip()[-300:] or f'no {tree}/Makefile'}")
    stamp.write_text(identity + "\n")
    return tree, f"linux-source:{identity}"


@dataclass(frozen=True)
class KbuildSettings:
    lab_root: Path
    jobs: int
    tree: Path | None = None  # None: Debian's linux-source
    force: bool = False
    nice: int = 10  # the build shares the machine: below interactive work
    progress: TextIO | None = None


def _make(s: KbuildSettings, tree: Path, out: Path, build: KernelBuild, *targets: str) -> None:
    args = ["nice", "-n", str(s.nice), "make", "-C", str(tree), f"O={out}", *targets]
    if build.arch != os.uname().machine:  # a cross build; a native one takes make's defaults
        args += ["ARCH=arm64", "CROSS_COMPILE=aarch64-linux-gnu-"] if build.arch == "aarch64" else ["ARCH=x86_64"]
    log = out / "kvmmm-build.log"
    with log.open("a") as fh:
        proc = subprocess.run(args, stdout=fh, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-8:]
        hint = " (the tree is not clean: Kbuild refuses O= builds of a tree built or `make headers`ed in place; " \
               "run `make mrproper` there or use another tree)" if any("not clean" in t for t in tail) else ""
        raise LabError(f"make {' '.join(targets)} failed{hint}; {log} ends with: {' | '.join(tail[-3:])}")


def build_kernel(s: KbuildSettings, build: KernelBuild) -> dict[str, Any]:
    """The built kernel's record (cached): image path, release, revision, key, build time."""
    if s.tree is None:
        tree, revision = unpack_linux_source(s.lab_root, LINUX_SOURCE, s.progress)
    else:
        tree, revision = s.tree, tree_revision(s.tree)
    fragment = fragment_text(build)
    key = build_key(revision, build, fragment)
    dest = s.lab_root / "kernels" / f"build-{build.name}-{key}"
    record = read_json(dest / "kernel.json")
    if isinstance(record, dict) and not s.force and Path(record.get("kernel", "")).is_file():
        return dict(record)
    out = s.lab_root / "kernels" / f"obj-{build.name}"  # one object tree per build: rebuilt incrementally
    out.mkdir(parents=True, exist_ok=True)
    dest.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with step(s.progress, f"configuring {build.name}: {' '.join(build.base)} + {build.fragment}"):
        _make(s, tree, out, build, *build.base)
        with (out / ".config").open("a") as fh:
            fh.write("\n" + fragment)
        _make(s, tree, out, build, "olddefconfig")
    bad = fragment_mismatches(fragment, (out / ".config").read_text())
    if bad:
        raise LabError(f"kernel {build.name}: Kconfig did not take {', '.join(bad)} (a dependency is missing)")
    image = ARCHES[build.arch].build_image
    target = Path(image).name
    with step(s.progress, f"make -j{s.jobs} {target} for {build.name} (nice {s.nice}; ~14 min cold on 2 cores)"):
        _make(s, tree, out, build, f"-j{s.jobs}", target)
    release = subprocess.run(["make", "-s", "-C", str(tree), f"O={out}", "kernelrelease"],
                             capture_output=True, text=True).stdout.strip()  # fmt: skip
    shutil.copy(out / image, dest / target)
    record = {"source": "build", "name": build.name, "key": key, "revision": revision, "tree": str(tree),
              "base": list(build.base), "fragment": build.fragment, "release": release,
              "kernel": str(dest / target), "build_seconds": round(time.monotonic() - start, 1)}  # fmt: skip
    write_json(dest / "kernel.json", record)
    say(s.progress, f"kernel {build.name} {release} built in {record['build_seconds']} s -> {dest / target}")
    return record


def prebuilt_kernel(image: Path, build: KernelBuild) -> dict[str, Any]:
    """A kernel image the user built (``--kernel-image NAME=PATH``), used as it is."""
    if not image.is_file():
        raise LabError(f"--kernel-image {build.name}={image}: no such file")
    return {"source": "prebuilt", "name": build.name, "kernel": str(image.resolve()), "release": "?",
            "build_seconds": 0.0}


def parse_kernel_images(values: Sequence[str]) -> dict[str, Path]:
    """``["x86-idle=/path/bzImage"]`` -> {name: path}; ValueError for a malformed one."""
    out = {}
    for v in values:
        name, sep, path = v.partition("=")
        if not sep or not path:
            raise ValueError(f"--kernel-image {v!r}: expected NAME=PATH")
        out[name.strip()] = Path(path)
    return out
