"""The per-boot part of a lab host's initramfs: /init, the server, the host's settings, and
a copy of the plugin at the same absolute path as on the controller.

Built at every boot (a few milliseconds), so the cached image never goes stale when the plugin's
code changes, and the guest always runs the code the controller runs.
"""

from __future__ import annotations

import importlib.metadata
import shlex
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from . import recipe
from .cpio import CpioWriter

GUEST_DIR = Path(__file__).resolve().parent / "guest"
GUEST_PORT = 8888  # inside the guest; QEMU forwards the host's 127.0.0.1:<port> to it
#: What of the repository the guest needs: the package, and what makes the rootdir the same.
REPO_FILES = ("pyproject.toml", "conftest.py", "setup.cfg", "pytest.ini", "tox.ini")
PACKAGE = "pytest_kvmmm"


@dataclass(frozen=True)
class GuestConfig:
    hostname: str
    repo: PurePosixPath  # the controller's repository (rootdir), recreated in the guest
    share: PurePosixPath | None  # host directory mounted at the same path (results, Allure)
    modules: tuple[str, ...]
    port: int = GUEST_PORT

    def shell(self) -> str:
        """/etc/kvmmm-lab/config, sourced by /init."""
        values = {
            "KVMMM_HOSTNAME": self.hostname,
            "KVMMM_REPO": str(self.repo),
            "KVMMM_SHARE": "" if self.share is None else str(self.share),
            "KVMMM_MODULES": " ".join(self.modules),
            "KVMMM_PORT": str(self.port),
        }
        return "".join(f"{k}={shlex.quote(v)}\n" for k, v in values.items())


def plugin_files(repo: Path) -> Iterator[Path]:
    """The repository files the guest gets, relative to ``repo``: the package's sources and
    the files that decide pytest's rootdir and ini options."""
    for name in REPO_FILES:
        if (repo / name).is_file():
            yield Path(name)
    for path in sorted((repo / PACKAGE).rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix in (".py", ".typed", ".json", ""):
            yield path.relative_to(repo)


def dist_info(dist: str = "pytest-kvmmm") -> Mapping[str, str]:
    """METADATA and entry_points.txt of the installed plugin, so pytest in the guest loads it
    through its ``pytest11`` entry point exactly as on the controller."""
    d = importlib.metadata.distribution(dist)
    files = {"METADATA": d.read_text("METADATA") or f"Metadata-Version: 2.1\nName: {dist}\nVersion: {d.version}\n"}
    entry_points = d.read_text("entry_points.txt")
    if entry_points:
        files["entry_points.txt"] = entry_points
    return files


def write_overlay(out_path: Path, config: GuestConfig, repo: Path, dist: Mapping[str, str]) -> int:
    """The overlay cpio; returns its number of entries."""
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
        cpio.add_file(PurePosixPath("/", recipe.GUEST_SITE, "kvmmm-lab.pth"), f"{config.repo}\n".encode())
        for rel in plugin_files(repo):
            cpio.add_host_file(config.repo / rel.as_posix(), repo / rel)
        return cpio.ino - 400_000
