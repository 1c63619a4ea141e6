"""Finding a kernel source, learning its version, and unpacking just enough of a tarball.

A source is a kernel tree (a directory) or a ``linux-source-*.tar.xz``, by default Debian's
``linux-source-6.12`` package. Only a tarball is unpacked, into ``<cache root>/src/<version>/``,
and only the members the KVM selftests build needs (see :func:`tarball_members`): about an
eighth of the tarball, so the unpack costs little more than decompressing it.

Subprocesses are always argument lists, never a shell.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

DEFAULT_PACKAGE = "linux-source-6.12"
DEFAULT_TARBALL = Path("/usr/src/linux-source-6.12.tar.xz")
INDEX_NAME = "sources.json"
UNPACKED_MARKER = ".kvmmm-source"

# `uname -m` -> the kernel's arch/ directory (SRCARCH), for the machines the KVM selftests support.
_SRCARCH = {
    "x86_64": "x86",
    "aarch64": "arm64",
    "s390x": "s390",
    "riscv64": "riscv",
    "loongarch64": "loongarch",
}

# Top-level files and directories the build reads, found by tracing `make headers` and the kvm
# selftests build (strace, 6.12) and kept at directory granularity so other versions still build.
_TOP_FILES = ("Makefile", "Kbuild", "Kconfig")
_TOP_DIRS = ("scripts", "include")  # Kbuild machinery + unifdef; include/uapi is the header source
_TOOLS_DIRS = (
    "tools/include",  # the tools' copy of kernel headers (-I in the kvm Makefile)
    "tools/build",  # Build.include, included by the kvm Makefile
    "tools/lib",  # rbtree.c and friends compiled into libkvm
    "tools/scripts",  # Makefile.include, needed by arm64's sysreg header generator
    "tools/testing/selftests",  # kvm/, lib.mk, kselftest headers, ../rseq, ../cgroup/lib (6.15+)
)


class ProvisionError(Exception):
    """A failure the user can act on; its message is one line saying what went wrong and what to do."""


def kernel_srcarch(machine: str) -> str:
    """``"x86_64"`` -> ``"x86"``: the ``arch/`` directory the headers and selftests come from."""
    try:
        return _SRCARCH[machine]
    except KeyError:
        raise ProvisionError(
            f"the KVM selftests do not support machine {machine!r} "
            f"(supported: {', '.join(sorted(_SRCARCH))})"
        ) from None


def parse_kernel_version(makefile_text: str) -> str | None:
    """The version the top-level Makefile declares, as ``make kernelversion`` prints it.

    ``VERSION = 6``/``PATCHLEVEL = 12``/``SUBLEVEL = 117``/``EXTRAVERSION =`` -> ``"6.12.117"``.
    None when it is not a kernel Makefile. The result names a cache directory, so anything
    beyond plain version characters is refused rather than escaped.
    """
    fields = {}
    for key in ("VERSION", "PATCHLEVEL", "SUBLEVEL", "EXTRAVERSION"):
        m = re.search(rf"^{key}\s*=[ \t]*(\S*)[ \t]*$", makefile_text, re.MULTILINE)
        fields[key] = m.group(1) if m else None
    if not (fields["VERSION"] or "").isdigit() or not (fields["PATCHLEVEL"] or "").isdigit():
        return None
    version = f"{fields['VERSION']}.{fields['PATCHLEVEL']}"
    if fields["SUBLEVEL"]:
        version += f".{fields['SUBLEVEL']}"
    version += fields["EXTRAVERSION"] or ""
    return version if re.fullmatch(r"\d+\.\d+(\.\d+)?[\w.+~-]*", version) else None


def tree_version(tree: Path) -> str:
    """The version of a kernel tree given by path, after checking it has the kvm selftests."""
    if not (tree / "tools/testing/selftests/kvm/Makefile").is_file():
        raise ProvisionError(
            f"{tree} is not a kernel source tree (no tools/testing/selftests/kvm/Makefile)"
        )
    try:
        version = parse_kernel_version((tree / "Makefile").read_text(errors="replace"))
    except OSError as exc:
        raise ProvisionError(f"cannot read {tree / 'Makefile'}: {exc.strerror}") from None
    if version is None:
        raise ProvisionError(f"{tree}/Makefile declares no kernel VERSION/PATCHLEVEL")
    return version


def tarball_members(top: str, srcarch: str) -> list[str]:
    """The archive members to extract: everything the headers and the selftests build read.

    ``arch/<srcarch>`` is whole because ``make headers`` reads its Makefile, uapi headers,
    syscall tables (``entry/syscalls``) and ``tools/``; ``tools/arch/<srcarch>`` holds the
    tools' arch headers (and arm64's sysreg generator). Drivers, fs, Documentation and the
    other architectures, 85% of the tarball, are never read.
    """
    paths = [*_TOP_FILES, *_TOP_DIRS, f"arch/{srcarch}", f"tools/arch/{srcarch}", *_TOOLS_DIRS]
    return [f"{top}/{path}" for path in paths]


def tar_error(stderr: str) -> str:
    """tar's first own complaint, without its generic "Exiting with failure status" trailer."""
    generic = ("Exiting with failure status", "Error is not recoverable", "Child returned status")
    for line in stderr.splitlines():
        line = line.strip()
        if line and not any(g in line for g in generic):
            return line
    return stderr.strip().splitlines()[-1] if stderr.strip() else "tar failed"


def peek_tarball(tarball: Path) -> tuple[str, str]:
    """``(top directory, version)`` of a kernel tarball, reading only up to its top Makefile.

    ``--occurrence=1`` stops tar at the first match, so this reads ~10% of the stream
    (0.5 s for linux-source-6.12) instead of all of it.
    """
    args = ["tar", "-xOvf", str(tarball), "--wildcards", "--no-wildcards-match-slash",
            "--occurrence=1", "*/Makefile"]  # fmt: skip
    proc = subprocess.run(args, capture_output=True, text=True, errors="replace")
    names = proc.stderr.splitlines()
    top = names[0].split("/", 1)[0] if proc.returncode == 0 and names else ""
    version = parse_kernel_version(proc.stdout) if top else None
    if version is None:
        why = tar_error(proc.stderr) if proc.returncode else "no top-level Makefile with VERSION"
        raise ProvisionError(f"{tarball} is not a kernel source tarball ({why})")
    return top, version


def unpack_tarball(tarball: Path, dest: Path, top: str, srcarch: str, identity: str) -> None:
    """Extract :func:`tarball_members` into ``dest`` (top directory stripped).

    Extracts into ``dest.partial`` and renames, so an existing ``dest`` is always a complete
    unpack; its marker file records which tarball it came from.
    """
    partial = dest.with_name(dest.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    args = ["tar", "-xf", str(tarball), "-C", str(partial), "--strip-components=1",
            "--no-same-owner", *tarball_members(top, srcarch)]  # fmt: skip
    env = {**os.environ, "XZ_OPT": "-T0"}  # multi-threaded xz: 8 s -> 4 s for 6.12 on 2 CPUs
    proc = subprocess.run(args, capture_output=True, text=True, errors="replace", env=env)
    if proc.returncode != 0:
        shutil.rmtree(partial, ignore_errors=True)
        raise ProvisionError(f"unpacking {tarball} failed: {tar_error(proc.stderr)}")
    (partial / UNPACKED_MARKER).write_text(identity + "\n")
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(partial, dest)


def unpacked_identity(dest: Path) -> str | None:
    try:
        return (dest / UNPACKED_MARKER).read_text().strip()
    except OSError:
        return None


def tarball_identity(tarball: Path) -> str:
    """realpath, size and mtime: changes whenever apt replaces the tarball, costs one stat."""
    st = tarball.stat()
    return f"{os.path.realpath(tarball)}:{st.st_size}:{st.st_mtime_ns}"


@dataclass
class SourceIndex:
    """``<cache root>/sources.json``: tarball identity -> version, so a warm run never opens the tarball.

    Only a hint: a lost or stale entry costs one :func:`peek_tarball`, so concurrent writers
    need no lock, just an atomic replace.
    """

    path: Path

    def _load(self) -> dict[str, str]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def lookup(self, identity: str) -> str | None:
        return self._load().get(identity)

    def record(self, identity: str, version: str) -> None:
        data = self._load()
        data[identity] = version
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, self.path)


def apt_install(package: str) -> None:
    """``apt-get install -y <package>``, after ``apt-get update`` if the lists do not know it yet."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", package]
    proc = subprocess.run(install, capture_output=True, text=True, errors="replace", env=env)
    if proc.returncode != 0 and "Unable to locate package" in proc.stderr + proc.stdout:
        subprocess.run(["apt-get", "update"], capture_output=True, env=env)
        proc = subprocess.run(install, capture_output=True, text=True, errors="replace", env=env)
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        raise ProvisionError(
            f"`{' '.join(install)}` failed: {lines[-1] if lines else f'exit {proc.returncode}'}"
        )


def install_hint(package: str, *, allow_apt: bool, is_root: bool) -> str | None:
    """Why we may not apt-install ``package`` and what the user runs instead; None when we may."""
    command = f"apt-get install -y {package}"
    if not allow_apt:
        return f"run `{command}` as root (--no-apt forbids installing it)"
    if not is_root:
        return f"run `{command}` as root"
    if shutil.which("apt-get") is None:
        return f"install {package} (no apt-get on this system)"
    return None


def ensure_default_tarball(tarball: Path, *, allow_apt: bool, is_root: bool) -> Path:
    """The default source, apt-installing ``linux-source-6.12`` when it is missing and allowed."""
    if tarball.is_file():
        return tarball
    hint = install_hint(DEFAULT_PACKAGE, allow_apt=allow_apt, is_root=is_root)
    if hint is not None:
        raise ProvisionError(f"{tarball} is missing: {hint}, or pass --source DIR|FILE")
    apt_install(DEFAULT_PACKAGE)
    if not tarball.is_file():
        raise ProvisionError(f"{DEFAULT_PACKAGE} is installed but {tarball} is still missing")
    return tarball
