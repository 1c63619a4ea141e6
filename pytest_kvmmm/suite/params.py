"""Running cases under each value of a KVM module parameter (``--kvm-param-values``).

``--kvm-param-values kvm.eager_page_split=Y,N`` (repeatable) or the marker
``kvm_param_values("eager_page_split", ["Y", "N"])`` parametrizes tests by value: static ids
(``eager_page_split=N``), decided per host at run time. A parameter that is writable here
is set for the test (journalled like every host change) and restored after it; a read-only
one of a loadable module (``kvm.tdp_mmu`` where KVM is a module) is set by reloading the module
(``modreload.py``); a read-only one that cannot be (every ``kvm`` parameter on PVM hosts, a
built-in KVM) skips saying so.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

PARAM_SIGNATURE = "kvm_param_values(name, values)"


@dataclass(frozen=True)
class ParamSetting:
    name: str  # "kvm.eager_page_split"
    value: str  # "Y"

    @property
    def id(self) -> str:
        return f"{self.name.split('.', 1)[-1]}={self.value}"

    @property
    def path(self) -> str:
        module, _, param = self.name.partition(".")
        return f"/sys/module/{module}/parameters/{param}"

    @property
    def module(self) -> str:
        return self.name.partition(".")[0]


def full_name(name: str) -> str:
    return name if "." in name else f"kvm.{name}"


def parse_option(values: Sequence[str]) -> list[list[ParamSetting]]:
    """``["kvm.eager_page_split=Y,N"]`` -> one axis per parameter; ValueError says what is wrong."""
    axes = []
    for item in values:
        name, sep, vals = item.partition("=")
        settings = [v.strip() for v in vals.split(",") if v.strip()]
        if not sep or not name.strip() or not settings:
            raise ValueError(f"{item!r}: expected NAME=V1,V2 such as kvm.eager_page_split=Y,N")
        axes.append([ParamSetting(full_name(name.strip()), v) for v in settings])
    return axes


def needs_reload(setting: ParamSetting, params: Mapping[str, object]) -> bool:
    """The parameter exists here but is read-only: only a module reload can set it."""
    param = params.get(setting.name)
    return param is not None and not getattr(param, "writable", False)


def unavailable(
    setting: ParamSetting, params: Mapping[str, object], cannot_reload: Callable[[str], str | None] | None = None
) -> str | None:
    """Why the parameter cannot be set here (missing, read-only and its module not reloadable),
    from the host facts' params; ``cannot_reload(module)`` says why a module cannot be reloaded."""
    param = params.get(setting.name)
    if param is None:
        return f"this host has no KVM parameter {setting.name} (module not loaded, or another KVM flavour)"
    if not getattr(param, "writable", False):
        why = "no module reload" if cannot_reload is None else cannot_reload(setting.module)
        if why is None:
            return None
        return (
            f"{setting.name} is read-only here ({setting.path} has no write permission): "
            f"cases under {setting.id} need a writable parameter, or a boot with {setting.name}={setting.value} "
            f"({why})"
        )
    return None
