#!/usr/bin/env bash
# Build the kernel library with AddressSanitizer + UndefinedBehaviorSanitizer (CMake option
# MASKEDMHA_SANITIZE=ON) into build/sanitize, and run the kernel-level tests against it.
# Fails when a test fails or any sanitizer report appears in the output.
#
# Tests (about 2 minutes on 2 cores): those that drive the op through hand-built ONNX graphs
# (test_kernel.py, including its subprocess runs of the AVX2 and generic code paths; test_kernel_errors.py; test_attributes.py;
# test_bad_inputs.py; test_shape_inference.py without its exporter part; test_library.py), plus
# every exported configuration run fused (test_configs.py), sessions shared by threads
# (test_concurrency.py) and the kernel's thread team (test_team.py; its stress program is built
# with ThreadSanitizer instead).  Left out: the other exporter tests (torch.onnx export under ASan's
# malloc is slow and runs none of our C++), test_fuzz.py (export per example) and
# test_memory.py (RSS figures mean nothing under ASan).
#
# python and onnxruntime are not built with ASan, so libasan is preloaded into the interpreter.
# detect_leaks=0: CPython does not free everything at exit, LeakSanitizer would report that.
# Needs the virtual environment made by scripts/setup.sh (${MASKEDMHA_VENV:-.venv}).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${MASKEDMHA_VENV:-.venv}
case "$VENV" in /*) ;; *) VENV="$ROOT/$VENV" ;; esac
PY="$VENV/bin/python"
BUILD="$ROOT/build/sanitize"
LOG="$BUILD/sanitize.log"
start=$(date +%s)

[ -x "$PY" ] || { echo "sanitize.sh: $PY not found; run scripts/setup.sh first" >&2; exit 2; }
CMAKE=cmake
[ -x "$VENV/bin/cmake" ] && CMAKE="$VENV/bin/cmake"
GEN=()
if [ -x "$VENV/bin/ninja" ]; then GEN=(-G Ninja -DCMAKE_MAKE_PROGRAM="$VENV/bin/ninja")
elif command -v ninja >/dev/null; then GEN=(-G Ninja); fi

# Same header discovery as the package build (cmake/OrtHeaders.cmake); reuse the headers that
# build already fetched, if any, instead of fetching them again.
CACHE_ARGS=()
if [ -z "${ORT_INCLUDE_DIR:-}" ]; then
  for d in "$ROOT"/build/*/_ort_headers; do
    if [ -f "$d/deb/usr/include/onnxruntime/onnxruntime_cxx_api.h" ] || \
       compgen -G "$d/gh/*/include/onnxruntime_cxx_api.h" >/dev/null; then
      CACHE_ARGS=(-DMASKEDMHA_ORT_CACHE_DIR="$d"); break
    fi
  done
fi

mkdir -p "$BUILD"
"$CMAKE" -S "$ROOT" -B "$BUILD" "${GEN[@]}" -DCMAKE_BUILD_TYPE=Debug -DMASKEDMHA_SANITIZE=ON \
  "${CACHE_ARGS[@]}" >"$BUILD/configure.log" 2>&1 || { cat "$BUILD/configure.log"; exit 1; }
"$CMAKE" --build "$BUILD" -j 2 >"$BUILD/build.log" 2>&1 || { cat "$BUILD/build.log"; exit 1; }
LIB="$BUILD/libmaskedmha_ops.so"
[ -f "$LIB" ] || { echo "sanitize.sh: $LIB was not built" >&2; exit 1; }

ASAN_RT=$(gcc -print-file-name=libasan.so)
STDCXX=$(gcc -print-file-name=libstdc++.so)
[ -f "$ASAN_RT" ] || { echo "sanitize.sh: libasan not found (gcc -print-file-name)" >&2; exit 2; }
# The ASan runtime must come first.  libstdc++ is preloaded too: python does not link it, and
# ASan's __cxa_throw interceptor needs the real one at start-up (else the kernel's first C++
# exception, e.g. a validation error, aborts with "CHECK failed ... real___cxa_throw").  The
# library pulls libubsan in itself (DT_NEEDED).
# Reports go to files (log_path), so those from subprocesses and from a process that aborts
# while pytest captures its output are not lost.
REPORTS="$BUILD/reports"
rm -rf "$REPORTS"; mkdir -p "$REPORTS"

set +e
( cd /tmp && \
  MASKEDMHA_LIBRARY="$LIB" LD_PRELOAD="$ASAN_RT $STDCXX" \
  PYTHONPATH="$ROOT/scripts${PYTHONPATH:+:$PYTHONPATH}" \
  PYTEST_ADDOPTS="-p sanitize_pytest_plugin ${PYTEST_ADDOPTS:-}" \
  ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1:log_path=$REPORTS/asan" \
  UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$REPORTS/ubsan" \
  "$PY" -m pytest -q -p no:cacheprovider --capture=sys \
    "$ROOT/tests/test_kernel.py" "$ROOT/tests/test_kernel_errors.py" "$ROOT/tests/test_attributes.py" "$ROOT/tests/test_bad_inputs.py" \
    "$ROOT/tests/test_shape_inference.py" "$ROOT/tests/test_library.py" \
    "$ROOT/tests/test_configs.py" "$ROOT/tests/test_concurrency.py" "$ROOT/tests/test_team.py" \
    "$ROOT/tests/test_kernel_varlen.py" "$ROOT/tests/test_kernel_skip_queries.py" "$ROOT/tests/test_kernel_float_mask_compaction.py" \
    "$ROOT/tests/test_team_modes.py" \
    -k "not exported" "$@" ) >"$LOG" 2>&1
rc=$?
set -e
tail -n 5 "$LOG"

PATTERN="ERROR: AddressSanitizer|AddressSanitizer: CHECK failed|ERROR: LeakSanitizer|runtime error:"
reports=$(cat "$LOG" "$REPORTS"/* 2>/dev/null | grep -cE "$PATTERN" || true)
passed=$(grep -oE "[0-9]+ passed" "$LOG" | tail -n 1 | grep -oE "[0-9]+" || echo 0)
echo "sanitizer run: ${passed} tests, ${reports} reports, $(( $(date +%s) - start ))s (log: $LOG)"
if [ "$reports" -ne 0 ]; then
  grep -nE -A 20 "$PATTERN" "$LOG" "$REPORTS"/* 2>/dev/null | head -n 80
  exit 1
fi
[ "$rc" -eq 0 ] || { echo "sanitize.sh: pytest failed (exit $rc)" >&2; exit "$rc"; }
