#!/usr/bin/env bash
# The two entry points named in the README:  run.sh demo  |  run.sh test [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-}
shift || true
bash scripts/setup.sh
VENV=${MASKEDMHA_VENV:-.venv}
case "$what" in
  demo)
    # Progress on stderr: importing torch and exporting take a few seconds before any output.
    echo "run: maskedmha demo: exporting a small Transformer, running it fused and decomposed (about 10 s)…" >&2
    exec "$VENV/bin/maskedmha" demo "$@" ;;
  test) exec "$VENV/bin/python" -m pytest -q tests "$@" ;;
  *) echo "usage: bash scripts/run.sh demo|test [args]" >&2; exit 2 ;;
esac
