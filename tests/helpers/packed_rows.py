"""Inputs of MaskedMHA's variable-length mode (packed (T, E) rows of B sequences plus
``sequence_offsets``) and their answer: PyTorch's ``F.multi_head_attention_forward`` in float64 run
on each sequence alone, as docs/MaskedMHA.md defines the mode."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .reference import add_weights


def packed_feeds(lengths, E, *, kdim=None, vdim=None, bias=True, bias_kv=False, self_attn=False,
                 seed=0) -> dict:
    """Random inputs: sequences of the given lengths packed back to back; ``kdim``/``vdim``:
    separate projection weights; ``self_attn``: key and value are the query array itself."""
    rng = np.random.default_rng(seed)
    f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    T = int(sum(lengths))
    separate = kdim is not None or vdim is not None
    kd, vd = kdim or E, vdim or E
    feeds = {"query": f(T, E)}
    if self_attn:
        assert not separate
        feeds["key"] = feeds["value"] = feeds["query"]
    else:
        feeds["key"], feeds["value"] = f(T, kd), f(T, vd)
    add_weights(feeds, f, E, kd, vd, separate=separate, bias=bias, bias_kv=bias_kv)
    feeds["sequence_offsets"] = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return feeds


def per_sequence_reference(feeds: dict, num_heads: int, is_causal=False,
                           add_zero_attn=False) -> np.ndarray:
    """(T, E) float64: each sequence through ``F.multi_head_attention_forward`` alone (L = S =
    its length).  is_causal as the op defines it (key j hidden from query i when j > i, the extra
    keys of bias_k/add_zero_attn included): PyTorch's own is_causal path (a causal attn_mask with
    the hint, no key padding mask, need_weights=False), which hands SDPA is_causal=True."""
    t = {k: torch.from_numpy(np.asarray(v)).double() for k, v in feeds.items()
         if k != "sequence_offsets"}
    offsets = feeds["sequence_offsets"]
    E = t["out_proj_weight"].shape[0]
    separate = "k_proj_weight" in t
    rows = []
    for s, e in zip(offsets[:-1], offsets[1:]):
        if e == s:
            continue
        n = int(e - s)
        q, k, v = (t[name][s:e].unsqueeze(1) for name in ("query", "key", "value"))  # (n,1,.)
        mask = torch.ones(n, n, dtype=torch.bool).triu(1) if is_causal else None
        with torch.no_grad():
            out, _ = F.multi_head_attention_forward(
                q, k, v, E, num_heads,
                None if separate else t["in_proj_weight"], t.get("in_proj_bias"),
                t["bias_k"].reshape(1, 1, E) if "bias_k" in t else None,
                t["bias_v"].reshape(1, 1, E) if "bias_v" in t else None,
                bool(add_zero_attn), 0.0, t["out_proj_weight"], t.get("out_proj_bias"),
                training=False, need_weights=False, attn_mask=mask, is_causal=bool(is_causal),
                use_separate_proj_weight=separate,
                q_proj_weight=t["in_proj_weight"] if separate else None,
                k_proj_weight=t.get("k_proj_weight"), v_proj_weight=t.get("v_proj_weight"))
        rows.append(out[:, 0])
    return (torch.cat(rows) if rows else torch.zeros(0, E, dtype=torch.float64)).numpy()
