"""``-m kvm`` is opt-in: the ``kvm``-marked tests (every KVM selftest of the kernel's lists,
``suite/test_kvm.py``) run only when the marker expression names ``kvm``.

They sit beside the MM suite, so ``pytest -m kvm`` finds them where ``pytest -m pagetable``
finds the suite (``testpaths``, ``--pyargs pytest_kvmmm.suite``). Without the opt-in, runs that
select the suite by ``-k`` alone (the lab's, ``kvmmm-ab``'s, a user's ``-k dirty_log``) or by
nothing at all would also run some 85 binaries with their default arguments, each up to the
selftest timeout. The decision reads only the command line, so every xdist worker collects the
same tests; pytest reports the left-out ones as deselected.
"""

from __future__ import annotations

import re

import pytest

MARKER = "kvm"
_NAMES = re.compile(rf"\b{MARKER}\b")


def asked_for(markexpr: str) -> bool:
    """Whether ``-m EXPR`` names the marker (``kvm``, ``kvm and not perf``; not ``kvm_selftest``)."""
    return bool(_NAMES.search(markexpr or ""))


class AllKvmOptIn:
    """Registered by ``pytest_configure``."""

    @pytest.hookimpl(tryfirst=True)  # tryfirst: before -m/-k deselection and the session's checks
    def pytest_collection_modifyitems(self, config: pytest.Config, items: list[pytest.Item]) -> None:
        if asked_for(config.option.markexpr):
            return
        left_out = [item for item in items if item.get_closest_marker(MARKER) is not None]
        if left_out:
            config.hook.pytest_deselected(items=left_out)
            items[:] = [item for item in items if item.get_closest_marker(MARKER) is None]
