#!/usr/bin/env bash
# Sets up everything pytest-kvmmm needs on a fresh Debian/Ubuntu KVM host, idempotently:
#   - build tools (make, gcc) and python3-venv, from apt when missing (as root);
#   - a virtualenv in .venv with the plugin installed (editable) and its test tools;
#   - the KVM selftests, built by kvmmm-build into ~/.cache/pytest-kvmmm (a warm cache is reused).
# Safe to run again: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."
SAY_PREFIX=setup
. ci/lib.sh

need=()
command -v make >/dev/null || need+=(make)
command -v gcc >/dev/null || need+=(gcc libc6-dev)
command -v xz >/dev/null || need+=(xz-utils)
for tool in flex bison bc rsync; do command -v "$tool" >/dev/null || need+=("$tool"); done
PYTHON=${PYTHON:-python3}
"$PYTHON" -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
[ ${#need[@]} -eq 0 ] || apt_install "${need[@]}"

if [ ! -x .venv/bin/python ]; then
  say "creating .venv"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.kvmmm-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  say "installing pytest-kvmmm and its test tools into .venv"
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q -e '.[test]'
  touch "$stamp"
fi

say "KVM selftests (kvmmm-build)"
.venv/bin/kvmmm-build >&2
