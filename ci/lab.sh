#!/usr/bin/env bash
# The lab in a box: emulated arm64 KVM hosts (QEMU TCG) driven with this host from one pytest run.
#   ci/lab.sh build     # the arm64 host images, from Debian packages and linux-source-6.12 (cached)
#   ci/lab.sh run       # boot them, run the suite on this host and both of them, stop them
#   ci/lab.sh up|down|status, ci/lab.sh run -- PYTEST ARGS, ci/lab.sh ci (the CI stage)
# Sets up first (ci/setup.sh: .venv, this host's selftests); lab.py installs QEMU, mmdebstrap and
# the arm64 cross compiler with apt when missing. Details: ci/lab/lab.py --help.
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/setup.sh
exec .venv/bin/python ci/lab/lab.py "$@"
