"""The release promise under whatever onnxruntime this venv holds (tests/release_check.py): the
library loads, every exported model runs fused with PyTorch's numbers, decompose()'s output does
too, and the in-file fallback is right or refused at session creation -- refused only for a file
that needs several fallback functions (an ORT that ignores function overloads) -- never wrong, never
a crash.  CI runs this in one venv per claimed release (scripts/ort_venv.sh)."""
from __future__ import annotations

import release_check


def test_release_keeps_the_promise(tmp_path):
    row = release_check.check(str(tmp_path))
    assert len(row["models"]) == 6
    assert release_check.problems(row) == []


def test_problems_flags_wrong_crash_and_refusal_of_a_single_function_file():
    ok = {"status": "ok", "detail": ""}
    row = {"library": ok, "models": [
        {"name": "one", "functions": 1, "fused": ok, "decompose": ok,
         "fallback": {"status": "refused", "detail": "x"}},
        {"name": "two", "functions": 2, "fused": {"status": "crash", "detail": "signal 11"},
         "decompose": ok, "fallback": {"status": "refused", "detail": "y"}},
        {"name": "three", "functions": 2, "fused": ok, "decompose": ok,
         "fallback": {"status": "wrong", "detail": "z"}},
    ]}
    assert release_check.problems(row) == [
        "one fallback: refused (x)", "two fused: crash (signal 11)", "three fallback: wrong (z)"]
