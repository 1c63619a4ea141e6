"""How a run was asked for: where each setting comes from, and what a record keeps of it.

The one place that decides a setting's source, for every resolver of the adapter (``options``,
``baseline``, ``dashboards``): command line > environment > ini > default, and the origin of
the value that won (``--kvm-scale``, ``$KVMMM_SELFTESTS_DIR``, ``ini kvm_scale``, ``-o
kvm_scale``), so that a message about a bad value names the place the user has to fix. Pure:
no pytest import; it reads a config through ``getoption``/``getini`` (a stand-in in tests).

Why the rest is here:

* Ini paths resolve against the ini file's directory, as pytest does for its own path keys:
  a run started from a subdirectory finds the same selftests build as one started beside the
  ini file. A ``-o key=path`` override, typed in the shell, stays relative to where pytest ran.
* ``--kvm-selftests /abs/path`` written with a space: pytest picks its rootdir and ini file
  *before* plugins add their options, so it takes ``/abs/path`` for a test path there. When
  that path lies outside what the real test paths (or the current directory) span, the rootdir
  moves up, the ini file is missed (or another one found) and test ids change. The value
  written ``--kvm-selftests=/abs/path`` is one word and takes no part; ``spaced_path_problem``
  finds the other form and says so. ``PYTEST_ADDOPTS`` is read before the rootdir is picked,
  so its words count too; the ini file's own ``addopts`` are read after it and do not.
* Every input that changes what runs besides the host (arguments, directory, ini file and the
  values read from it, the ``KVMMM_*`` and ``PYTEST_ADDOPTS`` environment, the snapshot) is kept
  in each record (``run_inputs``), so a result can be traced to how it was asked for.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

#: Options whose value is a path (``--kvm-save``/``--kvm-compare`` take a NAME or a FILE, and a
#: FILE is a path). ``--kvm-testcases`` is issue 19's directory of upstream ``.test`` files.
PATH_OPTIONS = (
    "--kvm-selftests", "--kvm-results", "--kvm-host-snapshot", "--kvm-baselines", "--kvm-save",
    "--kvm-compare", "--kvm-known-issues", "--kvm-kcidb", "--kvm-squad", "--kvm-testcases",
)
#: The one prefix of the plugin's environment variables.
ENV_PREFIX = "KVMMM_"
#: Variables without the prefix that still change what a run does: the selftests directory's
#: name before the prefix (honoured after ``$KVMMM_SELFTESTS_DIR``), pytest's extra arguments,
#: and the cache root the kvmmm-build selftests and baselines are found under.
OTHER_INPUT_ENV = ("KVM_SELFTESTS_DIR", "PYTEST_ADDOPTS", "XDG_CACHE_HOME")


class Options(Protocol):
    """What the resolver reads: a ``pytest.Config`` (a stand-in in the unit tests)."""

    def getoption(self, name: str) -> Any: ...

    def getini(self, name: str) -> Any: ...


@dataclass(frozen=True)
class Raw:
    """A setting as the user gave it, and where: the message about a bad value names it."""

    value: str
    origin: str


@dataclass
class Sources:
    """Where settings come from in this process: the config's options and ini values, the
    environment, the ini file's directory (for relative ini paths) and the ini keys given
    with ``-o``. ``ini_read`` collects the ini values the resolvers used, for the records."""

    config: Options
    env: Mapping[str, str]
    ini_dir: Path | None = None
    overrides: frozenset[str] = frozenset()
    ini_read: dict[str, Any] = field(default_factory=dict)
    #: Where pytest was started: a relative path from the command line, the environment or
    #: ``-o`` means a path from there (the selftests run in other directories).
    cwd: Path | None = None

    def option(self, dest: str) -> Raw | None:
        """The command line's value of option ``dest``; "" is set (a mistake, not "the default")."""
        value = self.config.getoption(dest)
        if value is None or value is False or value == []:
            return None
        return Raw(str(value), "--" + dest.replace("_", "-"))

    def ini(self, name: str) -> Any:
        """Ini key ``name`` as pytest gives it (a string, a list, a bool), noted for the records."""
        value = self.config.getini(name)
        if value:
            self.ini_read[name] = value if isinstance(value, (str, bool)) else [str(v) for v in value]
        return value

    def ini_origin(self, name: str) -> str:
        return f"-o {name}" if name in self.overrides else f"ini {name}"

    def pick(self, dest: str | None, *, env: Sequence[str] = (), ini: str | None = None, path: bool = False) -> Raw | None:
        """Command line > environment (``env``'s variables in order: the prefixed name first) >
        ini: the first that is set. ``path``: an ini value is relative to the ini file, any other
        relative path to where pytest was started; either way the value is made absolute."""
        raw = self._pick(dest, env, ini)
        if raw is None or not path:
            return raw
        base = self.ini_dir if raw.origin.startswith("ini ") else self.cwd
        return Raw(ini_relative(raw.value, base), raw.origin)

    def _pick(self, dest: str | None, env: Sequence[str], ini: str | None) -> Raw | None:
        raw = self.option(dest) if dest else None
        if raw is not None:
            return raw
        for var in env:
            if self.env.get(var):
                return Raw(self.env[var], f"${var}")
        value = self.ini(ini) if ini else None
        if not ini or not value:
            return None
        return Raw(str(value), self.ini_origin(ini))


def sources_of(config: Any, env: Mapping[str, str]) -> Sources:
    """The sources of a ``pytest.Config`` (duck-typed: a stand-in without ``inipath`` or ``option``
    has no ini file and no overrides)."""
    inipath = getattr(config, "inipath", None)
    option = getattr(config, "option", None)
    overrides = frozenset(str(o).partition("=")[0].strip() for o in getattr(option, "override_ini", None) or ())
    params = getattr(config, "invocation_params", None)
    cwd = Path(params.dir) if params is not None else None
    return Sources(config, env, Path(inipath).parent if inipath else None, overrides, cwd=cwd)


def ini_relative(value: str, base: Path | None) -> str:
    """A path relative to ``base`` (an ini key's: the ini file's directory), absolute and ``~``
    paths as they are; without a base, as it was written."""
    path = Path(value).expanduser()
    if path.is_absolute() or base is None:
        return str(path)
    return str(base / path)


def _dirs(args: Iterable[str], cwd: Path) -> list[Path]:
    """The existing directories pytest derives from test arguments (a file's own directory),
    as its rootdir search does (``path::test`` ids count by their path)."""
    out = []
    for arg in args:
        path = cwd / Path(arg.split("::")[0]).expanduser()
        if path.is_dir():
            out.append(path.resolve())
        elif path.exists():
            out.append(path.resolve().parent)
    return out


def _ancestor(dirs: Sequence[Path], cwd: Path) -> Path:
    if not dirs:
        return cwd.resolve()
    return Path(os.path.commonpath([str(d) for d in dirs]))


def spaced_path_problem(words: Sequence[str], tests: Sequence[str], cwd: Path) -> str | None:
    """The fix for a path option written with a space whose value moved pytest's rootdir, or None.

    ``words`` are the arguments pytest picked its rootdir from (``$PYTEST_ADDOPTS``'s words,
    then the command line), ``tests`` the test paths it finally took (``config.option.file_or_dir``).
    The value moved the rootdir search when it is an existing path outside the common directory
    of the test paths (the current directory when there are none).
    """
    base = _ancestor(_dirs(tests, cwd), cwd)
    for option, value in zip(words, words[1:]):
        if option == "--":
            break
        if option not in PATH_OPTIONS or value.startswith("-"):
            continue
        moved = _dirs([value], cwd)
        if moved and not _inside(moved[0], base):
            return (
                f"{option} {value}: write {option}={value} (with '='): written with a space, pytest also takes "
                "the path for a test path when it picks its rootdir and ini file, so the ini file can be "
                "missed and test ids change"
            )
    return None


def _inside(path: Path, directory: Path) -> bool:
    return path == directory or directory in path.parents


def addopts_words(env: Mapping[str, str]) -> list[str]:
    """``$PYTEST_ADDOPTS`` split as pytest splits it (unbalanced quotes: pytest reports those)."""
    try:
        return shlex.split(env.get("PYTEST_ADDOPTS", ""))
    except ValueError:
        return []


def recorded_environment(env: Mapping[str, str]) -> dict[str, str]:
    """The variables that change what a run does, as set: ``KVMMM_*`` and ``OTHER_INPUT_ENV``."""
    return {k: env[k] for k in sorted(env) if k.startswith(ENV_PREFIX) or k in OTHER_INPUT_ENV}


def run_inputs(
    args: Sequence[str], cwd: Path, inipath: Path | None, ini_values: Mapping[str, Any],
    env: Mapping[str, str], snapshot: str,
) -> dict[str, Any]:
    """What a record keeps of how its run was asked for, beside its command and host facts."""
    return {
        "args": [str(a) for a in args],
        "cwd": str(cwd),
        "ini": str(inipath) if inipath is not None else None,
        "ini_values": dict(sorted(ini_values.items())),
        "environment": recorded_environment(env),
        "host_snapshot": snapshot,
    }
