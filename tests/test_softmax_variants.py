"""The attention core's two online-softmax variants (ops/softmax.h: the vector-extension template
for SSE / AVX2 / AVX-512 widths and the AVX-512 intrinsics function) agree on random key blocks
with masked, fully masked and NaN scores (tests/cpp/softmax_variants.cc, built here with the
system C++ compiler; the intrinsics variant runs only on a CPU with AVX-512F)."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_softmax_variants_agree(tmp_path):
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    exe = str(tmp_path / "softmax_variants")
    build = subprocess.run([cxx, "-O2", "-std=c++17", "-Wall", "-Wextra", "-Wno-psabi", "-Werror",
                            "-I", os.path.join(ROOT, "ops"),
                            os.path.join(ROOT, "tests", "cpp", "softmax_variants.cc"), "-o", exe],
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-3000:]
    run = subprocess.run([exe], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "softmax variants agree" in run.stdout, run.stdout
