"""Building the lab images' shared parts (``kvmmm-lab build``): each cached, each step timed.

Parts, under ``<cache root>/lab/`` (``~/.cache/pytest-kvmmm/lab/``); every part writes its
JSON record last, so an interrupted build is redone, never half-used:

- ``kernels/``: Debian's kernels with a host kind's modules (``debian.py``) or kernels
  built to order (``kbuild.py``);
- ``base/<key>/base.cpio``: the userspace of one architecture (``mmdebstrap
  --variant=extract``: Debian packages unpacked, no maintainer scripts, so no emulation is
  needed) with the plugin's dependencies from wheels and bytecode compiled here;
- ``selftests/<build>-<key>.cpio``: the ``kvmmm-build`` build for that architecture, at the
  guest's own cache path so the plugin finds it as ``kvmmm-build cache``;
- ``images/<kind>.json``: which parts make up each host kind's initramfs (``build.py``).

The boot adds a small per-boot part (``overlay.py``). Nothing here is ever committed.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, TextIO

from . import recipe
from .cpio import CpioWriter
from .hosts import Arch

PLUGIN_DIST = "pytest-kvmmm"


class LabError(Exception):
    """A lab step failed; the message says what and what to do."""


class LabUnavailable(LabError):
    """The lab cannot be had on this machine (no QEMU, no Debian packages of an arch): CI skips."""


@dataclass(frozen=True)
class LabPaths:
    root: Path  # <cache root>/lab

    @property
    def debs(self) -> Path:
        return self.root / "debs"

    @property
    def wheels(self) -> Path:
        return self.root / "wheels"

    @property
    def kernels(self) -> Path:
        return self.root / "kernels"

    @property
    def base(self) -> Path:
        return self.root / "base"

    @property
    def selftests(self) -> Path:
        return self.root / "selftests"

    @property
    def images(self) -> Path:
        return self.root / "images"

    @property
    def runs(self) -> Path:
        return self.root / "run"

    def image_record(self, kind: str) -> Path:
        return self.images / f"{kind}.json"


@dataclass(frozen=True)
class BuildSettings:
    cache_root: Path
    hosts: Sequence[str]
    jobs: int
    allow_apt: bool
    is_root: bool
    force: bool = False
    progress: TextIO | None = None
    kernel_tree: Path | None = None  # kernels built to order: this tree, else linux-source
    kernel_images: Mapping[str, Path] = field(default_factory=dict)  # build name -> prebuilt image

    @property
    def paths(self) -> LabPaths:
        return LabPaths(self.cache_root / "lab")


@contextmanager
def step(progress: TextIO | None, label: str) -> Iterator[None]:
    """``[lab] <label> ... 4.2 s`` on one line: kvmmm-build's step with the lab's prefix."""
    from pytest_kvmmm.provision.build import step as build_step

    with build_step(progress, label, prefix="[lab]"):
        yield


def say(progress: TextIO | None, text: str) -> None:
    if progress is not None:
        progress.write(f"[lab] {text}\n")
        progress.flush()


def run(args: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """An argument list, as text; a missing program is a :class:`LabUnavailable`."""
    try:
        return subprocess.run(list(args), text=True, errors="replace", **kwargs)
    except FileNotFoundError:
        raise LabUnavailable(f"{args[0]} not found") from None


def checked(args: Sequence[str], what: str, error: type[LabError] = LabError, **kwargs: Any) -> str:
    """stdout of a command that must succeed; else ``error`` with its last line of output.
    Downloads fail with :class:`LabUnavailable`: no network to Debian or PyPI is no lab here."""
    proc = run(args, capture_output=True, **kwargs)
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        raise error(f"{what} failed (`{' '.join(args)}`): {lines[-1] if lines else f'exit {proc.returncode}'}")
    return proc.stdout


def write_json(path: Path, data: object) -> None:
    """Atomically: a record is the mark of a complete part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# --- the userspace ----------------------------------------------------------------------------

def _requires(name: str) -> list[str]:
    return list(importlib.metadata.distribution(name).requires or [])


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def guest_pins(machine: str) -> dict[str, str]:
    """The plugin's runtime dependencies at the versions installed here (the controller's)."""
    try:
        return recipe.wheel_pins(PLUGIN_DIST, _requires, _version, recipe.guest_marker_env(machine))
    except importlib.metadata.PackageNotFoundError:
        raise LabError(f"{PLUGIN_DIST} is not installed in {sys.executable}: pip install pytest-kvmmm") from None
    except LookupError as exc:
        raise LabError(str(exc)) from None


def download_wheels(s: BuildSettings, pins: dict[str, str], arch: Arch) -> list[Path]:
    """Pure-Python wheels for the guest (``pip download --only-binary=:all: --platform``)."""
    s.paths.wheels.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
            "--platform", arch.wheel_platform, "--python-version", "3.11", "--implementation", "cp",
            "--abi", "cp311", "--dest", str(s.paths.wheels), *(f"{n}=={v}" for n, v in pins.items())]  # fmt: skip
    with step(s.progress, f"pip download {len(pins)} wheels for the guest"):
        checked(args, "pip download", LabUnavailable)
    wheels = []
    for name, version in pins.items():
        stem = name.replace("-", "_").lower()
        found = [w for w in s.paths.wheels.glob("*.whl")
                 if w.name.lower().startswith(f"{stem}-{version}-".lower())]  # fmt: skip
        if not found:
            raise LabError(f"pip download gave no wheel for {name}=={version} in {s.paths.wheels}")
        wheels.append(found[0])
    return wheels


def install_wheel(wheel: Path, site: Path) -> None:
    """Unpack a pure-Python wheel into ``site`` (what pip does for a purelib wheel, minus scripts)."""
    with zipfile.ZipFile(wheel) as zf:
        wheel_meta = next((n for n in zf.namelist() if n.endswith(".dist-info/WHEEL")), None)
        if wheel_meta is None or "Root-Is-Purelib: true" not in zf.read(wheel_meta).decode():
            raise LabError(f"{wheel.name} is not a pure-Python wheel; the guest cannot use it")
        for info in zf.infolist():
            name = info.filename
            parts = PurePosixPath(name).parts
            if ".." in parts or name.startswith("/"):
                raise LabError(f"{wheel.name}: unsafe member {name}")
            if parts and parts[0].endswith(".data"):
                if len(parts) < 3 or parts[1] not in ("purelib", "platlib"):
                    continue  # scripts/headers/data: not needed in the guest
                name = "/".join(parts[2:])
            target = site / name
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(zf.read(info))


def compile_python(root: Path, dirs: Sequence[str], progress: TextIO | None) -> str:
    """Bytecode for the guest's Python, made here: TCG would spend seconds compiling pytest on
    every boot. Needs a host python of the guest's version (the pyc magic number)."""
    guest = "3.11"
    python = sys.executable if f"{sys.version_info[0]}.{sys.version_info[1]}" == guest else shutil.which(f"python{guest}")
    if python is None:
        return f"no python{guest} here: the guest compiles its bytecode itself (slower)"
    targets = [str(root / d) for d in dirs if (root / d).is_dir()]
    with step(progress, f"compiling guest bytecode with {python}"):
        checked([python, "-m", "compileall", "-q", "-j", "0", "-s", str(root), "-p", "/", *targets],
                "compileall")  # fmt: skip
    return f"bytecode compiled with {python}"


def build_base(s: BuildSettings, arch: Arch) -> dict[str, Any]:
    """The userspace part of one architecture: Debian packages, the plugin's dependencies, bytecode."""
    pins = guest_pins(arch.machine)
    key = recipe.cache_key({"packages": recipe.GUEST_PACKAGES, "pins": pins, "suite": recipe.SUITE,
                            "prune": recipe.PRUNE, "arch": arch.debian})  # fmt: skip
    dest = s.paths.base / key
    record = read_json(dest / "base.json")
    if record is not None and not s.force:
        return dict(record)
    wheels = download_wheels(s, pins, arch)
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    with tempfile.TemporaryDirectory(dir=s.paths.root) as tmp:
        rootfs = Path(tmp) / "rootfs"
        args = ["mmdebstrap", "--variant=extract", f"--arch={arch.debian}",
                f"--include={','.join(recipe.GUEST_PACKAGES)}", recipe.SUITE, str(rootfs)]  # fmt: skip
        with step(s.progress, f"mmdebstrap {recipe.SUITE} {arch.debian}: {', '.join(recipe.GUEST_PACKAGES)}"):
            checked(args, "mmdebstrap", LabUnavailable)
        packages = _installed_packages(rootfs, arch.debian)
        site = rootfs / recipe.GUEST_SITE
        for wheel in wheels:
            install_wheel(wheel, site)
        for rel in recipe.PRUNE:
            shutil.rmtree(rootfs / rel, ignore_errors=True)
        note = compile_python(rootfs, ("usr/lib/python3.11", recipe.GUEST_SITE), s.progress)
        with step(s.progress, "writing base.cpio"), (dest / "base.cpio").open("wb") as out:
            with CpioWriter(out, ino_base=1) as cpio:
                cpio.add_tree(rootfs, "/", keep=lambda rel: not recipe.pruned(str(rel)))
    record = {"key": key, "packages": packages, "pins": pins, "bytecode": note,
              "size": (dest / "base.cpio").stat().st_size}
    write_json(dest / "base.json", record)
    return record


def _installed_packages(rootfs: Path, debian_arch: str) -> dict[str, str]:
    """package -> version of the unpacked userspace, for the image record. ``--variant=extract``
    registers nothing with dpkg; every Debian package has its /usr/share/doc/<package>, and
    apt, which chose them, gives their versions."""
    try:
        names = sorted(d.name for d in (rootfs / "usr/share/doc").iterdir() if d.is_dir())
    except OSError:
        return {}
    proc = run(["apt-cache", "show", "--no-all-versions", *(f"{n}:{debian_arch}" for n in names)],
               capture_output=True)  # fmt: skip
    return dict(sorted(recipe.parse_show_versions(proc.stdout).items())) or dict.fromkeys(names, "?")


# --- the selftests ----------------------------------------------------------------------------

GUEST_CACHE = PurePosixPath("/root/.cache/pytest-kvmmm")


def build_selftests(s: BuildSettings, arch: Arch) -> dict[str, Any]:
    """``kvmmm-build --arch <arch>`` (cached by kvmmm-build), packed at the guest's cache path.
    The programs are linked dynamically against glibc: the guest's Debian userspace of the
    same release has the same libc.so.6 and ld.so."""
    from pytest_kvmmm.provision.build import BuildOptions, Target, provision
    from pytest_kvmmm.provision.source import ProvisionError

    opts = BuildOptions(cache_root=s.cache_root, jobs=s.jobs, target=Target.for_arch(arch.debian),
                        allow_apt=s.allow_apt, is_root=s.is_root, progress=s.progress)  # fmt: skip
    try:
        result = provision(None, opts)
    except ProvisionError as exc:
        raise LabUnavailable(f"kvmmm-build --arch {arch.debian}: {exc}") from None
    m = result.manifest
    say(s.progress, f"kvm selftests {m.kernel_version} ({m.arch}): {len(m.built)} built, "
                    f"{len(m.failed)} failed -> {result.build_dir}{' (cached)' if result.cached else ''}")
    key = recipe.cache_key({"build": result.build_dir.name, "built_at": m.built_at, "built": list(m.built)})
    part = s.paths.selftests / f"{result.build_dir.name}-{key}.cpio"
    if not part.is_file() or s.force:
        guest_dir = GUEST_CACHE / "selftests" / result.build_dir.name
        tmp = part.with_name(part.name + ".tmp")
        part.parent.mkdir(parents=True, exist_ok=True)
        with tmp.open("wb") as out, CpioWriter(out, ino_base=200_000) as cpio:
            for program in m.built:
                cpio.add_host_file(guest_dir / program, result.build_dir / program)
            cpio.add_host_file(guest_dir / "manifest.json", result.build_dir / "manifest.json")
        os.replace(tmp, part)
    return {"part": str(part), "build_dir": str(result.build_dir), "kernel_version": m.kernel_version,
            "built": len(m.built), "failed": list(m.failed)}  # fmt: skip


