"""What the installed onnxruntime release does with our files, for tests that run under every
release we claim (scripts/ort_venv.sh).  Each rule is measured (README, "Supported ONNX Runtime
releases"; symbolic/attach.py has the evidence):

- ORT 1.17-1.18 read ONNX IR <= 9 only; 1.19 and later read IR 10.
- ORT >= 1.27 pick a model-local function by (domain, name, overload); older releases ignore
  ``overload``, and our files with several fallback functions refuse them at session creation
  (guard functions: symbolic/attach.py)."""
from __future__ import annotations

import onnxruntime as ort

from maskedmha import DOMAIN, OP_TYPE

VERSION = tuple(int(p) for p in ort.__version__.split("+")[0].split(".")[:2])
MAX_IR = 9 if VERSION < (1, 19) else 10 ** 6
HONOURS_OVERLOADS = VERSION >= (1, 27)
# What a release that cannot run a file's fallback says at session creation.
REFUSAL = r"needs_function_overloads|Unsupported model IR version"


def reads(model) -> bool:
    return model.ir_version <= MAX_IR


def fallback_runs(model) -> bool:
    """Whether this release runs ``model``'s in-file fallback (else it refuses the file)."""
    ours = [f for f in model.functions if f.domain == DOMAIN and f.name == OP_TYPE]
    return reads(model) and bool(ours) and (HONOURS_OVERLOADS or not any(f.overload for f in ours))
