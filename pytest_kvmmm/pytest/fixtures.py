"""Fixtures of pytest-kvmmm, and the translation of a selftest result into a pytest outcome."""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Sequence
from typing import NoReturn

import pytest

from ..coordination.modreload import cannot_reload
from ..engine.discovery import Found, NotFound
from ..engine.engine import SelftestEngine
from ..engine.outcome import Status
from ..engine.requirements import Requirement
from ..engine.result import SelftestResult
from ..host.kvm import KvmFacts
from ..host.mm import HugetlbPool
from ..host.model import HostFacts
from ..suite.params import ParamSetting, needs_reload, unavailable
from ..suite.scale import SCALES, Scale
from ..suite.shape import Shape
from .keys import CHANGES_KEY, ENGINE_KEY, RESULTS_KEY, SCALE_KEY, SHAPE_KEY


def failure_text(result: SelftestResult) -> str:
    """The failure report of a selftest: why, the binary's own words, and the command to rerun."""
    parts = [result.reason]
    if result.details:
        parts += ["", result.details]
    parts += ["", "command: " + " ".join(result.argv)]
    return "\n".join(parts)


def raise_for(result: SelftestResult) -> None:
    """Skip or fail the running test as the selftest's outcome says; return on a pass."""
    if result.status in (Status.SKIPPED, Status.MISSING):
        pytest.skip(result.reason)
    if result.status.is_failure:
        pytest.fail(failure_text(result), pytrace=False)


class SelftestRunner:
    """What the ``kvm_selftests`` fixture gives a test: run a selftest, get its result."""

    def __init__(self, item: pytest.Item, engine: SelftestEngine) -> None:
        self._item = item
        self._engine = engine

    def run(
        self,
        name: str,
        *args: object,
        timeout: float | None = None,
        requires: Sequence[Requirement] = (),
        notes: Sequence[str] = (),
        check: bool = True,
        found: Found | NotFound | None = None,
        expected_kernel: Sequence[str] = (),
        shape: Shape | None = None,
    ) -> SelftestResult:
        """Run selftest ``name`` with ``args``; with ``check`` its skip or failure ends the test.

        ``requires`` are checked against the host first: an unmet one skips without
        running the binary. Every run is recorded for ``--kvm-results`` and the summary.
        ``expected_kernel`` are patterns of kernel lines the selftest provokes on purpose.
        ``shape`` is what a catalogue case runs as (its record says so); a test of one's own
        has none, its arguments say it.
        """
        perf = self._item.get_closest_marker("perf") is not None
        result = self._engine.run(
            name, [str(a) for a in args], timeout=timeout, requires=requires, notes=notes,
            exclusive=perf, who=self._item.nodeid, repeat=self._engine.perf_repeat if perf else 1, found=found,
            expected_kernel=expected_kernel,
        )
        self._item.stash.setdefault(RESULTS_KEY, []).append(result)
        if shape is not None:
            self._item.stash[SHAPE_KEY] = shape
        if check:
            raise_for(result)
        return result

    def resolve(self, name: str) -> Found | NotFound:
        """Where ``name`` would be run from (to read its ``-h``, say)."""
        return self._engine.resolve(name)

    def skip(self, name: str, reason: str, args: Sequence[str] = ()) -> NoReturn:
        """Skip the test without running ``name``, keeping a record of why for the results."""
        self._item.stash.setdefault(RESULTS_KEY, []).append(
            SelftestResult(name, (name, *args), Status.SKIPPED, reason)
        )
        pytest.skip(reason)


@pytest.fixture(scope="session")
def kvm_host(request: pytest.FixtureRequest) -> HostFacts:
    """Facts about the host (or the ``--kvm-host-snapshot``): arch, CPUs, memory, hugetlb pools, THP."""
    return request.config.stash[ENGINE_KEY].host()


@pytest.fixture(scope="session")
def kvm_info(kvm_host: HostFacts) -> KvmFacts:
    """KVM on this host: flavour, /dev/kvm usability, module parameters, capabilities, guest CPU."""
    return kvm_host.kvm


@pytest.fixture(scope="session")
def kvm_hugetlb_pools(kvm_host: HostFacts) -> tuple[HugetlbPool, ...]:
    """The global hugetlb pools (per page size: nr, free, resv, surplus, writable); per node in kvm_host."""
    return kvm_host.hugetlb


@pytest.fixture(scope="session")
def kvm_ttrem(kvm_host: HostFacts) -> int | None:
    """arm64 FEAT_BBM level (TTRem) read from a vCPU's ID_AA64MMFR2_EL1; None off arm64 or unknown."""
    return kvm_host.kvm.ttrem


@pytest.fixture(scope="session")
def kvm_scale(request: pytest.FixtureRequest) -> Scale:
    """The ``--kvm-scale`` in force (smoke, lab, default or stress): the sizes the shipped suite asks for."""
    return SCALES[request.config.stash[SCALE_KEY]]


@pytest.fixture
def kvm_selftests(request: pytest.FixtureRequest) -> SelftestRunner:
    """Runs KVM selftest binaries: ``kvm_selftests.run("kvm_page_table_test", "-b", "64M")``.

    The binary is found in --kvm-selftests / $KVMMM_SELFTESTS_DIR / the kvmmm-build cache;
    its exit decides the test (0 pass, 4 skip with the binary's reason, else fail with its
    assertion block) and its metrics are recorded.
    """
    return SelftestRunner(request.node, request.config.stash[ENGINE_KEY])


class _PendingResult:
    """Stands in for ``kvm_result`` until the marker's binary has run at the start of the test body."""

    def __getattr__(self, name: str) -> object:
        raise RuntimeError(
            "kvm_result is the result of the test's kvm_selftest marker and exists only in the "
            "test function itself (the binary runs when the test body starts), not in fixtures"
        )


@pytest.fixture
def kvm_result() -> SelftestResult:
    """The result of this test's ``@pytest.mark.kvm_selftest(...)`` run: returncode, stdout,
    stderr, duration_s, status, metrics. The binary runs when the test body starts; a
    skip or failure of the binary ends the test before the body."""
    return _PendingResult()  # type: ignore[return-value]


@pytest.fixture(autouse=True)
def kvm_params(request: pytest.FixtureRequest) -> Iterator[tuple[ParamSetting, ...]]:
    """The KVM module parameter values this test runs under (``--kvm-param-values`` or the
    ``kvm_param_values`` marker): set for the test, restored after it; () for other tests."""
    settings: tuple[ParamSetting, ...] = getattr(request, "param", ())
    if not settings:
        yield ()
        return
    engine = request.config.stash[ENGINE_KEY]
    changes = request.config.stash[CHANGES_KEY]
    params = dict(engine.host().kvm.params)
    root = request.config.stash[CHANGES_KEY].root
    for setting in settings:
        why = unavailable(setting, params, lambda m: cannot_reload(root, m, shutil.which))
        if why:
            pytest.skip(why)
    with engine.hold(exclusive=True):  # a host-wide setting: no other selftest of the run may see it
        applied = []
        try:
            for setting in settings:
                if needs_reload(setting, params):
                    why = changes.reload_param(setting.path, setting.value)
                else:
                    why = changes.set_param(setting.path, setting.value)
                if why:
                    pytest.skip(why)
                applied.append(setting)
            engine.view.reprobe()
            yield settings
        finally:
            for setting in applied:
                changes.undo_last(setting.path)
            if applied:
                engine.view.reprobe()
