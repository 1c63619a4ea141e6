"""Where built selftests live, and which build a run should use.

Layout (one directory per kernel version, the ``OUTPUT=`` of the kvm selftests build)::

    <cache root>/selftests/<version>/             e.g. ~/.cache/pytest-kvmmm/selftests/6.12.117/
    <cache root>/selftests/<version>/x86_64/...   the build layout (x86/ since 6.14)
    <cache root>/selftests/<version>/manifest.json   written last: a build is complete only with it

The manifest is written after the build finished, so a directory without one is an
interrupted or running build and is never offered to a test run.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1
CACHE_ENV = "KVMMM_CACHE_DIR"


def default_cache_root(env: Mapping[str, str] | None = None) -> Path:
    """``$KVMMM_CACHE_DIR``, else ``$XDG_CACHE_HOME/pytest-kvmmm``, else ``~/.cache/pytest-kvmmm``."""
    env = os.environ if env is None else env
    if env.get(CACHE_ENV):
        return Path(env[CACHE_ENV]).expanduser()
    xdg = env.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path(env.get("HOME", "~")).expanduser() / ".cache"
    return base / "pytest-kvmmm"


def selftests_dir(cache_root: Path) -> Path:
    return cache_root / "selftests"


@dataclass(frozen=True)
class BuildManifest:
    """What one ``kvmmm-build`` run produced. Paths in ``built``/``failed`` are relative to the build dir."""

    kernel_version: str
    arch: str
    source: str
    built: Sequence[str] = field(default_factory=tuple)
    failed: Sequence[str] = field(default_factory=tuple)
    built_at: str = ""
    duration_s: float = 0.0
    format: int = MANIFEST_FORMAT

    def to_json(self) -> str:
        data = asdict(self)
        data["built"] = list(self.built)
        data["failed"] = list(self.failed)
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> BuildManifest:
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"not a format-{MANIFEST_FORMAT} build manifest")
        return cls(
            kernel_version=str(data["kernel_version"]),
            arch=str(data["arch"]),
            source=str(data["source"]),
            built=tuple(data.get("built", ())),
            failed=tuple(data.get("failed", ())),
            built_at=str(data.get("built_at", "")),
            duration_s=float(data.get("duration_s", 0.0)),
        )


def write_manifest(build_dir: Path, manifest: BuildManifest) -> None:
    """Atomically (write + rename), so a reader never sees half a manifest."""
    tmp = build_dir / (MANIFEST_NAME + ".tmp")
    tmp.write_text(manifest.to_json())
    os.replace(tmp, build_dir / MANIFEST_NAME)


def read_manifest(build_dir: Path) -> BuildManifest | None:
    """The manifest of a complete build, or None (missing, unreadable or another format)."""
    try:
        return BuildManifest.from_json((build_dir / MANIFEST_NAME).read_text())
    except (OSError, ValueError, KeyError, TypeError):
        return None


@dataclass(frozen=True)
class CachedBuild:
    path: Path
    manifest: BuildManifest


def version_key(version: str) -> tuple[int, ...]:
    """``"6.12.117"`` -> ``(6, 12, 117)``; ``"6.18.44-fc-v595"`` -> ``(6, 18, 44)``."""
    m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", version)
    if not m:
        return ()
    return tuple(int(part or 0) for part in m.groups())


def complete_builds(cache_root: Path) -> list[CachedBuild]:
    """Every complete build in the cache, newest kernel version first."""
    builds = []
    root = selftests_dir(cache_root)
    try:
        entries = sorted(root.iterdir())
    except OSError:
        return []
    for entry in entries:
        manifest = read_manifest(entry) if entry.is_dir() else None
        if manifest is not None:
            builds.append(CachedBuild(entry, manifest))
    builds.sort(key=lambda b: version_key(b.manifest.kernel_version), reverse=True)
    return builds


def choose_build(builds: Sequence[CachedBuild], running_release: str, arch: str) -> CachedBuild | None:
    """The build a run should use on a host running ``running_release``.

    Selftests are built to run on their own kernel or a newer one (a 6.10+ build refuses
    kernels before 6.8), so prefer the newest build that is not newer than the running
    kernel; fall back to the oldest build of the machine's arch when all are newer.
    """
    own = [b for b in builds if b.manifest.arch == arch]
    if not own:
        return None
    running = version_key(running_release)
    fitting = [b for b in own if not running or version_key(b.manifest.kernel_version) <= running]
    if fitting:
        return max(fitting, key=lambda b: version_key(b.manifest.kernel_version))
    return min(own, key=lambda b: version_key(b.manifest.kernel_version))


def journal_dir(host_root: Path, cache_root: Path | None = None) -> Path:
    """Where host-change journals live: one folder per host root, so changes made to a snapshot
    (in tests) are never "restored" onto the live host, and the other way round."""
    import hashlib

    base = (cache_root or default_cache_root()) / "journal"
    if host_root.resolve() == Path("/"):
        return base / "live"
    return base / hashlib.sha1(str(host_root.resolve()).encode()).hexdigest()[:12]
