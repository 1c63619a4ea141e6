#!/usr/bin/env bash
# The project's own checks: lint, types, unit tests and the integration tests against the real
# selftests on this host (they skip, with the reason, where /dev/kvm or the build is missing).
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/setup.sh
.venv/bin/ruff check pytest_kvmmm tests ci
.venv/bin/mypy
.venv/bin/mypy --strict ci/lab/lab.py ci/lab/ab_proof.py  # the CI lab stage (the lab itself is pytest_kvmmm/lab)
bash ci/package_check.sh  # sdist + wheel: no build warning, twine check --strict, LICENSE, --version
exec .venv/bin/python -m pytest tests -p no:cacheprovider "$@"
