#!/usr/bin/env bash
# Generate a real Allure report of the smoke suite on this host and check it (ci/allure_check.py):
# two hosts in one results directory, a rerun with history, categories, environment, and the
# report itself in headless Chromium. Artifacts and screenshots: ci/artifacts/allure/.
#
# Tools, installed when missing: Java, Node/npm and Chromium (apt, as root); allure-commandline
# (Allure 2) and playwright-core (npm, into $KVMMM_ALLURE_TOOLS, by default <cache root>/tools/allure
# with the cache root $KVMMM_CACHE_DIR, else $XDG_CACHE_HOME/pytest-kvmmm, else ~/.cache/pytest-kvmmm;
# never into the repository).
# Extra arguments go to ci/allure_check.py (e.g. --reuse).
set -euo pipefail
cd "$(dirname "$0")/.."
SAY_PREFIX=allure
. ci/lib.sh

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
[ ${#need[@]} -eq 0 ] || apt_install "${need[@]}"

TOOLS=${KVMMM_ALLURE_TOOLS:-$("$PY" -c 'from pytest_kvmmm.provision.cache import default_cache_root; print(default_cache_root() / "tools" / "allure")')}
if [ ! -x "$TOOLS/node_modules/.bin/allure" ] || [ ! -d "$TOOLS/node_modules/playwright-core" ]; then
  say "npm install allure-commandline playwright-core into $TOOLS"
  mkdir -p "$TOOLS"
  npm install --prefix "$TOOLS" --no-audit --no-fund --silent allure-commandline@2 playwright-core >&2
fi

exec "$PY" ci/allure_check.py --tools "$TOOLS" "$@"
