#!/usr/bin/env bash
# The ONNX Runtime release table of README.md: for each release given (default: the ones README
# claims), make its venv (scripts/ort_venv.sh) and run tests/release_check.py there; prints one
# Markdown row per release and exits non-zero when any release breaks the promise.
#   bash scripts/ort_matrix.sh [1.17.3 1.20.1 ...]
set -uo pipefail
cd "$(dirname "$0")/.."
releases=("$@")
[ ${#releases[@]} -gt 0 ] || releases=(1.17.3 1.19.2 1.20.1 1.21.1 1.23.2 1.24.4 1.26.0 1.27.0 1.32.0)
out=${MASKEDMHA_MATRIX_OUT:-build/ort_matrix}
mkdir -p "$out"
status=0
for v in "${releases[@]}"; do
  echo "ort_matrix: onnxruntime $v" >&2
  venv=$(bash scripts/ort_venv.sh "$v" | tail -n 1) || { echo "| $v | venv failed |"; status=1; continue; }
  "$venv/bin/python" tests/release_check.py --json 2>"$out/$v.log" | tail -n 1 > "$out/$v.json" \
    || status=1
done
.venv/bin/python - "$out" "${releases[@]}" <<'PY' || status=1
import json, os, sys
sys.path.insert(0, "tests")
from release_check import MODES, problems
out, releases = sys.argv[1], sys.argv[2:]
print("| onnxruntime | library | fused | in-file fallback | decompose() |")
print("|---|---|---|---|---|")
bad = False
for v in releases:
    try:
        row = json.load(open(os.path.join(out, f"{v}.json")))
    except Exception:
        print(f"| {v} | check failed (see {out}/{v}.log) | | | |"); bad = True; continue
    def col(mode):
        cells = [m[mode]["status"] for m in row["models"]]
        n = len(cells)
        parts = [f"{cells.count(s)}/{n} {s}" for s in ("ok", "refused", "wrong", "crash", "error") if cells.count(s)]
        bare = sum("fallback=False" in m[mode]["detail"] for m in row["models"] if m[mode]["status"] == "ok")
        if bare:
            parts[0] += f" ({bare} as the IR-9 fallback=False export)"
        return ", ".join(parts)
    print(f"| {row['onnxruntime']} | {row['library']['status']} | {col('fused')} | {col('fallback')} | {col('decompose')} |")
    bad |= bool(problems(row))
sys.exit(1 if bad else 0)
PY
exit $status
