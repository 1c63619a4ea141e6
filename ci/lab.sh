#!/usr/bin/env bash
# The lab in a box, from this checkout: kvmmm-lab (pytest_kvmmm/lab/) with the .venv's plugin.
#   ci/lab.sh build|up|run|status|down [ARGS]   # kvmmm-lab's commands (kvmmm-lab --help)
#   ci/lab.sh ci [ARGS]                         # the CI stage: ci/lab/lab.py (builds, runs, checks)
# Sets up first (ci/setup.sh: .venv, this host's selftests); kvmmm-lab build installs QEMU,
# mmdebstrap and the arm64 cross compiler with apt when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/setup.sh
if [ "${1:-}" = ci ]; then
  shift
  exec .venv/bin/python ci/lab/lab.py "$@"
fi
exec .venv/bin/kvmmm-lab "$@"
