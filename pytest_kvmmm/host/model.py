"""The host model: immutable facts, with the reason for every fact that could not be read.

Requirements and skip decisions read this model, never sysfs directly, so a snapshot of a
lab host gives the same decisions offline as the host itself. ``to_json`` is the stable,
documented form behind ``--kvm-host-info=json`` (see the README for the keys).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .cpu import CpuFacts
from .kvm import KvmFacts, ModuleParam
from .kvmdecode import Arm64KvmCpu, X86KvmCpu
from .mm import HugetlbPool, MglruFacts, ThpFacts

HOST_JSON_FORMAT = 1


@dataclass(frozen=True)
class HostFacts:
    hostname: str | None
    machine: str | None
    kernel_release: str | None
    cpus_online: int | None
    mem_total: int | None
    mem_available: int | None
    #: The kernel's base page size in bytes (arm64: 4K, 16K or 64K).
    page_size: int | None
    numa_nodes: tuple[int, ...]
    cpu: CpuFacts
    kvm: KvmFacts
    hugetlb_default_kb: int | None
    hugetlb: tuple[HugetlbPool, ...]
    hugetlb_nodes: tuple[HugetlbPool, ...]
    thp: ThpFacts
    page_idle: bool
    mglru: MglruFacts
    #: Where the facts come from: "/" or the snapshot directory.
    source: str = "/"
    #: fact name -> why it is unknown ("cannot read /proc/meminfo: Permission denied").
    unknown: Mapping[str, str] = field(default_factory=dict)

    def hugetlb_pool(self, size_kb: int, node: int | None = None) -> HugetlbPool | None:
        pools = self.hugetlb if node is None else self.hugetlb_nodes
        return next((p for p in pools if p.size_kb == size_kb and p.node == node), None)

    def to_json(self) -> dict[str, Any]:
        def plain(value: Any) -> Any:
            if dataclasses.is_dataclass(value) and not isinstance(value, type):
                return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
            if isinstance(value, Mapping):
                return {str(k): plain(v) for k, v in value.items()}
            if isinstance(value, (tuple, list)):
                return [plain(v) for v in value]
            return value

        data: dict[str, Any] = plain(self)
        data["format"] = HOST_JSON_FORMAT
        data["kvm"].update(tdp_mmu=self.kvm.tdp_mmu, tdp=self.kvm.tdp, ttrem=self.kvm.ttrem, ipa_size=self.kvm.ipa_size)
        data["mglru"]["usable_for_aging"] = self.mglru.usable_for_aging
        for pool, out in zip((*self.hugetlb, *self.hugetlb_nodes), data["hugetlb"] + data["hugetlb_nodes"]):
            out["usable"] = pool.usable
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> HostFacts:
        """The inverse of ``to_json`` (derived keys are recomputed): how an xdist controller's
        probe reaches its local workers through ``workerinput``."""
        built: HostFacts = _build(
            cls,
            data,
            cpu=lambda d: _build(CpuFacts, d),
            kvm=lambda d: _build(
                KvmFacts,
                d,
                params=lambda ps: {k: _build(ModuleParam, v) for k, v in ps.items()},
                x86=lambda d: None if d is None else _build(X86KvmCpu, d),
                arm64=lambda d: None if d is None else _build(Arm64KvmCpu, d),
            ),
            hugetlb=lambda ps: tuple(_build(HugetlbPool, p) for p in ps),
            hugetlb_nodes=lambda ps: tuple(_build(HugetlbPool, p) for p in ps),
            thp=lambda d: _build(ThpFacts, d),
            mglru=lambda d: _build(MglruFacts, d),
        )
        return built


def _build(cls: Any, data: Mapping[str, Any], **nested: Callable[[Any], Any]) -> Any:
    """``cls`` from the JSON object ``data``: its own fields only, lists back to tuples."""
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        value = data[f.name]
        if f.name in nested:
            value = nested[f.name](value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[f.name] = value
    return cls(**kwargs)
