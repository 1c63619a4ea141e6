"""Building the KVM selftests of one kernel source into ``selftests_dir(cache root)/<version>``.

The steps: locate the source, return at once if the cache already holds a complete build,
else (under a per-version lock) unpack, ``make headers``, ask make which programs the build
should produce, ``make -k`` them, and write the manifest last, so an interrupted build never
looks complete.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TextIO

from filelock import FileLock, Timeout

from pytest_kvmmm.provision.cache import BuildManifest, read_manifest, selftests_dir, write_manifest
from pytest_kvmmm.provision.source import (
    DEFAULT_PACKAGE,
    DEFAULT_TARBALL,
    KernelSource,
    ProvisionError,
    apt_install,
    cross_packages,
    cross_prefix,
    install_hint,
    kernel_srcarch,
    locate_source,
    normalize_machine,
    run,
    unpack_tarball,
    unpacked_identity,
)

KVM_DIR = "tools/testing/selftests/kvm"
HEADERS_LOG = "headers.log"
BUILD_LOG = "build.log"
# Appended with --eval so the kvm Makefile (and lib.mk, which prefixes $(OUTPUT)/) stays the
# only authority on what "all" builds for this arch and version.
_PRINT_RULE = "kvmmm-print-%: ; @:$(info kvmmm-var $*=$($*))"
_PROGRAM_VARS = ("TEST_GEN_PROGS", "TEST_GEN_PROGS_EXTENDED")


@dataclass(frozen=True)
class Target:
    """What the selftests are built for: the host (no make variables), or another arch,
    cross-compiled with ``ARCH=<srcarch> CROSS_COMPILE=<prefix>`` (``kvmmm-build --arch arm64``).

    A cross build gets its own cache directory and unpack (``<version>-<machine>``): ``make
    headers`` writes the target's uapi headers into the tree, so two arches cannot share one.
    """

    machine: str  # `uname -m` spelling, recorded in the manifest's arch for choose_build()
    srcarch: str  # the kernel's arch/ directory name
    make_vars: tuple[str, ...] = ()
    compiler: str = "gcc"
    #: Debian packages that provide ``compiler`` (and, for a cross build, the target's libc headers).
    packages: str = "build-essential"

    @classmethod
    def host(cls) -> Target:
        machine = platform.machine()
        return cls(machine, kernel_srcarch(machine))

    @classmethod
    def for_arch(
        cls, arch: str | None, cross_compile: str | None = None, host_machine: str | None = None
    ) -> Target:
        """``--arch``/``--cross-compile``: the host when both are unset or name the host's arch,
        else a cross build (``arm64`` -> ``ARCH=arm64 CROSS_COMPILE=aarch64-linux-gnu-``)."""
        host_machine = host_machine or platform.machine()
        machine = normalize_machine(arch) if arch else host_machine
        if machine == host_machine and not cross_compile:
            return cls(machine, kernel_srcarch(machine))
        prefix = cross_compile or cross_prefix(machine)
        return cls(
            machine,
            kernel_srcarch(machine),
            (f"ARCH={kernel_srcarch(machine)}", f"CROSS_COMPILE={prefix}"),
            f"{prefix}gcc",
            cross_packages(machine, prefix),
        )

    @property
    def cross(self) -> bool:
        return bool(self.make_vars)

    def dir_name(self, version: str) -> str:
        """``6.12.117`` for the host, ``6.12.117-aarch64`` for a cross build."""
        return f"{version}-{self.machine}" if self.cross else version


@dataclass(frozen=True)
class BuildOptions:
    cache_root: Path  # absolute: it becomes make's OUTPUT
    jobs: int
    target: Target
    allow_apt: bool = True
    is_root: bool = False
    force: bool = False
    progress: TextIO | None = None  # one line per step; None is silent


@dataclass(frozen=True)
class BuildResult:
    build_dir: Path
    manifest: BuildManifest
    cached: bool = False  # True when the cache already held the build
    notes: Sequence[str] = field(default_factory=tuple)


@contextmanager
def step(progress: TextIO | None, label: str, prefix: str = "kvmmm-build:") -> Iterator[None]:
    """``kvmmm-build: <label> ... 4.2 s`` on one line; the line is closed even on failure."""
    if progress is None:
        yield
        return
    progress.write(f"{prefix} {label} ...")
    progress.flush()
    start = time.monotonic()
    try:
        yield
    except BaseException:
        progress.write(" failed\n")
        raise
    progress.write(f" {time.monotonic() - start:.1f} s\n")
    progress.flush()


def parse_program_list(make_output: str, output: Path) -> list[str]:
    """Programs from the ``kvmmm-var`` lines, relative to ``output``, in make's order, once each."""
    prefix = f"{output}/"
    programs: dict[str, None] = {}
    for line in make_output.splitlines():
        m = re.match(r"kvmmm-var (\w+)=(.*)$", line)
        if m and m.group(1) in _PROGRAM_VARS:
            for word in m.group(2).split():
                programs[word[len(prefix) :] if word.startswith(prefix) else word] = None
    return list(programs)


def split_built(build_dir: Path, programs: Sequence[str]) -> tuple[list[str], list[str]]:
    """``(built, failed)``: a program is built when make left an executable file for it."""
    built: list[str] = []
    failed: list[str] = []
    for program in programs:
        path = build_dir / program
        ok = path.is_file() and os.access(path, os.X_OK)
        (built if ok else failed).append(program)
    return built, failed


def first_error(log: Path) -> str:
    """The first compiler/make error in a log, for a one-line message."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return "no log"
    errors = [ln.strip() for ln in lines if re.search(r"error:|\*\*\*|Error \d+", ln)]
    return errors[0] if errors else (lines[-1].strip() if lines else "no output")


def run_logged(args: list[str], log: Path) -> int:
    """Run with stdout+stderr into ``log`` (headed by the command line); the exit status."""
    with log.open("w") as fh:
        fh.write("$ " + " ".join(args) + "\n")
        fh.flush()
        return run(args, stdout=fh, stderr=subprocess.STDOUT).returncode


def ensure_installed(
    package: str, problem: Callable[[], str | None], opts: BuildOptions, alternative: str = ""
) -> None:
    """Fix ``problem()`` by apt-installing ``package`` when allowed, else say what to run as root."""
    what = problem()
    if what is None:
        return
    hint = install_hint(package, allow_apt=opts.allow_apt, is_root=opts.is_root)
    if hint is not None:
        raise ProvisionError(f"{what}: {hint}{alternative}")
    with step(opts.progress, f"apt-get install -y {package}"):
        apt_install(package)
    what = problem()
    if what is not None:
        raise ProvisionError(f"`apt-get install -y {package}` succeeded, but {what}")


def missing_tools(target: Target) -> str | None:
    missing = [tool for tool in ("make", target.compiler) if shutil.which(tool) is None]
    return f"{' and '.join(missing)} not found, needed to build" if missing else None


def list_programs(tree: Path, build_dir: Path, target: Target) -> list[str]:
    """What ``make all`` in the kvm directory should produce, as paths relative to ``build_dir``."""
    args = ["make", "-s", "--no-print-directory", "-C", str(tree / KVM_DIR),
            f"--eval={_PRINT_RULE}", f"OUTPUT={build_dir}", *target.make_vars,
            *(f"kvmmm-print-{var}" for var in _PROGRAM_VARS)]  # fmt: skip
    proc = run(args, capture_output=True)
    programs = parse_program_list(proc.stdout, build_dir) if proc.returncode == 0 else []
    if not programs:
        why = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "an empty list"
        raise ProvisionError(f"cannot list the kvm selftests of {tree} for {target.machine}: {why}")
    return programs


def source_tree(source: KernelSource, opts: BuildOptions) -> Path:
    """The tree to build in: the source itself, or its unpack (made now unless already there)."""
    if source.top is None:
        return source.path
    dest = opts.cache_root / "src" / opts.target.dir_name(source.version)
    if unpacked_identity(dest) != source.identity:
        with step(opts.progress, f"unpacking {source.path.name} into {dest}"):
            unpack_tarball(source.path, dest, source.top, opts.target.srcarch, source.identity)
    return dest


def build(source: KernelSource, tree: Path, build_dir: Path, opts: BuildOptions) -> BuildResult:
    """Headers, program list, ``make -k``; the manifest is written only once something built."""
    start = time.monotonic()
    shutil.rmtree(build_dir, ignore_errors=True)  # start clean: no stale binary may count as built
    build_dir.mkdir(parents=True)
    jobs = f"-j{opts.jobs}"
    headers_log = build_dir / HEADERS_LOG
    with step(opts.progress, f"make headers {jobs} (log: {headers_log})"):
        args = ["make", "-C", str(tree), jobs, *opts.target.make_vars, "headers"]
        if run_logged(args, headers_log) != 0:
            raise ProvisionError(
                f"`make headers` failed in {tree}: {first_error(headers_log)} (log: {headers_log})"
            )
    programs = list_programs(tree, build_dir, opts.target)
    build_log = build_dir / BUILD_LOG
    with step(opts.progress, f"building {len(programs)} kvm selftests {jobs} (log: {build_log})"):
        args = ["make", "-k", "-C", str(tree / KVM_DIR), f"OUTPUT={build_dir}", jobs,
                *opts.target.make_vars]  # fmt: skip
        status = run_logged(args, build_log)
    built, failed = split_built(build_dir, programs)
    if not built:
        raise ProvisionError(
            f"none of the {len(programs)} kvm selftests built: {first_error(build_log)} "
            f"(log: {build_log})"
        )
    notes = []
    if status != 0 and not failed:
        notes.append(f"make reported errors outside the test programs (see {build_log})")
    manifest = BuildManifest(
        kernel_version=source.version,
        arch=opts.target.machine,
        source=str(source.path),
        built=tuple(built),
        failed=tuple(failed),
        built_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        duration_s=round(time.monotonic() - start, 1),
    )
    write_manifest(build_dir, manifest)
    return BuildResult(build_dir, manifest, notes=tuple(notes))


def provision(source_arg: Path | None, opts: BuildOptions) -> BuildResult:
    """The complete build of ``source_arg`` (default: Debian's linux-source-6.12), building if needed.

    One build per version at a time: a second run waits on ``<version>.lock`` (kept beside the
    build dir, which a build wipes) and then finds the cache complete.
    """
    if source_arg is None:
        tarball = DEFAULT_TARBALL
        ensure_installed(
            DEFAULT_PACKAGE,
            lambda: None if tarball.is_file() else f"{tarball} is missing",
            opts,
            alternative=", or pass --source DIR|FILE",
        )
        source_arg = tarball
    source = locate_source(source_arg, opts.cache_root)
    name = opts.target.dir_name(source.version)
    build_dir = selftests_dir(opts.cache_root) / name
    manifest = None if opts.force else read_manifest(build_dir)
    if manifest is not None:
        return BuildResult(build_dir, manifest, cached=True)
    if any(ch.isspace() for ch in str(build_dir)):
        raise ProvisionError(
            f"make cannot build in {build_dir} (whitespace): pass another --cache-dir"
        )
    ensure_installed(opts.target.packages, lambda: missing_tools(opts.target), opts)
    build_dir.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(build_dir.parent / f"{name}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if opts.progress is not None:
            opts.progress.write(f"kvmmm-build: waiting for another build of {name}\n")
        lock.acquire()
    try:
        manifest = None if opts.force else read_manifest(build_dir)
        if manifest is not None:
            return BuildResult(build_dir, manifest, cached=True)
        return build(source, source_tree(source, opts), build_dir, opts)
    finally:
        lock.release()
