#!/usr/bin/env bash
# Generate real Allure reports of the smoke suite on this host and check them (ci/allure_check.py):
# two hosts in one results directory, a rerun with history, categories, environments, and the
# reports themselves in headless Chromium, with Allure 2 and with Allure 3 (its allurerc.mjs).
# Artifacts and screenshots: ci/artifacts/allure/.
#
# Which Allure: $KVMMM_ALLURE, "2 3" by default; "3" alone needs no Java (Allure 3 is Node.js).
# Tools, installed when missing: Node/npm and Chromium (apt, as root), Java only for Allure 2;
# playwright-core and allure-commandline (Allure 2) into $KVMMM_ALLURE_TOOLS, Allure 3 (npm
# allure@3; its command is also called allure) into $KVMMM_ALLURE_TOOLS/allure3; by default
# <cache root>/tools/allure with the cache root $KVMMM_CACHE_DIR, else $XDG_CACHE_HOME/pytest-kvmmm,
# else ~/.cache/pytest-kvmmm; never into the repository).
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

ALLURE=${KVMMM_ALLURE:-2 3}
check_args=()
for version in $ALLURE; do
  case $version in
    2|3) check_args+=(--allure "$version") ;;
    *) say "KVMMM_ALLURE=$ALLURE: choose 2, 3 or both"; exit 2 ;;
  esac
done
[ ${#check_args[@]} -gt 0 ] || { say "KVMMM_ALLURE is empty: choose 2, 3 or both"; exit 2; }

need=()
case " $ALLURE " in *" 2 "*) command -v java >/dev/null || need+=(default-jre-headless) ;; esac
command -v npm >/dev/null || need+=(npm)
command -v chromium >/dev/null || need+=(chromium)
[ ${#need[@]} -eq 0 ] || apt_install "${need[@]}"

TOOLS=${KVMMM_ALLURE_TOOLS:-$("$PY" -c 'from pytest_kvmmm.provision.cache import default_cache_root; print(default_cache_root() / "tools" / "allure")')}
npm_install() {  # npm_install PREFIX PACKAGE...
  say "npm install ${*:2} into $1"
  mkdir -p "$1"
  npm install --prefix "$1" --no-audit --no-fund --silent "${@:2}" >&2
}
[ -d "$TOOLS/node_modules/playwright-core" ] || npm_install "$TOOLS" playwright-core
case " $ALLURE " in *" 2 "*) [ -x "$TOOLS/node_modules/.bin/allure" ] || npm_install "$TOOLS" allure-commandline@2 ;; esac
case " $ALLURE " in *" 3 "*) [ -x "$TOOLS/allure3/node_modules/.bin/allure" ] || npm_install "$TOOLS/allure3" allure@3 ;; esac

exec "$PY" ci/allure_check.py --tools "$TOOLS" "${check_args[@]}" "$@"
