#!/usr/bin/env bash
# CI stage: the three-host lab run (this host + emulated arm64 4K and 16K hosts), after the unit
# and x86 integration tests. Builds the lab images first (cached under ~/.cache/pytest-kvmmm/lab),
# installing QEMU, mmdebstrap and the arm64 cross compiler with apt when missing (as root).
# When QEMU or Debian's arm64 packages cannot be had, it says so and exits 0: the stage is skipped.
set -euo pipefail
cd "$(dirname "$0")/../.."
exec bash ci/lab.sh ci "$@"
