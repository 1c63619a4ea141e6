#!/usr/bin/env bash
# The main job: set up (ci/setup.sh), then run the page-table suite against this host.
# Extra arguments go to pytest, e.g.: ci/pagetable.sh --kvm-scale smoke --kvm-results=results/pt.jsonl
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/setup.sh
exec .venv/bin/python -m pytest -m pagetable "$@"
