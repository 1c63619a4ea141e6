#!/usr/bin/env bash
# CI stage: the lab run (this host + every emulated host kind of pytest_kvmmm/lab/hosts.py), after
# the unit and x86 integration tests. Builds the lab images first (cached under
# ~/.cache/pytest-kvmmm/lab), installing QEMU, mmdebstrap and the arm64 cross compiler with apt when
# missing (as root). Fails when an entry that must pass on a lab host does not (ci/lab/lab.py).
# A host kind whose tools cannot be had is skipped with its reason; with none, the stage is skipped.
# Then kvmmm-ab's proof on the x86 TDP host (ci/lab/ab_proof.py): stock KVM against a no-op
# rebuild (no verdict) and against a deliberately slowed build (regressed), modules built cached.
# Both run whatever the other's verdict; the first failure's status is the stage's.
set -uo pipefail
cd "$(dirname "$0")/../.."
bash ci/lab.sh ci "$@"
status=$?
.venv/bin/python ci/lab/ab_proof.py
ab=$?
[ "$status" -ne 0 ] || status=$ab
exit "$status"
