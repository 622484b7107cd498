"""`maskedmha doctor`'s instruction-set line restates ops/cpu.cc's rule in Python (the library
exports RegisterCustomOps only, so it cannot be asked).  Observable check: the variants round
differently, so the kernel's output with MASKEDMHA_ISA unset must be bit-for-bit the output with
MASKEDMHA_ISA forced to the ISA doctor predicts, and differ from the variants it did not pick."""
from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from maskedmha.doctor import ISAS, kernel_isa

_RUN = r"""
import hashlib, sys
import numpy as np, onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
import maskedmha
E, H, B, L = 64, 4, 2, 37
rng = np.random.default_rng(0)
node = helper.make_node("MaskedMHA", ["x", "x", "x", "w", "", "", "b", "wo", "bo", "", "", "kpm"],
                        ["y"], domain="com.maskedmha", num_heads=H)
inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
         for n, s in (("w", (3 * E, E)), ("b", (3 * E,)), ("wo", (E, E)), ("bo", (E,)))]
g = helper.make_graph([node], "isa", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [B, L, E]),
                                      helper.make_tensor_value_info("kpm", TensorProto.BOOL, [B, L])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [B, L, E])], inits)
m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.maskedmha", 1)])
m.ir_version = 9
opts = ort.SessionOptions(); opts.intra_op_num_threads = 1
kpm = np.zeros((B, L), bool); kpm[0, 30:] = True
y, = maskedmha.InferenceSession(m.SerializeToString(), opts).run(
    None, {"x": rng.standard_normal((B, L, E)).astype(np.float32), "kpm": kpm})
print(hashlib.sha256(y.tobytes()).hexdigest())
"""


def _digest(isa: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "MASKEDMHA_ISA"}
    if isa is not None:
        env["MASKEDMHA_ISA"] = isa
    res = subprocess.run([sys.executable, "-c", _RUN], env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def test_predicted_isa_is_the_one_the_kernel_runs():
    predicted, why = kernel_isa(env={})
    if predicted is None:
        pytest.skip(why)
    auto = _digest(None)
    forced = {isa: _digest(isa) for isa in ISAS}
    assert auto == forced[predicted], (predicted, why)
    others = [isa for isa in ISAS if ISAS.index(isa) < ISAS.index(predicted)]
    distinct = [isa for isa in others if forced[isa] != forced[predicted]]
    if others and not distinct:
        pytest.skip("the narrower variants give the same bits here: the choice is not observable")
    for isa in distinct:
        assert auto != forced[isa]
    # Forcing a wider ISA than the CPU has must not raise the choice (ops/cpu.cc): same bits.
    for isa in ISAS[ISAS.index(predicted) + 1:]:
        assert forced[isa] == auto


def test_rule_cases():
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        pytest.skip("not an x86 machine: the kernel has portable loops only")
    avx512 = {"avx512f", "avx2", "fma"}
    assert kernel_isa({}, avx512)[0] == "avx512"
    assert kernel_isa({}, {"avx2", "fma"})[0] == "avx2"
    assert kernel_isa({}, {"avx2"})[0] == "generic"          # AVX2 without FMA: portable
    assert kernel_isa({"MASKEDMHA_ISA": "avx2"}, avx512)[0] == "avx2"
    assert kernel_isa({"MASKEDMHA_ISA": "avx512"}, {"avx2", "fma"})[0] == "avx2"   # never raised
    isa, why = kernel_isa({"MASKEDMHA_ISA": "sse"}, avx512)
    assert isa == "avx512" and "ignored" in why
