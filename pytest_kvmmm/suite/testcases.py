"""The upstream KVM selftest runner's test-case files (``*.test``): read them, and write the catalogue's.

The runner proposed for ``tools/testing/selftests/kvm/runner/`` describes each case as a file
holding one command line, the binary's path relative to the KVM selftests directory followed
by its arguments (``tests/dirty_log_perf_test/2slot_5vcpu_10iter.test`` holds
``dirty_log_perf_test -x 2 -v 5 -i 10``; ``make tests_install`` writes
``testcases_default_gen/<test>/default.test`` for every selftest). The runner hands that line
to a shell; this plugin never uses one, so a line that needs a shell (a pipe, a redirection,
a variable, ``;``) is refused with the reason instead of being half-understood.

Writing the catalogue's cases as such files lets one set of cases serve both runners: each
case's arguments at a scale, uncapped (the upstream runner does not cap to the host), in
``<dir>/<program path>/<case id>.test`` (``<scale>_scale.test`` for a case with no variant or
backing), the layout of upstream's ``testcases_default_gen``. Pure: no pytest import.
"""

from __future__ import annotations

import os
import re
import shlex
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import cast

from ..coordination.safefs import UnsafePath, replace_file
from ..engine.guest_modes import DEFAULT_MODE
from ..engine.requirements import Arch
from ..host.model import HostFacts
from .all_kvm import ARCH_MACHINES, DEFAULT_VERSION, selftest_path
from .cases import Case, cases
from .catalogue import CATALOGUE, Run
from .scale import fit

SUFFIX = ".test"
#: A test-case file is one command line: anything longer is not one (bounded read).
MAX_BYTES = 64 * 1024
#: Characters that only mean something to a shell.
_SHELL = re.compile(r"[|&;<>()$`\\\"'*?\[\]{}~]")
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


class TestcaseError(ValueError):
    """A test-case file this plugin cannot run as it stands; the message says why."""

    __test__ = False


@dataclass(frozen=True)
class Testcase:
    """One ``.test`` file: the binary (as the file names it, maybe ``x86_64/<name>``) and its arguments."""

    __test__ = False

    binary: str
    args: tuple[str, ...]

    @property
    def name(self) -> str:
        """The binary's own name, as the plugin's discovery looks it up (arch folders are searched)."""
        return PurePosixPath(self.binary).name

    def line(self) -> str:
        return shlex.join((self.binary, *self.args))


def parse(text: str) -> Testcase:
    """The command of a ``.test`` file's text."""
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    if not lines:
        raise TestcaseError("empty test command")
    if len(lines) > 1:
        raise TestcaseError(f"{len(lines)} lines: a test-case file holds one command line")
    words = lines[0].split()
    if _ASSIGNMENT.match(words[0]):
        raise TestcaseError(f"{words[0]!r}: environment assignments need a shell, which this plugin does not use")
    shell = sorted({c for w in words for c in _SHELL.findall(w)})
    if shell:
        raise TestcaseError(f"{''.join(shell)!r} needs a shell, which this plugin does not use: {lines[0]}")
    binary = PurePosixPath(words[0])
    if binary.is_absolute() or ".." in binary.parts:
        raise TestcaseError(f"{words[0]}: the binary must be relative to the KVM selftests directory")
    return Testcase(str(binary), tuple(words[1:]))


def read(path: Path) -> Testcase:
    """Parse the file at ``path``: a regular file, not a link, that no other user could have
    written (its command runs, maybe as root); bounded read, and a FIFO never blocks."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        raise TestcaseError(f"cannot open: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise TestcaseError("not a regular file")
        problem = _writer_problem(st)
        if problem:
            raise TestcaseError(problem)
        data = f.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise TestcaseError(f"longer than {MAX_BYTES} bytes: not a test-case file")
    try:
        return parse(data.decode())
    except UnicodeDecodeError:
        raise TestcaseError("not text (UTF-8)") from None


def _writer_problem(st: os.stat_result) -> str | None:
    """Why a file's command must not be run: group or others may write it; or, as root, it
    belongs to someone other than root or the user who ran sudo ($SUDO_UID)."""
    if st.st_mode & 0o022:
        return f"writable by group or others (mode {stat.S_IMODE(st.st_mode):04o}): anyone could have changed its command"
    trusted = {os.geteuid(), 0}
    sudo_uid = os.environ.get("SUDO_UID", "")
    if sudo_uid.isdigit():
        trusted.add(int(sudo_uid))
    if os.geteuid() == 0 and st.st_uid not in trusted:
        return f"owned by uid {st.st_uid}, not by root or the user running the tests: refusing to run its command as root"
    return None


def case_command(case: Case, scale: str, version: str = DEFAULT_VERSION, arch: str = "x86_64") -> Testcase:
    """A catalogue case's command at ``scale``, as the plugin runs it on a host with room for it.

    Argument builders never read the host (only ``sized_requires`` does, which this does not
    call), so none is needed. Guest modes are the binary's default: other modes are named
    through each binary's ``-h`` table at run time, which a static file cannot do."""
    entry = case.entry
    sizing = fit(entry.sizes[scale], None, None, entry.per_vcpu)
    run = Run(sizing, case.backing, (), cast(HostFacts, None))
    args = (*case.variant.args, *entry.build(run))
    return Testcase(selftest_path(entry.name, version, arch), tuple(str(a) for a in args))


def catalogue_testcases(scale: str, version: str = DEFAULT_VERSION, arch: str = "x86_64") -> Iterator[tuple[str, Testcase]]:
    """Every default-mode case of the catalogue for ``arch`` as (relative file path, command): in
    the folder of the program's path, as upstream's ``make tests_install`` lays out its
    ``default.test`` files (``x86_64/nx_huge_pages_test/default.test``). A case with no variant
    or backing is ``<scale>_scale.test``: ``default.test`` is upstream's name for a selftest's
    default arguments."""
    machines = ARCH_MACHINES.get(arch, (arch,))
    for entry in CATALOGUE:
        if any(isinstance(r, Arch) and not set(r.machines) & set(machines) for r in entry.requires):
            continue  # an x86-only entry has no binary in another architecture's build
        for case in cases(entry, (DEFAULT_MODE,), None):
            stem = f"{scale}_scale" if case.id == "default" else case.id
            command = case_command(case, scale, version, arch)
            yield f"{command.binary}/{stem}{SUFFIX}", command


def write(directory: Path, testcases: Sequence[tuple[str, Testcase]]) -> list[Path]:
    """Write each command to ``directory/<relative path>``: an existing file is replaced (a
    temporary file renamed over it), never followed, and a link where a folder should be stops."""
    written = []
    for relative, testcase in testcases:
        path = directory / relative
        for folder in reversed(list(path.relative_to(directory).parents)[:-1]):
            sub = directory / folder
            if sub.is_symlink():
                raise UnsafePath(f"refusing to write in {sub}: it is a symbolic link")
        replace_file(path, testcase.line() + "\n")
        written.append(path)
    return written
