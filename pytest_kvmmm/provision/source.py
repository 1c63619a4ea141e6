"""Finding a kernel source, learning its version, and unpacking just enough of a tarball.

A source is a kernel tree (a directory) or a ``linux-source-*.tar.xz``, by default Debian's
``linux-source-6.12`` package. Only a tarball is unpacked, into ``<cache root>/src/<version>/``,
and only the members the KVM selftests build needs (see :func:`tarball_members`): 38 MB of
its 1.5 GB, so the unpack costs little more than decompressing it.

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
from typing import Any

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

#: Other spellings of a machine (kernel arch/ names, Debian architectures) -> `uname -m`.
_MACHINE_ALIASES = {
    "arm64": "aarch64", "x86": "x86_64", "amd64": "x86_64", "s390": "s390x",
    "riscv": "riscv64", "loongarch": "loongarch64", "loong64": "loongarch64",
}  # fmt: skip
#: `uname -m` -> Debian's architecture name, which names its cross toolchain packages.
_DEBIAN_ARCH = {
    "x86_64": "amd64", "aarch64": "arm64", "s390x": "s390x", "riscv64": "riscv64",
    "loongarch64": "loong64",
}  # fmt: skip

# What `make headers` and the kvm selftests build read, found by tracing both (strace, 6.12)
# and widened to whole directories where the need varies by arch or version. Every member
# dates from before 5.0 (checked on 6.12 only); tar fails on a missing one, so keep it so.
_MEMBERS = (
    "Makefile",  # includes arch/$(SRCARCH)/Makefile and scripts/*; defines `headers`
    "Kbuild",
    "Kconfig",
    "scripts",  # Kbuild machinery, unifdef, headers_install.sh, syscall table scripts
    "include/uapi",  # the only part of include/ that `make headers` exports (not include/linux)
    "arch/{srcarch}",  # arch Makefile, uapi headers, syscall tables, archscripts tools
    "tools/include",  # the tools' copy of kernel headers (-I in the kvm Makefile)
    "tools/arch/{srcarch}",  # the tools' arch headers (-I), arm64's sysreg generator
    "tools/build",  # Build.include, included by the kvm Makefile
    "tools/lib",  # rbtree.c, compiled into libkvm
    "tools/scripts",  # Makefile.include, included by arm64's sysreg generator
    "tools/testing/selftests/kvm",
    "tools/testing/selftests/lib.mk",
    "tools/testing/selftests/kselftest.h",
    "tools/testing/selftests/kselftest_harness.h",
    "tools/testing/selftests/rseq",  # rseq.c, compiled into rseq_test (-I ../rseq)
    "tools/testing/selftests/cgroup",  # cgroup/lib: libkvm links it in the newest kernels
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


def normalize_machine(arch: str) -> str:
    """``--arch`` as given (``arm64``, ``aarch64``, ``amd64``...) -> the ``uname -m`` spelling."""
    machine = _MACHINE_ALIASES.get(arch.strip().lower(), arch.strip().lower())
    kernel_srcarch(machine)  # refuses a machine the KVM selftests do not support
    return machine


def cross_prefix(machine: str) -> str:
    """The GNU triplet prefix of Debian's cross compiler: ``aarch64`` -> ``aarch64-linux-gnu-``."""
    return f"{machine}-linux-gnu-"


def cross_packages(machine: str, prefix: str) -> str:
    """Debian's packages for a cross build: ``gcc-aarch64-linux-gnu libc6-dev-arm64-cross``.

    libc6-dev-<arch>-cross is only a Recommends of the compiler, and the selftests need it.
    """
    return f"gcc-{prefix.rstrip('-')} libc6-dev-{_DEBIAN_ARCH.get(machine, machine)}-cross"


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

    38 MB of the 1.5 GB tarball for 6.12 on x86. Unpacking drivers, fs, Documentation, the
    other architectures and the other selftests too would not change the build, but writing
    them would double or triple the unpack time.
    """
    return [f"{top}/{member.format(srcarch=srcarch)}" for member in _MEMBERS]


def run(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """``subprocess.run`` on an argument list, as text; a missing program is a :class:`ProvisionError`."""
    try:
        return subprocess.run(args, text=True, errors="replace", **kwargs)
    except FileNotFoundError:
        raise ProvisionError(f"{args[0]} not found: install it or fix PATH") from None


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
    proc = run(args, capture_output=True)
    names = [line for line in proc.stderr.splitlines() if not line.startswith("tar: ")]
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
    env = {**os.environ, "XZ_OPT": "-T0"}  # xz threads: 6.7 s -> 3.6 s for 6.12.117 on 2 CPUs
    proc = run(args, capture_output=True, env=env)
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


@dataclass(frozen=True)
class KernelSource:
    """A located source: a kernel tree (``top`` is None) or a tarball whose top directory is ``top``."""

    path: Path
    version: str
    identity: str
    top: str | None = None


@dataclass(frozen=True)
class SourceIndex:
    """``<cache root>/sources.json``: tarball identity -> top directory and version.

    Lets a warm run skip opening the tarball. Only a hint: a lost or stale entry costs one
    :func:`peek_tarball`, so concurrent writers need no lock, just an atomic replace.
    """

    path: Path

    def _load(self) -> dict[str, list[str]]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def lookup(self, identity: str) -> tuple[str, str] | None:
        entry = self._load().get(identity)
        if isinstance(entry, list) and len(entry) == 2 and all(isinstance(e, str) for e in entry):
            return entry[0], entry[1]
        return None

    def record(self, identity: str, top: str, version: str) -> None:
        data = self._load()
        data[identity] = [top, version]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, self.path)


def locate_source(arg: Path, cache_root: Path) -> KernelSource:
    """The kernel tree or tarball at ``arg``, with its version.

    A tree's version is read from its Makefile; a tarball's from the index, else by peeking.
    """
    if arg.is_dir():
        return KernelSource(arg.resolve(), tree_version(arg), str(arg.resolve()))
    if not arg.is_file():
        raise ProvisionError(f"--source {arg}: no such file or directory")
    identity = tarball_identity(arg)
    index = SourceIndex(cache_root / INDEX_NAME)
    known = index.lookup(identity)
    if known is None:
        known = peek_tarball(arg)
        index.record(identity, *known)
    top, version = known
    return KernelSource(arg.resolve(), version, identity, top)


def apt_install(package: str) -> None:
    """``apt-get install -y <package>``, after ``apt-get update`` if the lists do not know it yet.

    ``package`` may name several packages separated by spaces (a cross toolchain and its libc).
    """
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", *package.split()]
    proc = run(install, capture_output=True, env=env)
    if proc.returncode != 0 and "Unable to locate package" in proc.stderr + proc.stdout:
        run(["apt-get", "update"], capture_output=True, env=env)
        proc = run(install, capture_output=True, env=env)
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
