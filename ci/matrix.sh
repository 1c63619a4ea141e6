#!/usr/bin/env bash
# The dependency matrix: the project's unit tests on the oldest supported set (Python 3.9 with
# every floor of pyproject.toml pinned by ci/floors.txt) and on the newest (Python 3.13 with the
# latest releases), each in its own virtualenv, .venv-floor and .venv-latest, with the [test]
# extra's pytest plugins and validators (ci/floors.txt pins pytest-timeout at its floor too).
#   bash ci/matrix.sh [floor|latest]...     (default: both; extra pytest arguments via MATRIX_PYTEST_ARGS)
# The integration tests (real selftests, the lab) run once, in ci/test.sh's .venv: here they are
# left out, as they test the host rather than the dependency set and double CI's time.
# The interpreters come from pyenv (`pyenv versions`), else pythonX.Y on PATH.
set -uo pipefail
cd "$(dirname "$0")/.."
SAY_PREFIX=matrix
. ci/lib.sh

interpreter() {  # the newest installed CPython of version $1, from pyenv or PATH
  local prefix
  if command -v pyenv >/dev/null; then
    prefix=$(pyenv versions --bare 2>/dev/null | grep -E "^$1\.[0-9]+$" | sort -t. -k3 -n | tail -1)
    if [ -n "$prefix" ] && [ -x "$(pyenv root)/versions/$prefix/bin/python$1" ]; then
      echo "$(pyenv root)/versions/$prefix/bin/python$1"; return 0
    fi
  fi
  for prefix in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$1".*/; do  # pyenv's, when pyenv is not on PATH
    [ -x "${prefix}bin/python$1" ] && { echo "${prefix}bin/python$1"; return 0; }
  done
  command -v "python$1"
}

setup_venv() {  # $1 name, $2 python version; installs the plugin and its dependencies
  local name=$1 version=$2 venv=.venv-$1 python
  if ! python=$(interpreter "$version"); then
    say "$name: no Python $version (pyenv install $version, or put python$version on PATH)"; return 1
  fi
  if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import sys; assert sys.version_info[:2] == tuple(map(int, '$version'.split('.')))" 2>/dev/null; then
    rm -rf "$venv"
    say "$name: creating $venv with $python"
    "$python" -m venv "$venv" || return 1
  fi
  local pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)
  case $name in
    # the [test] extra less what has no Python 3.9 release (kcidb-io; its tests skip) and the linters
    floor) "${pip[@]}" -c ci/floors.txt -e . pytest-timeout pytest-html pytest-rerunfailures xmlschema pyyaml || return 1 ;;
    latest) "${pip[@]}" --upgrade pip && "${pip[@]}" --upgrade --upgrade-strategy eager -e '.[test]' || return 1 ;;
  esac
}

run_one() {  # $1 name, $2 python version
  local name=$1 venv=.venv-$1
  setup_venv "$1" "$2" 2>&1 | grep -v "is ignored: it is neither a file nor a directory" >&2
  [ "${PIPESTATUS[0]}" -eq 0 ] || { say "$name: setup failed"; return 1; }
  say "$name: $("$venv/bin/python" -c 'import platform; print("Python", platform.python_version())'), $(
    "$venv/bin/python" -m pip list --format=freeze 2>/dev/null |
      grep -iE '^(pytest|pluggy|pytest-xdist|allure-pytest|filelock|execnet|pytest-timeout|pytest-html|pytest-rerunfailures)==' | tr '\n' ' ')"
  # shellcheck disable=SC2086
  "$venv/bin/python" -m pytest tests -p no:cacheprovider -n 2 -q \
    --ignore=tests/test_integration.py --ignore=tests/test_lab_integration.py ${MATRIX_PYTEST_ARGS:-}
}

names=("$@")
[ ${#names[@]} -gt 0 ] || names=(floor latest)
status=0
for name in "${names[@]}"; do
  case $name in
    floor) version=3.9 ;;
    latest) version=3.13 ;;
    *) say "unknown set $name: choose floor or latest"; exit 2 ;;
  esac
  start=$SECONDS
  run_one "$name" "$version"
  rc=$?
  say "$name: exit $rc in $((SECONDS - start))s"
  [ "$rc" -eq 0 ] || status=$rc
done
exit "$status"
