"""From catalogue entries to pytest cases, and how one case runs.

Generation is static (the catalogue plus the user's ``--kvm-guest-modes`` /
``--kvm-backing-srcs`` selection), so collection never depends on the host. Running a case
sizes it for the host, resolves the binary once and its guest mode in its own ``-h`` table, checks
every requirement, runs the binary (with what it ran as, ``shape.of_case``, for its record) and
checks that a pass printed its metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, NoReturn, Protocol

from ..engine.discovery import Found, NotFound
from ..engine.guest_modes import DEFAULT_MODE, ModeUnavailable, arch_mismatch, mode_args
from ..engine.requirements import Requirement
from ..host.model import HostFacts
from .backing import BACKING_SOURCES
from .catalogue import Entry, Run, Variant, backing_needs
from .scale import Scale, fit
from .shape import Shape, of_case


class Runner(Protocol):
    """What a case needs to run: the ``kvm_selftests`` fixture's runner is one."""

    def run(
        self,
        name: str,
        *args: object,
        timeout: float | None = None,
        requires: Sequence[Requirement] = (),
        notes: Sequence[str] = (),
        found: Found | NotFound | None = None,
        expected_kernel: Sequence[str] = (),
        shape: Shape | None = None,
    ) -> Any: ...

    def resolve(self, name: str) -> Found | NotFound: ...

    def skip(self, name: str, reason: str, args: Sequence[str] = ()) -> NoReturn: ...


@dataclass(frozen=True)
class Case:
    entry: Entry
    variant: Variant
    backing: str | None
    mode: str
    #: The vCPU count of a ``--kvm-sweep`` point (None: the scale's).
    vcpus: int | None = None

    def __repr__(self) -> str:
        # Reports hash the parameter's repr into a test's identity (allure-pytest's historyId).
        # The dataclass repr names the entry's argument builders by address, which changes in
        # every process, so a rerun would lose its history: say only what identifies the case.
        return f"Case({self.entry.name}[{self.id}])"

    @property
    def id(self) -> str:
        parts = [self.variant.id, self.backing or "", "" if self.mode == DEFAULT_MODE else self.mode,
                 "" if self.vcpus is None else f"vcpus{self.vcpus}"]  # fmt: skip
        return "-".join(p for p in parts if p) or "default"

    @property
    def markers(self) -> tuple[str, ...]:
        names = [*self.entry.markers, *self.variant.markers]
        src = BACKING_SOURCES.get(self.backing or "")
        if src is not None and src.hugetlb:
            names.append("hugetlb")
        if src is not None and src.thp:
            names.append("thp")
        return tuple(dict.fromkeys(names))


def _backings(entry: Entry, variant: Variant, selected: Sequence[str] | None) -> list[str | None]:
    defaults = variant.backings if variant.backings is not None else entry.backings
    if not entry.backings and variant.backings is None:
        return [None]  # the binary takes no -s
    if selected is None:
        return list(defaults)
    if variant.backings is not None and variant.shared_only:
        return [b for b in selected if BACKING_SOURCES[b].shared]
    return list(selected)


def vcpu_scaled(entry: Entry) -> bool:
    """Whether an entry's vCPU count is one of its sizes (some scale asks for more than one)."""
    return any(sizes.vcpus > 1 for sizes in entry.sizes.values())


def cases(entry: Entry, modes: Sequence[str], backings: Sequence[str] | None, sweep_vcpus: Sequence[int] = ()) -> list[Case]:
    """Every case of ``entry`` for the selected guest modes and backing sources (None: the defaults),
    once per ``sweep_vcpus`` count when the entry is vCPU-scaled."""
    points: Sequence[int | None] = tuple(sweep_vcpus) if sweep_vcpus and vcpu_scaled(entry) else (None,)
    out = []
    for variant in entry.variants:
        for backing in _backings(entry, variant, backings):
            for mode in modes if entry.takes_modes else (DEFAULT_MODE,):
                out += [Case(entry, variant, backing, mode, v) for v in points]
    return out


def run_case(case: Case, runner: Runner, host: HostFacts, scale: Scale) -> None:
    """Run one case through the ``kvm_selftests`` fixture; skips and failures end the test."""
    entry = case.entry
    src = BACKING_SOURCES.get(case.backing or "")
    # hugetlb memory comes from its pool, not from MemAvailable: the pool check covers it.
    want = entry.sizes[scale.name]
    if case.vcpus is not None:
        if host.cpus_online is not None and case.vcpus > host.cpus_online:
            runner.skip(entry.name, f"the sweep's {case.vcpus} vCPUs exceed the {host.cpus_online} online CPUs (a sweep point is never capped)")
        want = replace(want, vcpus=case.vcpus)
    sizing = fit(want, host.cpus_online, None if src and src.hugetlb else host.mem_available, entry.per_vcpu)
    if sizing.unfit:
        runner.skip(entry.name, sizing.unfit)
    selected: tuple[str, ...] = ()
    found: Found | NotFound | None = None
    if case.mode != DEFAULT_MODE:
        wrong_arch = arch_mismatch(case.mode, host.machine)
        if wrong_arch:
            runner.skip(entry.name, wrong_arch)
        found = runner.resolve(entry.name)  # once: the run below uses what was found here
        if isinstance(found, Found):  # else the run below reports the missing binary
            try:
                selected = mode_args(found.path, case.mode)
            except ModeUnavailable as exc:
                runner.skip(entry.name, str(exc))
    run = Run(sizing, case.backing, selected, host)
    requires = (
        *entry.requires,
        *case.variant.requires,
        *backing_needs(entry, run),
        *(entry.sized_requires(run) if entry.sized_requires else ()),
    )
    result = runner.run(
        entry.name,
        *case.variant.args,
        *entry.build(run),
        requires=requires,
        notes=sizing.notes,
        timeout=entry.timeout,
        found=found,
        expected_kernel=entry.expected_kernel,
        shape=of_case(case, sizing),
    )
    missing = [m for m in entry.expected_metrics if not any(k == m or k.endswith("/" + m) for k in result.metrics)]
    assert not missing, f"{entry.name} passed but printed no value for {', '.join(missing)}"


def case_test(entry: Entry) -> Callable[..., None]:
    """The test function of one catalogue entry; ``pytest_generate_tests`` gives it its cases."""

    def test(kvm_case: Case, kvm_selftests: Runner, kvm_host: HostFacts, kvm_scale: Scale) -> None:
        run_case(kvm_case, kvm_selftests, kvm_host, kvm_scale)

    test.__name__ = test.__qualname__ = entry.test_name
    test.__doc__ = f"{entry.name}: {entry.doc}"
    test.kvm_entry = entry  # type: ignore[attr-defined]
    return test
