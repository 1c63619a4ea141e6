#!/usr/bin/env bash
# CI stage: the lab, after the unit and x86 integration tests.
#   1. kvmmm-ab's proof on the x86 TDP host (ci/lab/ab_proof.py): stock KVM against a no-op rebuild
#      (no verdict) and against a deliberately slowed build (regressed), modules built and cached.
#      First, because it is short (about 8 minutes warm) and nothing else proves kvmmm-ab.
#   2. The lab run (this host + every emulated host kind of pytest_kvmmm/lab/hosts.py): builds the
#      lab images (cached under ~/.cache/pytest-kvmmm/lab), installing QEMU, mmdebstrap and the
#      arm64 cross compiler with apt when missing (as root); fails when an entry that must pass on
#      a lab host does not (ci/lab/lab.py). A host kind whose tools cannot be had is skipped with
#      its reason; with none, the run is skipped.
# Both run whatever the other's verdict; the first failure's status is the stage's.
# CI has 90 minutes for everything: with KVMMM_CI_DEADLINE (epoch seconds, set by .ci/run) the lab
# run gets what is left less 3 minutes, is interrupted like Ctrl-C when that runs out (its hosts
# are stopped), and says so loudly as UNFINISHED: it does not fail CI for the machine's speed.
set -uo pipefail
cd "$(dirname "$0")/../.."
bash ci/setup.sh >/dev/null
.venv/bin/python ci/lab/ab_proof.py
status=$?
if [ -n "${KVMMM_CI_DEADLINE:-}" ]; then
  left=$((KVMMM_CI_DEADLINE - $(date +%s) - 180))
  if [ "$left" -lt 600 ]; then
    echo "[lab] UNFINISHED: only ${left} s of CI's time left, the lab run was not started (not a pass)" >&2
    exit "$status"
  fi
  timeout --signal=INT --kill-after=120 "$left" bash ci/lab.sh ci "$@"
  lab=$?
  if [ "$lab" -eq 124 ] || [ "$lab" -eq 137 ]; then
    echo "[lab] UNFINISHED: the lab run reached CI's time budget after ${left} s and was interrupted (not a pass; see the log above for what ran)" >&2
    lab=0
  fi
else
  bash ci/lab.sh ci "$@"
  lab=$?
fi
[ "$status" -ne 0 ] || status=$lab
exit "$status"
