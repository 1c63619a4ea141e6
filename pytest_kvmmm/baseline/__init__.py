"""Before/after baselines: save a run's samples with its host fingerprint, compare runs with
noise-aware verdicts, fail regressions, and print the cover-letter table.

``store`` (files), ``fingerprint`` (what must match), ``stats`` (direction, bootstrap, verdict),
``compare`` (runs -> rows), ``table`` (terminal and Markdown), ``plot`` (optional PNG) are
pure and know nothing of pytest; the pytest side is ``pytest_kvmmm/pytest/baseline.py``, ``cli`` is
``kvmmm-compare``.
"""
