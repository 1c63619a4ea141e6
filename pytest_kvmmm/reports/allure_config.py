"""Allure 3's own configuration (``allurerc.mjs``): the categories and one environment per host.

Allure 3 (npm ``allure``, Node.js, no Java) reads the results Allure 2 does, but neither
``categories.json`` (every failure becomes a "Product error") nor ``environment.properties`` as
environments, and it groups its tree by package. Its configuration file says all three:
``categories.rules`` with the categories of ``categories.json`` in the same order (Allure 3
gives a result the first rule that matches, and the regexes are written for that), one
``environments`` entry per host, matched by the ``parentSuite`` label that carries the host, and
the tree grouped by host, binary and case (the labels ``allure_report`` gives each result).

Pure: no Allure import, hosts in, a text out. The file is written beside the results
(``<alluredir>/allurerc.mjs``) for ``allure generate --config``; it imports nothing, so it needs
no local install of ``allure``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from .allure_files import (
    CATEGORIES,
    ENVIRONMENT_FILE,
    Category,
    _read_ours,
    _regex,
    _write,
    parse_properties,
    split_environment,
)

CONFIG_FILE = "allurerc.mjs"
#: The tree: host (parentSuite), binary (feature), case variant (story).
GROUP_BY = ("parentSuite", "feature", "story")
#: Allure 3's rules for environments (core-api utils/environment.js): an id of latin letters,
#: digits, ``_`` and ``-``; a name without control characters or path separators; both at most 64
#: characters; ``default`` is the environment of results no matcher claims.
_ID_CHARS = re.compile(r"[^A-Za-z0-9_-]")
_NAME_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f/\\]")
_LIMIT = 64
_DEFAULT = "default"


def _unique(base: str, taken: set[str]) -> str:
    """``base``, or ``base_2``, ``base_3`` ... when taken (or Allure 3's ``default``); then taken."""
    ident, n = base, 1
    while ident in taken or ident == _DEFAULT:
        n += 1
        ident = f"{base[:_LIMIT - 1 - len(str(n))]}_{n}"
    taken.add(ident)
    return ident


def environment_id(host: str, taken: set[str]) -> str:
    """A valid id for ``host``'s environment, unique among ``taken``."""
    return _unique(_ID_CHARS.sub("_", host)[:_LIMIT] or "host", taken)


def environment_name(host: str, taken: set[str]) -> str:
    """The name Allure 3 shows for ``host``: the host itself where Allure 3 allows it."""
    name = _NAME_CHARS.sub("_", host).strip()[:_LIMIT]
    return _unique(name if name not in ("", ".", "..") else "host", taken)


def js_regex(pattern: str) -> str:
    """A JavaScript RegExp that matches the whole message, ``.`` across lines: what Allure 2 does
    with ``categories.json``'s Java regex (``matches()`` with DOTALL). Built from a JSON string,
    so no character of the pattern can end it early."""
    return f"new RegExp({json.dumps('^(?:' + pattern + ')$')}, \"s\")"


def _category_rules(categories: Sequence[Category]) -> list[str]:
    rules = []
    for index, category in enumerate(categories):
        statuses = json.dumps(list(category.statuses))
        rules.append(
            f"      {{ name: {json.dumps(category.name)}, matchers: {{ statuses: {statuses}, "
            f"message: {js_regex(_regex(index, categories))} }} }},"
        )
    return rules


def _environments(hosts: Mapping[str, Mapping[str, str]]) -> list[str]:
    """One environment per host: its results (the ``parentSuite`` label is the host) and its
    facts as the environment's variables (Allure 2 shows them from ``environment.properties``)."""
    ids: set[str] = set()
    names: set[str] = set()
    envs = []
    for host in sorted(hosts):
        ident, name = environment_id(host, ids), environment_name(host, names)
        envs.append(
            f"    {json.dumps(ident)}: {{\n"
            f"      name: {json.dumps(name)},\n"
            f"      variables: {json.dumps(dict(hosts[host]))},\n"
            f"      matcher: ({{ labels }}) => labels.some((l) => l.name === \"parentSuite\" && l.value === {json.dumps(host)}),\n"
            "    },"
        )
    return envs


def allurerc(hosts: Mapping[str, Mapping[str, str]], categories: Sequence[Category] = CATEGORIES, name: str = "KVM selftests") -> str:
    """The text of ``allurerc.mjs`` for results of ``hosts`` (host -> its facts)."""
    return "\n".join([
        "// Written by pytest-kvmmm for Allure 3: allure generate --config <this file> <results directory>",
        "export default {",
        f"  name: {json.dumps(name)},",
        "  categories: {",
        "    rules: [",
        *_category_rules(categories),
        "    ],",
        "  },",
        "  environments: {",
        *_environments(hosts),
        "  },",
        "  // the tree by host, then binary, then case: the labels allure_report gives each result",
        "  plugins: {",
        f"    awesome: {{ options: {{ groupBy: {json.dumps(list(GROUP_BY))} }} }},",
        "  },",
        "};",
        "",
    ])


def write_config(directory: Path) -> Path:
    """Write ``allurerc.mjs`` for every host of the directory's ``environment.properties``: this
    run's and those of earlier runs into the same directory (``write_session_files`` merged them,
    so call it after). The properties are read only when they are ours (no link, no foreign file)."""
    hosts, _ = split_environment(parse_properties(_read_ours(directory / ENVIRONMENT_FILE)))
    path = directory / CONFIG_FILE
    _write(path, allurerc(hosts))
    return path
