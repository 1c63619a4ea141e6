"""pytest glue for the upstream runner's ``*.test`` files: the option, a collector, one item per file.

Which files: every ``*.test`` under a ``--kvm-testcases=DIR`` (or ini ``kvm_testcases``), and
a ``*.test`` file named on the command line (the upstream runner's ``-t FILE``). Other
``.test`` files, in projects that only happen to have some, are left alone. Given directories
are what the run collects instead of ``testpaths``, or beside test paths named on the command line.

Each item carries a ``kvm_selftest`` marker with the file's command, so it runs exactly as a
marker test does (``session.py``): the same outcome mapping, kernel watch, records, metrics,
counters and reports. A binary that is a catalogue entry also gets the entry's markers and host
requirements, its ``-s`` backing's needs and the kernel lines it provokes on purpose, in
``item.stash`` where the session reads them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from ..engine.discovery import ARCH_DIRS
from ..engine.requirements import Requirement
from ..host.units import parse_size
from ..suite.backing import BACKING_SOURCES, backing_requirements
from ..suite.catalogue import BY_NAME, Entry
from ..suite.testcases import SUFFIX, Testcase, TestcaseError, read
from .invocation import ini_relative
from .keys import EXPECTED_KERNEL_KEY, REQUIRES_KEY

HELP_TESTCASES = (
    "run the upstream KVM selftest runner's test-case files (*.test, one command line each) under DIR "
    "(repeatable; ini kvm_testcases, one directory a line, relative to the ini file)"
)

_ARCH_FOLDERS = frozenset(folder for folders in ARCH_DIRS.values() for folder in folders)


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("kvmmm", "KVM selftests (pytest-kvmmm)")
    group.addoption("--kvm-testcases", action="append", default=[], metavar="DIR", help=HELP_TESTCASES)
    parser.addini("kvm_testcases", HELP_TESTCASES, type="linelist")


def testcase_dirs(options: Sequence[str], ini: Sequence[str], inipath: Path | None) -> tuple[Path, ...]:
    """--kvm-testcases (each relative to the current directory), else ini kvm_testcases (relative
    to the ini file, as pytest resolves its own ini paths); each must be a directory."""
    found = [(Path(v).expanduser(), "--kvm-testcases") for v in options] or [
        (Path(ini_relative(v.strip(), inipath and Path(inipath).parent)), "ini kvm_testcases") for v in ini if v.strip()
    ]
    for path, origin in found:
        if not path.is_dir():
            raise pytest.UsageError(f"{origin}: {path} is not a directory of *.test files")
    return tuple(path for path, _ in found)


def lookup_name(binary: str) -> str:
    """The name discovery looks up: an arch folder is dropped (discovery searches them, in
    both the build and the ``make install`` layouts); any other relative path is kept."""
    parts = PurePosixPath(binary).parts
    return parts[-1] if len(parts) == 2 and parts[0] in _ARCH_FOLDERS else binary


def file_backing_needs(entry: Entry, args: Sequence[str]) -> tuple[Requirement, ...]:
    """What the file's ``-s BACKING`` needs of the host (THP, or a hugetlb pool of a named size for
    ``-b``, times ``-v`` when per vCPU), as the catalogue's own cases check. A default-size
    hugetlb backing is left to the binary: its size is the host's, unknown at collection."""
    opts = dict(zip(args, args[1:]))
    src = BACKING_SOURCES.get(opts.get("-s", ""))
    if src is None or (src.hugetlb and not src.hugetlb_kb):
        return ()
    try:
        size = parse_size(opts.get("-b", "1"))
        vcpus = int(opts.get("-v", "1"))
    except ValueError:
        return ()  # the binary will say what it makes of it
    return backing_requirements(src.name, size * (vcpus if entry.per_vcpu else 1), None)


class TestcaseItem(pytest.Item):
    """One ``.test`` file: its binary runs through the ``kvm_selftest`` marker machinery."""

    __test__ = False  # not a test class for pytest's own collection of modules importing it

    def __init__(self, *, testcase: Testcase, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.testcase = testcase
        name = lookup_name(testcase.binary)
        self.add_marker(pytest.mark.kvm_selftest(name, *testcase.args))
        entry = BY_NAME.get(PurePosixPath(name).name)
        if entry is not None:
            for marker in entry.markers:
                self.add_marker(marker)
            # checked by the session before the binary runs, as a kvm_requires marker's are
            self.stash[REQUIRES_KEY] = (*entry.requires, *file_backing_needs(entry, testcase.args))
            self.stash[EXPECTED_KERNEL_KEY] = entry.expected_kernel

    def runtest(self) -> None:
        """Nothing beyond the binary, which the session's ``pytest_runtest_call`` wrapper ran."""

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, 0, self.testcase.line()


class TestcaseCollectError(Exception):
    """A ``.test`` file that cannot be run as written."""

    __test__ = False


class TestcaseFile(pytest.File):
    __test__ = False

    def collect(self) -> list[pytest.Item]:
        try:
            testcase = read(self.path)
        except TestcaseError as exc:
            raise TestcaseCollectError(f"{self.path}: {exc}") from None
        return [TestcaseItem.from_parent(self, name=self.path.name[: -len(SUFFIX)], testcase=testcase)]

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        if isinstance(excinfo.value, TestcaseCollectError):
            return str(excinfo.value)  # one line, no traceback: the file is the problem
        return super().repr_failure(excinfo)


class TestcasePlugin:
    """Registered by ``pytest_configure``: collects the ``.test`` files this run asked for."""

    def __init__(self, config: pytest.Config) -> None:
        self.dirs = testcase_dirs(
            config.getoption("kvm_testcases") or [], config.getini("kvm_testcases"), config.inipath
        )
        use_dirs(config, self.dirs)

    def pytest_collect_file(self, file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
        if file_path.suffix != SUFFIX:
            return None
        named = any(_same(file_path, arg) for arg in parent.config.args)
        if not named and not any(_within(file_path, d) for d in self.dirs):
            return None
        collector: TestcaseFile = TestcaseFile.from_parent(parent, path=file_path)
        return collector


def use_dirs(config: pytest.Config, dirs: Sequence[Path]) -> None:
    """Make the run collect ``dirs``: instead of the default paths (testpaths or the current
    directory), or beside test paths named on the command line."""
    if not dirs:
        return
    wanted = [str(d) for d in dirs]
    source = getattr(config, "args_source", None)
    if source is not None and source != pytest.Config.ArgsSource.ARGS:
        config.args[:] = wanted
        return
    config.args.extend(d for d in wanted if not any(_same(Path(d), a) for a in config.args))


def _same(path: Path, arg: str) -> bool:
    candidate = arg.split("::", 1)[0]
    try:
        return os.path.samefile(path, candidate)
    except OSError:
        return False


def _within(path: Path, directory: Path) -> bool:
    try:
        path.resolve().relative_to(directory.resolve())
    except (ValueError, OSError):
        return False
    return True
