"""What the lab takes from Debian: the build host's tools, the packages of another
architecture, and the kernels of Debian's packages with the modules a host kind loads.

A kernel part is ``kernels/<package>_<version>-<modules key>/``: the kernel image and
``modules.cpio`` (the host kind's modules and their dependencies, decompressed, with a
``modules.dep`` so ``modprobe`` can load and reload them in the guest).
"""

from __future__ import annotations

import functools
import lzma
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from . import recipe
from .cpio import CpioWriter
from .hosts import ARCHES, Arch, HostKind
from .image import (
    BuildSettings,
    LabError,
    LabUnavailable,
    checked,
    read_json,
    run,
    step,
    write_json,
)

#: command -> the Debian package that provides it on the build host (QEMU per arch: hosts.ARCHES)
HOST_TOOLS = {"mmdebstrap": "mmdebstrap", "dpkg-deb": "dpkg", "apt-get": "apt"}


def tools_for(arches: list[Arch]) -> dict[str, str]:
    return {**HOST_TOOLS, **{a.qemu: a.qemu_package for a in arches}}


def missing_tools(tools: dict[str, str]) -> list[str]:
    return [tool for tool in tools if shutil.which(tool) is None]


def ensure_tools(s: BuildSettings, arches: list[Arch]) -> None:
    """QEMU and mmdebstrap, apt-installed when allowed; LabUnavailable otherwise."""
    tools = tools_for(arches)
    missing = missing_tools(tools)
    if not missing:
        return
    packages = sorted({tools[t] for t in missing})
    command = f"apt-get install -y {' '.join(packages)}"
    if "apt-get" in missing or not (s.allow_apt and s.is_root):
        raise LabUnavailable(f"{', '.join(missing)} missing: run `{command}` as root")
    with step(s.progress, command):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        proc = run(["apt-get", "install", "-y", "-q", *packages], capture_output=True, env=env)
        if proc.returncode != 0:
            run(["apt-get", "update", "-q"], capture_output=True, env=env)
            proc = run(["apt-get", "install", "-y", "-q", *packages], capture_output=True, env=env)
    if proc.returncode != 0 or missing_tools(tools):
        raise LabUnavailable(f"`{command}` did not provide {', '.join(missing_tools(tools)) or 'them'}")


@functools.lru_cache(maxsize=64)
def apt_show(package: str, arch: str) -> str | None:
    """``apt-cache show`` of one package (seconds each on a loaded machine: asked once per run)."""
    proc = run(["apt-cache", "show", "--no-all-versions", f"{package}:{arch}"], capture_output=True)
    return proc.stdout if proc.returncode == 0 and proc.stdout.strip() else None


def native_arch() -> str:
    return checked(["dpkg", "--print-architecture"], "dpkg").strip()


def ensure_archive(s: BuildSettings, arch: str, probe: str) -> None:
    """apt knows Debian's packages of ``arch``: ``dpkg --add-architecture`` + ``apt-get update``
    when needed and allowed; LabUnavailable (with the commands) when they cannot be had."""
    if apt_show(probe, arch) is not None:
        return
    commands = f"dpkg --add-architecture {arch} && apt-get update"
    if not (s.allow_apt and s.is_root):
        raise LabUnavailable(f"apt knows no {probe}:{arch}: run `{commands}` as root")
    foreign = checked(["dpkg", "--print-foreign-architectures"], "dpkg").split()
    add = arch not in foreign and arch != native_arch()
    with step(s.progress, commands if add else "apt-get update"):
        if add:
            checked(["dpkg", "--add-architecture", arch], "dpkg --add-architecture")
        run(["apt-get", "update", "-q"], capture_output=True)
    apt_show.cache_clear()  # apt-get update ran: what it knows now
    if apt_show(probe, arch) is None:
        raise LabUnavailable(f"Debian's {arch} package {probe} cannot be had from the configured apt sources")


def _module_files(tree: Path) -> dict[str, Path]:
    return {recipe.module_name(p.name): p for p in tree.rglob("*.ko*") if p.is_file()}


def _module_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    return lzma.decompress(data) if path.name.endswith(".xz") else data


def modules_dep(order: list[str], depends: dict[str, list[str]]) -> str:
    """``modules.dep`` of the guest's modules (``kvmmm/<name>.ko: <deps>``), for modprobe."""
    lines = []
    for name in order:
        deps = " ".join(f"kvmmm/{d}.ko" for d in depends.get(name, []))
        lines.append(f"kvmmm/{name}.ko:{' ' + deps if deps else ''}")
    return "\n".join(lines) + "\n"


def debian_kernel(s: BuildSettings, kind: HostKind) -> dict[str, Any]:
    """The kind's kernel image and modules part from Debian's package; cached per package
    version and module set."""
    arch = ARCHES[kind.arch]
    show = apt_show(kind.kernel, arch.debian)
    if show is None:
        raise LabUnavailable(f"apt knows no {kind.kernel}:{arch.debian}")
    package, version = recipe.kernel_package(show)
    key = recipe.cache_key({"modules": kind.modules})
    dest = s.paths.kernels / f"{package}_{version}-{key}"
    record = read_json(dest / "kernel.json")
    if isinstance(record, dict) and not s.force:
        return dict(record)
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    s.paths.debs.mkdir(parents=True, exist_ok=True)
    with step(s.progress, f"apt-get download {package}:{arch.debian}={version}"):
        checked(["apt-get", "download", f"{package}:{arch.debian}={version}"], "apt-get download",
                LabUnavailable, cwd=s.paths.debs)  # fmt: skip
    debs = sorted(s.paths.debs.glob(f"{package}_*_{arch.debian}.deb"))
    if not debs:
        raise LabError(f"apt-get download left no {package} .deb in {s.paths.debs}")
    with tempfile.TemporaryDirectory(dir=s.paths.root) as tmp, step(s.progress, f"unpacking {debs[-1].name}"):
        tree = Path(tmp)
        checked(["dpkg-deb", "-x", str(debs[-1]), str(tree)], "dpkg-deb -x")
        images = sorted((tree / "boot").glob("vmlinuz-*"))
        if not images:
            raise LabError(f"{debs[-1].name} has no boot/vmlinuz-*")
        release = images[0].name[len("vmlinuz-"):]
        shutil.copy(images[0], dest / "Image")
        files = _module_files(tree / "lib/modules" / release)
        cache: dict[str, bytes] = {}

        def module(name: str) -> bytes:
            if name not in files:
                raise LabError(f"{package} has no module {name} (is it built in?)")
            if name not in cache:
                cache[name] = _module_bytes(files[name])
            return cache[name]

        depends = {}

        def deps(name: str) -> list[str]:
            depends[name] = recipe.modinfo_depends(module(name))
            return depends[name]

        order = recipe.module_closure(kind.modules, deps)
        with (dest / "modules.cpio").open("wb") as out, CpioWriter(out, ino_base=300_000) as cpio:
            for name in order:
                cpio.add_file(f"/lib/modules/{release}/kvmmm/{name}.ko", module(name))
            cpio.add_file(f"/lib/modules/{release}/modules.dep", modules_dep(order, depends).encode())
    for deb in debs:  # 90 MB each; the part above is all the lab needs from it
        deb.unlink()
    record = {"source": "debian", "package": package, "version": version, "release": release,
              "modules": order, "kernel": str(dest / "Image"), "modules_part": str(dest / "modules.cpio")}  # fmt: skip
    write_json(dest / "kernel.json", record)
    return record
