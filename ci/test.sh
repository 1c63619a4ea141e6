#!/usr/bin/env bash
# The project's own checks: lint, types, unit tests and the integration tests against the real
# selftests on this host (they skip, with the reason, where /dev/kvm or the build is missing).
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/setup.sh
.venv/bin/ruff check pytest_kvmmm tests ci
.venv/bin/mypy
(cd ci/lab && MYPYPATH=../.. ../../.venv/bin/mypy --strict lab.py kvmmm_lab)  # the lab tooling, as its own package
exec .venv/bin/python -m pytest tests -p no:cacheprovider "$@"
