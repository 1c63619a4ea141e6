#!/usr/bin/env bash
# Generate a real Allure report of the smoke suite on this host and check it (ci/allure_check.py):
# two hosts in one results directory, a rerun with history, categories, environment, and the
# report itself in headless Chromium. Artifacts and screenshots: ci/artifacts/allure/.
#
# Tools, installed when missing: Java, Node/npm and Chromium (apt, as root); allure-commandline
# (Allure 2) and playwright-core (npm, into $KVMMM_CACHE_DIR or ~/.cache/pytest-kvmmm/tools/allure,
# never into the repository). Extra arguments go to ci/allure_check.py (e.g. --reuse).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '[allure] %s\n' "$*" >&2; }

if [ -x .venv/bin/python ]; then
  PY=.venv/bin/python
elif python3 -c 'import pytest_kvmmm, allure_pytest' 2>/dev/null; then
  PY=python3
else
  bash ci/setup.sh
  PY=.venv/bin/python
fi

need=()
command -v java >/dev/null || need+=(default-jre-headless)
command -v npm >/dev/null || need+=(npm)
command -v chromium >/dev/null || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    say "missing: ${need[*]} -- run as root: apt-get install -y ${need[*]}"; exit 1
  fi
  say "apt-get install ${need[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null || {
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  }
fi

TOOLS=${KVMMM_ALLURE_TOOLS:-$("$PY" -c 'from pytest_kvmmm.provision.cache import default_cache_root; print(default_cache_root() / "tools" / "allure")')}
if [ ! -x "$TOOLS/node_modules/.bin/allure" ] || [ ! -d "$TOOLS/node_modules/playwright-core" ]; then
  say "npm install allure-commandline playwright-core into $TOOLS"
  mkdir -p "$TOOLS"
  npm install --prefix "$TOOLS" --no-audit --no-fund --silent allure-commandline@2 playwright-core >&2
fi

exec "$PY" ci/allure_check.py --tools "$TOOLS" "$@"
