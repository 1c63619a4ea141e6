"""Setting a read-only module parameter by reloading the module (``--kvm-param-values``).

Where KVM is a module (Debian's kernels, the lab's ``x86-tdp`` host), parameters that are
read-only at run time (``kvm.tdp_mmu``, ``kvm_amd.npt``) take a new value only at load time.
This reloads the module with it: the modules that hold it (``kvm_amd`` holds ``kvm``) are
unloaded first and loaded again after, and every module goes back with the values its
parameters had (read from /sys/module/<m>/parameters), so only the asked parameter changes.
Restoring is the same reload with the old value (``host_changes.py`` journals it first).

A module in use (a VM open, or built in) cannot be reloaded: the reason is returned and the
case skips. Commands run as argument lists, with a time limit.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..host.sysfs import rooted

Runner = Callable[[Sequence[str]], "tuple[int, str]"]
TIMEOUT = 120.0


def run_command(argv: Sequence[str]) -> tuple[int, str]:
    """(exit status, the last line of output) of a command; a missing program is 127."""
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, errors="replace", timeout=TIMEOUT)
    except FileNotFoundError:
        return 127, f"{argv[0]} not found"
    except subprocess.TimeoutExpired:
        return 124, f"{' '.join(argv)} did not finish in {TIMEOUT:g} s"
    lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
    return proc.returncode, lines[-1] if lines else ""


@dataclass(frozen=True)
class ModuleState:
    """A loaded module and the parameter values to load it with again."""

    name: str
    params: tuple[tuple[str, str], ...]


def is_loadable_module(root: Path, module: str) -> bool:
    """Loaded as a module (``initstate`` exists only for modules, not for built-in code)."""
    return rooted(root, f"/sys/module/{module}/initstate").is_file()


def holders(root: Path, module: str) -> list[str]:
    try:
        return sorted(p.name for p in rooted(root, f"/sys/module/{module}/holders").iterdir())
    except OSError:
        return []


def reload_order(root: Path, module: str) -> list[str]:
    """``module`` and every module holding it, holders first (the order to unload in)."""
    order: list[str] = []

    def visit(name: str) -> None:
        for h in holders(root, name):
            if h not in order:
                visit(h)
        if name not in order:
            order.append(name)

    visit(module)
    return order


def current_params(root: Path, module: str) -> tuple[tuple[str, str], ...]:
    """The module's readable parameter values, to load it with again as it was."""
    base = rooted(root, f"/sys/module/{module}/parameters")
    out = []
    try:
        names = sorted(p.name for p in base.iterdir())
    except OSError:
        return ()
    for name in names:
        try:
            value = (base / name).read_text(errors="replace").strip()[:256]
        except OSError:
            continue
        if value and " " not in value and "\n" not in value:
            out.append((name, value))
    return tuple(out)


def cannot_reload(root: Path, module: str, which: Callable[[str], str | None]) -> str | None:
    """Why ``module`` cannot be reloaded here, or None."""
    if not rooted(root, f"/sys/module/{module}").is_dir():
        return f"module {module} is not loaded"
    if not is_loadable_module(root, module):
        return f"{module} is built into the kernel: its read-only parameters are set only at boot"
    missing = [tool for tool in ("modprobe", "rmmod") if which(tool) is None]
    if missing:
        return f"no {', '.join(missing)} here to reload {module}"
    return None


def reload(root: Path, module: str, param: str, value: str, run: Runner = run_command) -> str | None:
    """Reload ``module`` (and its holders) with ``param=value``; every other parameter keeps its
    value. Returns why it failed (after putting back what it could), or None."""
    order = reload_order(root, module)
    states = [ModuleState(m, current_params(root, m)) for m in order]
    for m in order:  # holders first
        code, out = run(["rmmod", m])
        if code != 0:
            _load_all(states, order[: order.index(m)], run)
            return f"cannot unload {m} to set {module}.{param}: {out or f'rmmod exit {code}'}"
    why = None
    for state in reversed(states):  # the module first, then its holders
        base = dict(state.params)
        if state.name == module and _load(state.name, [{**base, param: value}, {param: value}], run) is None:
            continue
        if state.name == module:
            why = f"modprobe {module} {param}={value} failed"
        failed = _load(state.name, [base, {}], run)  # as it was, else with its defaults
        if failed is not None:
            why = (why + "; " if why else "") + f"{state.name} could not be loaded again: {failed}"
    return why


def _load(name: str, attempts: Sequence[dict[str, str]], run: Runner) -> str | None:
    """modprobe with each parameter set in turn until one loads; the last error otherwise."""
    last = ""
    for params in attempts:
        code, out = run(["modprobe", name, *(f"{k}={v}" for k, v in params.items())])
        if code == 0:
            return None
        last = out or f"exit {code}"
    return last


def _load_all(states: Sequence[ModuleState], names: Sequence[str], run: Runner) -> None:
    for state in reversed(states):
        if state.name in names:
            run(["modprobe", state.name, *(f"{k}={v}" for k, v in state.params)])
