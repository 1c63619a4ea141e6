"""The per-boot part of a lab host's initramfs: /init, the server, the host's settings, the
installed plugin, and the user's rootdir (ini files, conftests, tests) at the same absolute
path as on the controller.

Built at every boot (a fraction of a second), so the cached image never goes stale when the
plugin's code changes, and the guest always runs the code the controller runs: the plugin as
installed here (a wheel or an editable checkout), with the controller's rootdir and ini files.
"""

from __future__ import annotations

import importlib.metadata
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from . import recipe
from .cpio import CpioWriter

GUEST_DIR = Path(__file__).resolve().parent / "guest"
GUEST_PORT = 8888  # inside the guest; QEMU forwards the host's 127.0.0.1:<port> to it
PACKAGE = "pytest_kvmmm"
#: What of the user's rootdir the guest gets: what decides pytest's rootdir, ini options and
#: tests. Not virtualenvs, VCS data, caches or results.
ROOTDIR_SUFFIXES = (".py", ".ini", ".toml", ".cfg", ".json", ".txt", ".yaml", ".yml")
SKIP_DIRS = ("__pycache__", "node_modules", "results", "build", "dist")
MAX_ROOTDIR_FILES = 5000
MAX_FILE_BYTES = 4 << 20


@dataclass(frozen=True)
class GuestConfig:
    hostname: str
    rootdir: PurePosixPath  # the controller's rootdir, recreated in the guest
    share: PurePosixPath | None  # host directory mounted at the same path (results, Allure)
    modules: tuple[str, ...]
    #: "kvm:tdp_mmu=Y kvm_amd:npt=Y": module parameters at load time
    module_params: str = ""
    port: int = GUEST_PORT
    emulated: str = "tcg"

    def shell(self) -> str:
        """/etc/kvmmm-lab/config, sourced by /init."""
        values = {
            "KVMMM_HOSTNAME": self.hostname,
            "KVMMM_REPO": str(self.rootdir),
            "KVMMM_SHARE": "" if self.share is None else str(self.share),
            "KVMMM_MODULES": " ".join(self.modules),
            "KVMMM_MODULE_PARAMS": self.module_params,
            "KVMMM_EMULATED": self.emulated,
            "KVMMM_PORT": str(self.port),
        }
        return "".join(f"{k}={shlex.quote(v)}\n" for k, v in values.items())


def _skipped_dir(path: Path) -> bool:
    return path.name.startswith(".") or path.name in SKIP_DIRS or (path / "pyvenv.cfg").exists()


def rootdir_files(rootdir: Path) -> list[Path]:
    """The user's files the guest gets, relative to ``rootdir``; LabError when the rootdir is
    too big to copy (a home directory: pass --rootdir)."""
    from .image import LabError

    files: list[Path] = []
    todo = [rootdir]
    while todo:
        d = todo.pop()
        try:
            entries = sorted(d.iterdir())
        except OSError:
            continue
        for path in entries:
            if path.is_symlink():
                continue  # never follow a link we did not make
            if path.is_dir():
                if not _skipped_dir(path):
                    todo.append(path)
            elif path.suffix in ROOTDIR_SUFFIXES and path.stat().st_size <= MAX_FILE_BYTES:
                files.append(path.relative_to(rootdir))
                if len(files) > MAX_ROOTDIR_FILES:
                    raise LabError(f"{rootdir} has more than {MAX_ROOTDIR_FILES} files to copy into the lab "
                                   f"hosts: run from your project's directory, or pass --rootdir")
    return sorted(files)


def plugin_files(package_dir: Path) -> list[Path]:
    """The installed plugin's files, relative to its package directory."""
    return sorted(p.relative_to(package_dir) for p in package_dir.rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc")  # fmt: skip


def dist_info(dist: str = "pytest-kvmmm") -> Mapping[str, str]:
    """METADATA and entry_points.txt of the installed plugin, so pytest in the guest loads it
    through its ``pytest11`` entry point exactly as on the controller."""
    d = importlib.metadata.distribution(dist)
    files = {"METADATA": d.read_text("METADATA") or f"Metadata-Version: 2.1\nName: {dist}\nVersion: {d.version}\n"}
    entry_points = d.read_text("entry_points.txt")
    if entry_points:
        files["entry_points.txt"] = entry_points
    return files


def write_overlay(out_path: Path, config: GuestConfig, rootdir: Path, dist: Mapping[str, str],
                  package_dir: Path | None = None) -> int:
    """The overlay cpio; returns its number of entries. ``package_dir``: the installed plugin."""
    if package_dir is None:
        package_dir = Path(__file__).resolve().parent.parent
    with out_path.open("wb") as out, CpioWriter(out, ino_base=400_000) as cpio:
        cpio.add_file("/init", (GUEST_DIR / "init").read_bytes(), 0o755)
        cpio.add_file("/etc/kvmmm-lab/server.py", (GUEST_DIR / "server.py").read_bytes())
        cpio.add_file("/etc/kvmmm-lab/config", config.shell().encode())
        cpio.add_file("/etc/hostname", f"{config.hostname}\n".encode())
        version = next((ln.split(":", 1)[1].strip() for ln in dist.get("METADATA", "").splitlines()
                        if ln.startswith("Version:")), "0")  # fmt: skip
        info = PurePosixPath("/", recipe.GUEST_SITE, f"{PACKAGE}-{version}.dist-info")
        for name, text in dist.items():
            cpio.add_file(info / name, text.encode())
        cpio.add_file(info / "RECORD", b"")
        site = PurePosixPath("/", recipe.GUEST_SITE, PACKAGE)
        for rel in plugin_files(package_dir):
            cpio.add_host_file(site / rel.as_posix(), package_dir / rel)
        for rel in rootdir_files(rootdir):
            cpio.add_host_file(config.rootdir / rel.as_posix(), rootdir / rel)
        return cpio.ino - 400_000
