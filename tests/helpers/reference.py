"""Random inputs in the op's layout (batch first, numpy, keyed by input name) and the answers they
must give: PyTorch's own ``F.multi_head_attention_forward`` and, where PyTorch has no equivalent
call, a float64 transcription of docs/MaskedMHA.md; the comparisons the kernel tests use."""
from __future__ import annotations

import contextlib
import math

import numpy as np
import torch
import torch.nn.functional as F

RTOL, ATOL = 1e-5, 1e-5


@contextlib.contextmanager
def no_fastpath():
    """PyTorch's documented path (F.multi_head_attention_forward): the fast path
    (aten::_native_multi_head_attention) off while the block runs."""
    old = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(old)


def add_weights(feeds: dict, f, E, kd, vd, *, separate, bias, bias_kv) -> None:
    """The op's weight and bias inputs into ``feeds``, drawn from ``f(*shape)`` in a fixed order
    (tests seed it), scaled so activations stay O(1): packed (3E, E) or separate projections,
    optional biases and bias_k/bias_v."""
    scale = 1.0 / math.sqrt(max(E, 1))
    if separate:
        feeds["in_proj_weight"] = f(E, E) * scale
        feeds["k_proj_weight"] = f(E, kd) / math.sqrt(kd)
        feeds["v_proj_weight"] = f(E, vd) / math.sqrt(vd)
    else:
        feeds["in_proj_weight"] = f(3 * E, E) * scale
    feeds["out_proj_weight"] = f(E, E) * scale
    if bias:
        feeds["in_proj_bias"] = f(3 * E) * 0.1
        feeds["out_proj_bias"] = f(E) * 0.1
    if bias_kv:
        feeds["bias_k"], feeds["bias_v"] = f(E), f(E)


def make_feeds(B, L, S, E, H, *, seed=0, self_attn=False, kdim=None, vdim=None, bias=True,
               bias_kv=False, kpm=None, attn_mask=None, pad_frac=0.3):
    """Random inputs in the op's layout.  kpm: None|"bool"|"float"; attn_mask: None|"bool2"|
    "float2"|"bool3"|"float3"."""
    rng = np.random.default_rng(seed)
    f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    separate = kdim is not None or vdim is not None
    kd, vd = kdim or E, vdim or E
    feeds = {}
    feeds["query"] = f(B, L, E)
    if self_attn:
        assert L == S and not separate
        feeds["key"] = feeds["value"] = feeds["query"]
    else:
        feeds["key"], feeds["value"] = f(B, S, kd), f(B, S, vd)
    add_weights(feeds, f, E, kd, vd, separate=separate, bias=bias, bias_kv=bias_kv)
    if kpm is not None:
        pad = rng.random((B, S)) < pad_frac
        pad[:, :1] = False  # keep at least one key per item (fully masked rows tested separately)
        feeds["key_padding_mask"] = pad if kpm == "bool" else np.where(
            pad, -1e4, rng.standard_normal((B, S)) * 0.5).astype(np.float32)
    if attn_mask is not None:
        shape = (L, S) if attn_mask.endswith("2") else (B * H, L, S)
        if attn_mask.startswith("bool"):
            m = rng.random(shape) < 0.25
            m[..., :1] = False
            feeds["attn_mask"] = m
        else:
            feeds["attn_mask"] = (rng.standard_normal(shape) * 0.5).astype(np.float32)
    return feeds


def torch_reference(feeds, H, *, add_zero_attn=False, need_weights=False, average=True,
                    dtype=torch.float64):
    """PyTorch's own multi_head_attention_forward (batch-first in/out)."""
    t = {k: (torch.from_numpy(np.asarray(v)) if v is not None else None) for k, v in feeds.items()}
    cast = lambda x: None if x is None else (x.to(dtype) if x.dtype != torch.bool else x)  # noqa
    q, k, v = (cast(t[n]).transpose(0, 1) for n in ("query", "key", "value"))
    E = q.shape[-1]
    separate = t.get("k_proj_weight") is not None
    bk, bv = t.get("bias_k"), t.get("bias_v")
    out, w = F.multi_head_attention_forward(
        q, k, v, E, H,
        in_proj_weight=None if separate else cast(t["in_proj_weight"]),
        in_proj_bias=cast(t.get("in_proj_bias")),
        bias_k=None if bk is None else cast(bk).reshape(1, 1, E),
        bias_v=None if bv is None else cast(bv).reshape(1, 1, E),
        add_zero_attn=add_zero_attn, dropout_p=0.0,
        out_proj_weight=cast(t["out_proj_weight"]), out_proj_bias=cast(t.get("out_proj_bias")),
        training=False, key_padding_mask=cast(t.get("key_padding_mask")),
        need_weights=need_weights, attn_mask=cast(t.get("attn_mask")),
        use_separate_proj_weight=separate,
        q_proj_weight=cast(t["in_proj_weight"]) if separate else None,
        k_proj_weight=cast(t.get("k_proj_weight")), v_proj_weight=cast(t.get("v_proj_weight")),
        average_attn_weights=average)
    out = out.transpose(0, 1).numpy()
    return out, (w.numpy() if w is not None else None)


def spec_reference(feeds, H, *, add_zero_attn=False, is_causal=False, nan_rows=False):
    """Literal float64 transcription of the Semantics section of docs/MaskedMHA.md (used where
    PyTorch has no single call with the same meaning, e.g. is_causal over the extra keys)."""
    g = {k: (None if v is None else (v if v.dtype == np.bool_ else v.astype(np.float64)))
         for k, v in feeds.items()}
    q_in, k_in, v_in = g["query"], g["key"], g["value"]
    B, L, E = q_in.shape
    S = k_in.shape[1]
    D = E // H
    W = g["in_proj_weight"]
    if g.get("k_proj_weight") is not None:
        Wq, Wk, Wv = W, g["k_proj_weight"], g["v_proj_weight"]
    else:
        Wq, Wk, Wv = W[:E], W[E:2 * E], W[2 * E:]
    b = g.get("in_proj_bias")
    bq, bk, bv = (b[:E], b[E:2 * E], b[2 * E:]) if b is not None else (0, 0, 0)
    q, k, v = q_in @ Wq.T + bq, k_in @ Wk.T + bk, v_in @ Wv.T + bv
    if g.get("bias_k") is not None:
        k = np.concatenate([k, np.broadcast_to(g["bias_k"], (B, 1, E))], 1)
        v = np.concatenate([v, np.broadcast_to(g["bias_v"], (B, 1, E))], 1)
    qh = q.reshape(B, L, H, D).transpose(0, 2, 1, 3)
    kh = k.reshape(B, k.shape[1], H, D).transpose(0, 2, 1, 3)
    vh = v.reshape(B, v.shape[1], H, D).transpose(0, 2, 1, 3)
    if add_zero_attn:
        kh = np.concatenate([kh, np.zeros((B, H, 1, D))], 2)
        vh = np.concatenate([vh, np.zeros((B, H, 1, D))], 2)
    Sp = kh.shape[2]
    canon = lambda m: np.where(m, -np.inf, 0.0) if m.dtype == np.bool_ else m  # noqa: E731
    M = np.zeros((B, H, L, Sp))
    if g.get("key_padding_mask") is not None:
        M[..., :S] += canon(g["key_padding_mask"])[:, None, None, :]
    if g.get("attn_mask") is not None:
        am = canon(g["attn_mask"])
        M[..., :S] += am.reshape(B, H, L, S) if am.ndim == 3 else am
    if is_causal:
        M = M + np.where(np.arange(Sp)[None, :] > np.arange(L)[:, None], -np.inf, 0.0)
    with np.errstate(invalid="ignore"):
        s = qh @ kh.transpose(0, 1, 3, 2) / math.sqrt(D) + M
        mx = s.max(-1, keepdims=True)
        e = np.exp(s - mx)
        P = e / e.sum(-1, keepdims=True)
    full = np.isneginf(s).all(-1) & (Sp > 0)
    P[full] = np.nan if nan_rows else 0.0
    o = (P @ vh).transpose(0, 2, 1, 3).reshape(B, L, E)
    bo = g.get("out_proj_bias")
    out = o @ g["out_proj_weight"].T + (bo if bo is not None else 0)
    return out, P


def assert_close(actual, expected, rtol=RTOL, atol=ATOL):
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=rtol, atol=atol)

