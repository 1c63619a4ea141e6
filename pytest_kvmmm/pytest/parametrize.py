"""``pytest_generate_tests``: the catalogue's cases and the KVM module parameter values, as
pytest parameters.

Static: the catalogue plus the user's selection, never the host, so every xdist worker
collects the same tests.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import pytest

from ..suite.cases import cases
from ..suite.catalogue import Entry
from ..suite.params import PARAM_SIGNATURE, ParamSetting, full_name
from .options import Settings


def case_params(
    entry: Entry, modes: Sequence[str], backings: Sequence[str] | None, sweep_vcpus: Sequence[int] = ()
) -> list[object]:
    """One ``pytest.param`` per case of ``entry``, with its id and its markers."""
    return [
        pytest.param(case, id=case.id, marks=[getattr(pytest.mark, m) for m in case.markers])
        for case in cases(entry, modes, backings, sweep_vcpus)
    ]


def generate(metafunc: pytest.Metafunc, settings: Settings) -> None:
    """The catalogue's test functions get one case per variant x backing source x guest mode;
    ``--kvm-param-values`` and the ``kvm_param_values`` marker add one axis per parameter."""
    entry = getattr(metafunc.function, "kvm_entry", None)
    if entry is not None and "kvm_case" in metafunc.fixturenames:
        metafunc.parametrize("kvm_case", case_params(entry, settings.modes, settings.backings, settings.sweep_vcpus))
    axes = [list(a) for a in settings.param_axes] if entry is not None else []
    for mark in metafunc.definition.iter_markers("kvm_param_values"):
        if len(mark.args) != 2 or not isinstance(mark.args[0], str) or not mark.args[1]:
            raise pytest.UsageError(f"@pytest.mark.{PARAM_SIGNATURE}: e.g. ('eager_page_split', ['Y', 'N'])")
        axes.append([ParamSetting(full_name(mark.args[0]), str(v)) for v in mark.args[1]])
    if axes:
        combos = list(itertools.product(*axes))
        metafunc.parametrize(
            "kvm_params", combos, indirect=True, ids=["-".join(s.id for s in combo) for combo in combos]
        )
