"""What the export tests share: the two exporters, running a saved file every way it can run
(stock ORT on the file and on decompose(), our kernel where it loads), counting MaskedMHA nodes,
comparing with PyTorch's answer."""
from __future__ import annotations

import os

import numpy as np
import onnxruntime as ort

import maskedmha
from maskedmha.symbolic.schema import DOMAIN, OP_TYPE

EXPORTERS = ["dynamo", "torchscript"]
ATTENTION_OPS = {"Softmax", "Attention", "MultiHeadAttention"}


def ort_run(model, feeds: dict):
    sess = model if isinstance(model, ort.InferenceSession) else ort.InferenceSession(
        model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    return sess.run(None, {k: v for k, v in feeds.items() if k in names})


def _kernel_available() -> bool:
    """MASKEDMHA_LIBRARY names a build, or the packaged library loads."""
    if os.environ.get("MASKEDMHA_LIBRARY"):
        return True
    try:
        maskedmha.session_options()
    except (maskedmha.LibraryNotFoundError, maskedmha.LibraryLoadError):
        return False
    return True


KERNEL = _kernel_available()


def runs(saved, dec):
    """(label, model or session) pairs to check: stock ORT on the file and on decompose(), and
    the fused kernel when MASKEDMHA_LIBRARY names a build."""
    out = [("fallback", saved), ("decomposed", dec)]
    if KERNEL:
        out.append(("kernel", maskedmha.InferenceSession(saved.SerializeToString())))
    return out


def count_mha(model):
    return sum(1 for n in model.graph.node if n.domain == DOMAIN and n.op_type == OP_TYPE)


def close(got, ref, what):
    ref = ref.detach().numpy()
    scale = max(1.0, float(np.nanmax(np.abs(ref))) if ref.size else 1.0)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=2e-5 * scale, err_msg=what)
