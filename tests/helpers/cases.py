"""The nn.MultiheadAttention configurations the suite checks against PyTorch, with the module,
inputs, names and dynamic axes each one needs at any (batch, tgt_len, src_len)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .reference import no_fastpath


@dataclass(frozen=True)
class Case:
    name: str
    embed_dim: int = 32
    num_heads: int = 4
    batch_first: bool = True
    self_attn: bool = True          # query is key is value (one graph input)
    kdim: int | None = None
    vdim: int | None = None
    bias: bool = True
    add_bias_kv: bool = False
    add_zero_attn: bool = False
    need_weights: bool = False
    average_attn_weights: bool = True
    kpm: str | None = None          # None | "bool" | "float"
    attn_mask: str | None = None    # None | "bool2" | "float2" | "bool3" | "float3" | "causal"
    is_causal: bool = False         # passed to forward (needs attn_mask="causal")

    def __str__(self) -> str:
        return self.name


CASES = [
    Case("self_kpm_bool", kpm="bool"),
    Case("self_kpm_float_seqfirst", kpm="float", batch_first=False),
    Case("cross_kpm_bool", self_attn=False, kpm="bool"),
    Case("cross_kdim_vdim", self_attn=False, kdim=24, vdim=40, kpm="bool", batch_first=False),
    Case("no_bias", bias=False, kpm="bool"),
    Case("bias_kv", add_bias_kv=True, kpm="bool", attn_mask="bool2"),
    Case("zero_attn", self_attn=False, add_zero_attn=True, kpm="float", attn_mask="float2"),
    Case("bias_kv_zero_attn_weights", add_bias_kv=True, add_zero_attn=True, kpm="bool",
         need_weights=True, average_attn_weights=False),
    Case("weights_avg", need_weights=True, kpm="bool"),
    Case("weights_per_head", self_attn=False, need_weights=True, average_attn_weights=False,
         attn_mask="float3"),
    Case("am_bool2", attn_mask="bool2"),
    Case("am_float2_cross", self_attn=False, attn_mask="float2"),
    Case("am_bool3", attn_mask="bool3"),
    Case("am_float3_seqfirst_cross", self_attn=False, attn_mask="float3", batch_first=False),
    Case("kpm_bool_am_float2", kpm="bool", attn_mask="float2"),
    Case("kpm_float_am_bool3", self_attn=False, kpm="float", attn_mask="bool3"),
    Case("causal", attn_mask="causal", is_causal=True),
    Case("causal_kpm", attn_mask="causal", is_causal=True, kpm="bool"),
    Case("causal_weights", attn_mask="causal", is_causal=True, need_weights=True),
    Case("no_masks", self_attn=False),
    Case("heads_1_wide", embed_dim=48, num_heads=1, kpm="bool", attn_mask="bool2"),
]

EXPORT_SHAPE = (2, 5, 7)             # (batch, tgt_len, src_len)
OTHER_SHAPES = [(3, 9, 4), (1, 3, 11)]


class SelfCall(nn.Module):
    def __init__(self, case: Case, mha: nn.MultiheadAttention):
        super().__init__()
        self.case, self.mha = case, mha

    def forward(self, x, key_padding_mask=None, attn_mask=None):
        return _call(self.case, self.mha, x, x, x, key_padding_mask, attn_mask)


class CrossCall(nn.Module):
    def __init__(self, case: Case, mha: nn.MultiheadAttention):
        super().__init__()
        self.case, self.mha = case, mha

    def forward(self, query, key, value, key_padding_mask=None, attn_mask=None):
        return _call(self.case, self.mha, query, key, value, key_padding_mask, attn_mask)


def _call(case, mha, q, k, v, kpm, am):
    out, weights = mha(q, k, v, key_padding_mask=kpm, attn_mask=am, need_weights=case.need_weights,
                       average_attn_weights=case.average_attn_weights, is_causal=case.is_causal)
    return (out, weights) if case.need_weights else out


def build_module(case: Case, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    mha = nn.MultiheadAttention(case.embed_dim, case.num_heads, bias=case.bias,
                                add_bias_kv=case.add_bias_kv, add_zero_attn=case.add_zero_attn,
                                kdim=case.kdim, vdim=case.vdim, batch_first=case.batch_first)
    # Default init leaves biases at 0; random ones make a wrong bias visible.
    with torch.no_grad():
        for name, p in mha.named_parameters():
            if "bias" in name:
                p.normal_(0, 0.5)
    wrapper = SelfCall(case, mha) if case.self_attn else CrossCall(case, mha)
    return wrapper.eval()


def _seq(case: Case, batch: int, length: int, dim: int, g: torch.Generator) -> torch.Tensor:
    x = torch.randn(batch, length, dim, generator=g)
    return x if case.batch_first else x.transpose(0, 1).contiguous()


def _hidden(shape, g: torch.Generator, p: float) -> torch.Tensor:
    """Random True entries, never in key column 0, so no row is fully masked by accident."""
    h = torch.rand(shape, generator=g) < p
    if shape[-1]:
        h[..., 0] = False
    return h


def make_inputs(case: Case, batch: int, tgt: int, src: int, seed: int = 0) -> dict[str, torch.Tensor | None]:
    """Ordered forward arguments (None for absent masks)."""
    g = torch.Generator().manual_seed(seed)
    if case.self_attn:
        src = tgt
    E, H = case.embed_dim, case.num_heads
    args: dict[str, torch.Tensor | None] = {}
    if case.self_attn:
        args["x"] = _seq(case, batch, tgt, E, g)
    else:
        args["query"] = _seq(case, batch, tgt, E, g)
        args["key"] = _seq(case, batch, src, case.kdim or E, g)
        args["value"] = _seq(case, batch, src, case.vdim or E, g)
    kpm = None
    if case.kpm:
        valid = torch.randint(min(1, src), src + 1, (batch,), generator=g)
        pad = torch.arange(src)[None, :] >= valid[:, None]
        kpm = pad if case.kpm == "bool" else torch.randn(batch, src, generator=g).masked_fill(pad, float("-inf"))
    args["key_padding_mask"] = kpm
    am = None
    if case.attn_mask == "causal":
        am = torch.triu(torch.full((tgt, src), float("-inf")), diagonal=1)
    elif case.attn_mask:
        shape = (tgt, src) if case.attn_mask.endswith("2") else (batch * H, tgt, src)
        hidden = _hidden(shape, g, 0.3)
        am = hidden if case.attn_mask.startswith("bool") else \
            torch.randn(shape, generator=g).masked_fill(hidden, float("-inf"))
    args["attn_mask"] = am
    return args


def input_names(case: Case, args: dict) -> list[str]:
    return [k for k, v in args.items() if v is not None]


def output_names(case: Case) -> list[str]:
    return ["output", "attn_weights"] if case.need_weights else ["output"]


def dynamic_axes(case: Case) -> dict[str, dict[int, str]]:
    src = "tgt" if case.self_attn else "src"
    seq = lambda length: {0: "batch", 1: length} if case.batch_first else {0: length, 1: "batch"}  # noqa: E731
    axes = {"output": seq("tgt")}
    if case.self_attn:
        axes["x"] = seq("tgt")
    else:
        axes.update(query=seq("tgt"), key=seq("src"), value=seq("src"))
    if case.kpm:
        axes["key_padding_mask"] = {0: "batch", 1: src}
    if case.attn_mask in ("bool2", "float2", "causal"):
        axes["attn_mask"] = {0: "tgt", 1: src}
    elif case.attn_mask:
        axes["attn_mask"] = {0: "batch_x_heads", 1: "tgt", 2: src}
    if case.need_weights:
        extra = "" if not (case.add_bias_kv or case.add_zero_attn) else "_plus_extra"
        axes["attn_weights"] = ({0: "batch", 1: "tgt", 2: src + extra} if case.average_attn_weights
                                else {0: "batch", 2: "tgt", 3: src + extra})
    return axes


def export_case(case: Case, path: str, dynamic: bool = True) -> str:
    """Exports the case's module, traced at EXPORT_SHAPE, with maskedmha.export to `path` (with
    the case's dynamic axes unless dynamic is False); returns path."""
    import maskedmha
    args = make_inputs(case, *EXPORT_SHAPE)
    maskedmha.export(build_module(case), tuple(args.values()), path, input_names=input_names(case, args),
                     output_names=output_names(case), dynamic_axes=dynamic_axes(case) if dynamic else None)
    return path


def reference(module: nn.Module, args: dict) -> list[np.ndarray]:
    """PyTorch's own answer, from F.multi_head_attention_forward: the fast path
    (aten::_native_multi_head_attention) is switched off so the reference is the documented code."""
    with no_fastpath(), torch.no_grad():
        out = module(*args.values())
    outs = out if isinstance(out, tuple) else (out,)
    return [o.numpy() for o in outs]


def feeds(args: dict) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in args.items() if v is not None}


def assert_matches(actual: np.ndarray, expected: np.ndarray, what: str, rel: float = 1e-5) -> None:
    """Same shape, NaN exactly where PyTorch has NaN, and |diff| <= rel * max(1, max|expected|)."""
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != PyTorch {expected.shape}"
    nan_a, nan_e = np.isnan(actual), np.isnan(expected)
    assert np.array_equal(nan_a, nan_e), \
        f"{what}: NaN at {np.count_nonzero(nan_a != nan_e)} positions where PyTorch differs"
    ok = ~nan_e
    if not ok.any():
        return
    scale = max(1.0, float(np.max(np.abs(expected[ok]))))
    err = float(np.max(np.abs(actual[ok].astype(np.float64) - expected[ok])))
    assert err <= rel * scale, f"{what}: max |diff| {err:.3e} > {rel * scale:.1e}"
