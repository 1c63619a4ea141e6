#!/usr/bin/env bash
# The package as a user gets it: `python -m build` makes the sdist and the wheel, with no warning
# from the build backend, and both pass `twine check --strict`; the license text is in both, the
# sdist leaves the tests out (they need the repository), and every console script answers --version.
set -euo pipefail
cd "$(dirname "$0")/.."
SAY_PREFIX=package
. ci/lib.sh
PY=${PY:-.venv/bin/python}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
if ! "$PY" -m build --outdir "$out/dist" . >"$out/build.log" 2>&1; then
  cat "$out/build.log" >&2; say "python -m build failed"; exit 1
fi
# "byte-compiling is disabled" is PYTHONDONTWRITEBYTECODE in the environment, not the package
if grep -i "warning" "$out/build.log" | grep -v "byte-compiling is disabled" >&2; then
  say "the build warned (above)"; exit 1
fi
"$PY" -m twine check --strict "$out"/dist/*
sdist=$(ls "$out"/dist/*.tar.gz) wheel=$(ls "$out"/dist/*.whl)
tar tzf "$sdist" >"$out/sdist.txt"
"$PY" -m zipfile -l "$wheel" >"$out/wheel.txt"
grep -q '^[^/]*/LICENSE$' "$out/sdist.txt" || { say "$sdist: no LICENSE"; exit 1; }
if grep -q '^[^/]*/tests/' "$out/sdist.txt"; then say "$sdist carries tests/ without what they need"; exit 1; fi
grep -q 'dist-info/licenses/LICENSE' "$out/wheel.txt" || { say "$wheel: no LICENSE"; exit 1; }
for script in kvmmm-build kvmmm-snapshot kvmmm-compare; do
  "$(dirname "$PY")/$script" --version >/dev/null
done
say "sdist and wheel pass twine check --strict: $(basename "$sdist") $(basename "$wheel")"
