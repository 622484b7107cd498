"""The C++ compiler for tests that build a small program from ops/ sources: $CXX, else c++, else
g++; the test is skipped where there is none."""
from __future__ import annotations

import os
import shutil

import pytest


def compiler_or_skip() -> str:
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if not cxx:
        pytest.skip("no C++ compiler")
    return cxx
