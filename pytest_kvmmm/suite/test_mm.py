"""The MM suite: one test per catalogue entry, one case per variant x backing source x guest mode.

Generated from ``pytest_kvmmm.suite.catalogue``: add an entry there and it appears here. Run it
with ``pytest -m pagetable`` (the main job) or any finer marker (``dirty_log``,
``memslot``, ``perf`` ...).
"""

from pytest_kvmmm.suite.cases import case_test
from pytest_kvmmm.suite.catalogue import CATALOGUE

for _entry in CATALOGUE:
    globals()[_entry.test_name] = case_test(_entry)
