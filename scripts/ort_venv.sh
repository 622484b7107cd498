#!/usr/bin/env bash
# Make (or reuse) a virtual environment like .venv but with another onnxruntime release, to run
# the test suite against the ORT releases we claim:   bash scripts/ort_venv.sh 1.20.1
# Prints the venv's path on its last line.  Venvs live in ${MASKEDMHA_ORT_VENVS:-.ort-venvs}/VERSION
# and are reused when they already hold that onnxruntime (CI creates them once per run).
#
# Contents: torch 2.13.0 (CPU, from the machine's disk), onnxruntime==VERSION, the pinned onnx /
# onnxscript / pytest / hypothesis of constraints.txt, and maskedmha itself installed editable with
# --no-deps (the C++ library is built once, in the same build tree as .venv's).  ORT releases before
# 1.19 were built against numpy 1.x and fail to import under numpy 2, so those get numpy 1.26.
set -euo pipefail
cd "$(dirname "$0")/.."
ver=${1:?usage: bash scripts/ort_venv.sh ORT_VERSION}
root=${MASKEDMHA_ORT_VENVS:-.ort-venvs}
venv="$root/$ver"
PY=${PYTHON:-python3}

if [ -x "$venv/bin/python" ] && \
   "$venv/bin/python" -c "import onnxruntime, sys; sys.exit(onnxruntime.__version__ != '$ver')" 2>/dev/null; then
  # Reused: only bring its copy of the library up to date with the source (the build tree is
  # shared with .venv's, so this rebuilds nothing that build already did).
  "$venv/bin/python" -m pip --disable-pip-version-check -q install --no-deps --no-build-isolation -e . \
    2>&1 | grep -v "^WARNING: Location" >&2 || true
  echo "$venv"; exit 0
fi
start=$(date +%s)
echo "ort_venv: creating $venv (onnxruntime $ver, about a minute)" >&2
rm -rf "$venv"
mkdir -p "$root"
"$PY" -m venv "$venv"
# pip's own exit status counts (pipefail); only the machine's "Location ... is ignored" warnings
# are filtered out.
pip() { "$venv/bin/python" -m pip --disable-pip-version-check -q "$@" 2>&1 \
          | { grep -v "^WARNING: Location" || true; } >&2; }
numpy_pin=$(grep '^numpy==' constraints.txt)
not_pinned='onnxruntime|numpy'
# numpy 1.x: ml_dtypes (onnx's dependency) is pinned at a release that needs numpy 2, so pip
# chooses one that fits.
case "$ver" in 1.1[0-8].*) numpy_pin="numpy==1.26.4"; not_pinned="$not_pinned|ml_dtypes" ;; esac
pip install torch==2.13.0
# Everything else at the versions constraints.txt pins, except onnxruntime (and numpy where the
# release needs 1.x): a constraints file cannot be overridden, so it is filtered here.
grep -v -E "^($not_pinned)==" constraints.txt > "$venv/constraints.txt"
echo "$numpy_pin" >> "$venv/constraints.txt"
pip install -c "$venv/constraints.txt" "onnxruntime==$ver" "$numpy_pin" onnx onnxscript \
    pytest hypothesis scikit-build-core cmake ninja
pip install -c "$venv/constraints.txt" --no-deps --no-build-isolation -e .
"$venv/bin/python" -c "import onnxruntime, sys; sys.exit(onnxruntime.__version__ != '$ver')" || {
  echo "ort_venv: $venv does not hold onnxruntime $ver" >&2; exit 1; }
echo "ort_venv: $venv ready in $(( $(date +%s) - start )) s" >&2
echo "$venv"
