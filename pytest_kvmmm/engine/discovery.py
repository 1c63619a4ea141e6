"""Finding a selftest binary: which directories to search, in which layouts, under which names.

Pure apart from ``stat`` calls. The search order is the user's explicit directory
(``--kvm-selftests`` > ``$KVMMM_SELFTESTS_DIR`` (or its older name ``$KVM_SELFTESTS_DIR``) >
ini ``kvm_selftests``, resolved by ``pytest/invocation.py``: the first one set
wins and is the only place searched, so a run never silently uses another build), else
the ``kvmmm-build`` cache, else the places distributions install kselftests.

Inside a directory both layouts are accepted: the build layout, where arch-specific
tests sit in an arch subfolder (``x86_64/`` up to 6.13, ``x86/`` since 6.14; ``aarch64/``
or ``arm64/``), and the flat ``make install`` layout (``<dir>/kvm/<test>`` or ``<dir>/<test>``).
"""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..provision.cache import MANIFEST_NAME, choose_build, complete_builds, read_manifest

#: The selftests directory's variable (the plugin's one prefix, KVMMM_), and its name before
#: the prefix, still honoured after it.
ENV_VAR = "KVMMM_SELFTESTS_DIR"
LEGACY_ENV_VAR = "KVM_SELFTESTS_DIR"
DISTRO_DIRS = (
    Path("/usr/libexec/kselftests/kvm"),  # Fedora/RHEL kernel-selftests-internal
    Path("/usr/lib/kselftests/kvm"),
)

#: Arch subfolders of the build layout, per ``platform.machine()``; old name first.
ARCH_DIRS: Mapping[str, tuple[str, ...]] = {
    "x86_64": ("x86_64", "x86"),
    "aarch64": ("aarch64", "arm64"),
    "arm64": ("aarch64", "arm64"),
    "s390x": ("s390x", "s390"),
    "riscv64": ("riscv",),
    "loongarch64": ("loongarch",),
}

#: Selftests renamed upstream: old name -> the names it has had since (6.14 renamed
#: max_guest_memory_test to mmu_stress_test). A build is searched under every name; the
#: catalogue's entries take their ``aliases`` from here.
RENAMED: Mapping[str, tuple[str, ...]] = {"max_guest_memory_test": ("mmu_stress_test",)}


def _aliases() -> dict[str, tuple[str, ...]]:
    """Every other name of a selftest, both ways."""
    out: dict[str, tuple[str, ...]] = {}
    for name, others in RENAMED.items():
        for alias in others:
            out[name] = (*out.get(name, ()), alias)
            out[alias] = (*out.get(alias, ()), name)
    return out


ALIASES: Mapping[str, tuple[str, ...]] = _aliases()

BUILD_HINT = "build them with `kvmmm-build` (or point --kvm-selftests=DIR or $KVMMM_SELFTESTS_DIR at a build)"


@dataclass(frozen=True)
class SearchRoot:
    path: Path
    #: Where this root came from, for messages: "--kvm-selftests", "cache 6.12.117", ...
    origin: str


@dataclass(frozen=True)
class Found:
    path: Path
    root: SearchRoot
    name: str


@dataclass(frozen=True)
class NotFound:
    name: str
    searched: tuple[SearchRoot, ...]
    #: A file that exists under the name but cannot be executed, if any.
    not_executable: Path | None = None

    def absent_by_design(self) -> bool:
        """The build's manifest says its kernel never builds this program for this architecture."""
        names = (self.name, *ALIASES.get(self.name, ()))
        return self.not_executable is None and _not_in_build(names, self.searched) is not None

    def reason(self) -> str:
        if self.not_executable is not None:
            return (
                f"{self.name}: {self.not_executable} exists but is not executable "
                f"(chmod +x it, or rebuild with `kvmmm-build --force`)"
            )
        # A kvmmm-build build that never had the program: its kernel's Makefile does not build
        # it for this architecture, so building again cannot help. Read only when reported.
        not_in_build = _not_in_build((self.name, *ALIASES.get(self.name, ())), self.searched)
        if not_in_build is not None:
            return not_in_build
        if not self.searched:
            return f"{self.name}: no KVM selftests found anywhere; {BUILD_HINT}"
        where = ", ".join(f"{r.path} ({r.origin})" for r in self.searched)
        return f"{self.name} not found in {where}; {BUILD_HINT}"


def search_roots(
    explicit: SearchRoot | None,
    cache_root: Path,
    kernel_release: str,
    machine: str | None = None,
    distro_dirs: Sequence[Path] = DISTRO_DIRS,
) -> tuple[SearchRoot, ...]:
    """Where to look, in order. An explicit root is searched alone."""
    if explicit is not None:
        return (explicit,)
    roots: list[SearchRoot] = []
    build = choose_build(complete_builds(cache_root), kernel_release, machine or platform.machine())
    if build is not None:
        roots.append(SearchRoot(build.path, f"kvmmm-build cache {build.manifest.kernel_version}"))
    roots.extend(SearchRoot(d, "distro kselftests") for d in distro_dirs if d.is_dir())
    return tuple(roots)


def _candidates(root: Path, name: str, machine: str) -> list[Path]:
    bases = [root, root / "kvm"]
    paths = []
    for base in bases:
        paths.append(base / name)
        paths.extend(base / arch / name for arch in ARCH_DIRS.get(machine, ()))
    return paths


def find_binary(
    name: str, roots: Sequence[SearchRoot], machine: str | None = None
) -> Found | NotFound:
    """The first executable file for ``name`` (or an alias) in ``roots``."""
    machine = machine or platform.machine()
    names = (name, *ALIASES.get(name, ()))
    not_executable: Path | None = None
    for root in roots:
        for candidate_name in names:
            for path in _candidates(root.path, candidate_name, machine):
                if path.is_file():
                    if os.access(path, os.X_OK):
                        return Found(path, root, candidate_name)
                    not_executable = not_executable or path
    return NotFound(name, tuple(roots), not_executable)


def _not_in_build(names: Sequence[str], roots: Sequence[SearchRoot]) -> str | None:
    """Why no build has ``names``, when every searched root is a ``kvmmm-build`` build whose
    manifest lists neither a built nor a failed program of that name (arch subfolders included)."""
    manifests = [(root, read_manifest(root.path)) for root in roots]
    if not manifests or any(m is None for _, m in manifests):
        return None
    for _root, manifest in manifests:
        assert manifest is not None
        programs = {p.rsplit("/", 1)[-1] for p in (*manifest.built, *manifest.failed)}
        if programs & set(names):
            return None
    root, manifest = manifests[0]
    assert manifest is not None
    return (
        f"{names[0]} is not among the programs the {manifest.kernel_version} KVM selftests build for "
        f"{manifest.arch} (the kernel's Makefile has no such test there; {root.path}/{MANIFEST_NAME}); "
        "a newer kernel's selftests may have it"
    )
