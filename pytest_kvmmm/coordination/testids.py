"""Test ids that mean the same test on every host, and the check that every host collected it.

pytest's node ids are relative to the rootdir, and a remote xdist worker (``--tx ssh=`` or
``socket=``) has its own: it runs in ``~/pyexecnetcache``. The shipped suite is then
``pytest_kvmmm/suite/test_mm.py::...`` on the machine you run from and ``test_mm.py::...`` or
``../lib/python3.11/site-packages/pytest_kvmmm/...`` on a lab host. Results name the suite's
tests by their place in the package instead, so a lab run's records line up across hosts.

``--dist each`` does not compare what its workers collected (xdist checks that for its load
schedulers only). A remote worker whose rootdir has no ``testpaths`` then collects nothing and
the run passes without that host. ``collection_problem`` finds such a worker.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath

#: The directory that holds the ``pytest_kvmmm`` package (site-packages, or a checkout).
PACKAGE_PARENT = Path(__file__).resolve().parents[2]  # coordination/ -> pytest_kvmmm/ -> its parent


def stable_nodeid(path: Path, nodeid: str, package_parent: Path = PACKAGE_PARENT) -> str:
    """``nodeid``, with its file part relative to the package's parent when the test lives in
    this package (the shipped suite), whatever the rootdir. Other tests keep pytest's id."""
    try:
        rel = path.resolve().relative_to(package_parent)
    except ValueError:
        return nodeid
    _, sep, rest = nodeid.partition("::")
    return rel.as_posix() + sep + rest


def short_key(nodeid: str) -> str:
    """The file's name and the rest of the id: what stays the same under any rootdir."""
    path, sep, rest = nodeid.partition("::")
    return PurePosixPath(path).name + sep + rest


def collection_problem(collections: Mapping[str, Sequence[str]]) -> str | None:
    """None when every gateway collected the same tests (by ``short_key``), else why not.

    ``collections``: gateway spec (``ssh=root@lab-arm64//python=...``) -> collected node ids,
    in the order the gateways reported.
    """
    if len(collections) < 2:
        return None
    (first, first_ids), *others = collections.items()
    want = {short_key(i) for i in first_ids}
    for spec, ids in others:
        got = {short_key(i) for i in ids}
        if got == want:
            continue
        if not ids or not first_ids:
            empty, full, n = (spec, first, len(first_ids)) if not ids else (first, spec, len(ids))
            return (
                f"gateway {empty} collected no tests, {full} collected {n}: a remote gateway runs in its "
                "own directory (~/pyexecnetcache), where this rootdir's testpaths do not apply. Name the "
                "suite for every host: `--pyargs pytest_kvmmm.suite` (or a path each host has). Or its "
                "collection failed: see the errors above"
            )
        missing, extra = sorted(want - got), sorted(got - want)
        detail = "; ".join(
            part for part in (
                f"{len(missing)} missing there (e.g. {missing[0]})" if missing else "",
                f"{len(extra)} only there (e.g. {extra[0]})" if extra else "",
            ) if part
        )  # fmt: skip
        return (
            f"gateway {spec} collected other tests than {first} ({detail}): every host must collect the "
            "same tests (the plugin's own cases do; check the paths, -k/-m and plugin versions per host)"
        )
    return None
