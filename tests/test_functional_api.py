"""Issue 12, item 3: attention called through ``F.multi_head_attention_forward`` directly (OpenAI
CLIP's AttentionPool2d and pools written like it) becomes one MaskedMHA node too, with the
functional's exact semantics for every argument; calls the op cannot express (static_k/static_v,
an output projection wider than embed_dim) are exported unfused, with a warning, and still match
PyTorch."""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import maskedmha
from helpers.exporting import ATTENTION_OPS, EXPORTERS, close, count_mha, ort_run, runs


def _gen(seed):
    return torch.Generator().manual_seed(seed)


class AttentionPool2d(nn.Module):
    """OpenAI CLIP's ModifiedResNet attention pool (clip/model.py), verbatim apart from names:
    separate q/k/v Linear layers, their biases concatenated per call, and an output projection
    ``c_proj`` to ``output_dim`` (RN50: 2048 -> 1024)."""

    def __init__(self, spacial_dim: int, embed_dim: int, num_heads: int, output_dim=None):
        super().__init__()
        g = _gen(0)
        self.positional_embedding = nn.Parameter(
            torch.randn(spacial_dim ** 2 + 1, embed_dim, generator=g) / embed_dim ** 0.5)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.c_proj = nn.Linear(embed_dim, output_dim or embed_dim)
        self.num_heads = num_heads
        with torch.no_grad():
            for p in self.parameters():
                if p.dim() == 1:
                    p.normal_(0, 0.5, generator=g)

    def forward(self, x):
        x = x.flatten(start_dim=2).permute(2, 0, 1)  # NCHW -> (HW)NC
        x = torch.cat([x.mean(dim=0, keepdim=True), x], dim=0)  # (HW+1)NC
        x = x + self.positional_embedding[:, None, :].to(x.dtype)  # (HW+1)NC
        x, _ = F.multi_head_attention_forward(
            query=x[:1], key=x, value=x,
            embed_dim_to_check=x.shape[-1],
            num_heads=self.num_heads,
            q_proj_weight=self.q_proj.weight,
            k_proj_weight=self.k_proj.weight,
            v_proj_weight=self.v_proj.weight,
            in_proj_weight=None,
            in_proj_bias=torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias]),
            bias_k=None,
            bias_v=None,
            add_zero_attn=False,
            dropout_p=0,
            out_proj_weight=self.c_proj.weight,
            out_proj_bias=self.c_proj.bias,
            use_separate_proj_weight=True,
            training=self.training,
            need_weights=False
        )
        return x.squeeze(0)


def _images(B, C, side, seed):
    return torch.randn(B, C, side, side, generator=_gen(seed))


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("output_dim", [None, 12])
def test_clip_attention_pool(exporter, output_dim):
    E, side = 32, 3
    model = AttentionPool2d(side, E, 4, output_dim).eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        proto = maskedmha.export(model, (_images(2, E, side, 0),), input_names=["x"],
                                 output_names=["y"], exporter=exporter,
                                 dynamic_axes={"x": {0: "B"}, "y": {0: "B"}})
    assert not [w for w in caught if "unfused" in str(w.message)]
    assert count_mha(proto) == 1
    assert not {n.op_type for n in proto.graph.node if n.domain in ("", "ai.onnx")} & \
        ATTENTION_OPS
    dec = maskedmha.decompose(proto)
    for i, B in enumerate([2, 5, 1]):
        x = _images(B, E, side, seed=10 + i)
        with torch.no_grad():
            ref = model(x)
        assert ref.shape == (B, output_dim or E)
        for label, m in runs(proto, dec):
            close(ort_run(m, {"x": x.numpy()})[0], ref, f"{exporter} {label} B={B}")


# ----------------------------------------------------------------------------------------------
# Every argument of the functional, mapped to the op

E, H = 16, 4


class Functional(nn.Module):
    """Calls F.multi_head_attention_forward (seq-first) with the parameters and options of one
    configuration; masks are inputs (None allowed)."""

    def __init__(self, kdim=E, vdim=E, separate=False, in_bias=True, out_bias=True,
                 bias_kv=False, add_zero_attn=False, need_weights=False, average=True,
                 is_causal=False, out_dim=E, positional=False):
        super().__init__()
        g = _gen(1)

        def p(*shape):
            return nn.Parameter(torch.randn(*shape, generator=g) * 0.3)

        self.separate = separate
        if separate:
            self.q_w, self.k_w, self.v_w = p(E, E), p(E, kdim), p(E, vdim)
            self.in_w = None
        else:
            self.in_w = p(3 * E, E)
        self.in_b = p(3 * E) if in_bias else None
        self.out_w = p(out_dim, E)
        self.out_b = p(out_dim) if out_bias else None
        self.bias_k, self.bias_v = (p(1, 1, E), p(1, 1, E)) if bias_kv else (None, None)
        self.add_zero_attn, self.need_weights, self.average = add_zero_attn, need_weights, average
        self.is_causal, self.positional = is_causal, positional

    def forward(self, q, k, v, kpm, am):
        sep = self.separate
        common = dict(use_separate_proj_weight=sep, q_proj_weight=self.q_w if sep else None,
                      k_proj_weight=self.k_w if sep else None,
                      v_proj_weight=self.v_w if sep else None)
        if self.positional:  # every argument positional, as far as the signature allows
            out, w = F.multi_head_attention_forward(
                q, k, v, E, H, self.in_w, self.in_b, self.bias_k, self.bias_v,
                self.add_zero_attn, 0.0, self.out_w, self.out_b, False, kpm, self.need_weights,
                am, sep, common["q_proj_weight"], common["k_proj_weight"],
                common["v_proj_weight"], None, None, self.average, self.is_causal)
        else:
            out, w = F.multi_head_attention_forward(
                q, k, v, embed_dim_to_check=E, num_heads=H, in_proj_weight=self.in_w,
                in_proj_bias=self.in_b, bias_k=self.bias_k, bias_v=self.bias_v,
                add_zero_attn=self.add_zero_attn, dropout_p=0.1, out_proj_weight=self.out_w,
                out_proj_bias=self.out_b, training=self.training, key_padding_mask=kpm,
                need_weights=self.need_weights, attn_mask=am,
                average_attn_weights=self.average, is_causal=self.is_causal, **common)
        if self.need_weights:
            return out, w
        assert w is None
        return out


CONFIGS = {
    # name: (module kwargs, masks: kpm "b"/"f"/None, attn mask "2b"/"2f"/"3b"/"3f"/None, unbatched)
    "packed_kpm_b": (dict(), "b", None, False),
    "packed_am3_f_weights_per_head": (dict(need_weights=True, average=False), None, "3f", False),
    "separate_kdim_vdim_kpm_f_am2_b": (dict(separate=True, kdim=12, vdim=8), "f", "2b", False),
    "no_biases_bias_kv_zero_attn_weights": (dict(in_bias=False, out_bias=False, bias_kv=True,
                                                 add_zero_attn=True, need_weights=True),
                                            "b", "2f", False),
    "causal_hint": (dict(is_causal=True), None, "2b", False),
    "causal_hint_with_kpm": (dict(is_causal=True), "b", "2b", False),
    "narrow_out_proj_positional": (dict(out_dim=10, positional=True), "b", "3b", False),
    "unbatched_weights": (dict(need_weights=True), "b", "3f", True),
}


def _inputs(kw, kpm_kind, am_kind, unbatched, B, L, S, seed):
    g = _gen(seed)
    kdim, vdim = kw.get("kdim", E), kw.get("vdim", E)
    if kw.get("is_causal"):
        S = L
    q, k, v = (torch.randn(n, B, d, generator=g) for n, d in ((L, E), (S, kdim), (S, vdim)))
    kpm = am = None
    if kpm_kind:
        kpm = torch.rand(B, S, generator=g) < 0.3
        kpm[:, 0] = False  # no fully masked rows (PyTorch's two paths differ there)
        if kpm_kind == "f":
            kpm = torch.randn(B, S, generator=g)
    if am_kind:
        shape = (L, S) if am_kind[0] == "2" else (B * H, L, S)
        if kw.get("is_causal"):
            am = torch.ones(L, S, dtype=torch.bool).triu(1)
        elif am_kind[1] == "b":
            am = torch.rand(shape, generator=g) < 0.3
            am[..., 0] = False
        else:
            am = torch.randn(shape, generator=g)
    if unbatched:
        q, k, v = q[:, 0], k[:, 0], v[:, 0]
        kpm = kpm[0] if kpm is not None else None
        am = am[:H] if am is not None and am.dim() == 3 else am
    return q, k, v, kpm, am


def _axes(kw, am_kind, unbatched):
    if unbatched:
        return None
    ax = {"q": {0: "L", 1: "B"}, "k": {0: "S", 1: "B"}, "v": {0: "S", 1: "B"},
          "kpm": {0: "B", 1: "S"}}
    if am_kind:
        ax["am"] = {0: "L", 1: "S"} if am_kind[0] == "2" else {0: "BH", 1: "L", 2: "S"}
    return ax


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_functional_arguments(name, exporter):
    kw, kpm_kind, am_kind, unbatched = CONFIGS[name]
    model = Functional(**kw).eval()
    names = ["q", "k", "v", "kpm", "am"]
    args = _inputs(kw, kpm_kind, am_kind, unbatched, 2, 5, 6, seed=0)
    proto = maskedmha.export(model, args, input_names=names, exporter=exporter,
                             dynamic_axes=_axes(kw, am_kind, unbatched))
    assert count_mha(proto) == 1
    assert not {n.op_type for n in proto.graph.node if n.domain in ("", "ai.onnx")} & \
        ATTENTION_OPS
    shapes = [(2, 5, 6)] if unbatched else [(2, 5, 6), (3, 7, 4), (1, 3, 9)]
    if kw.get("is_causal"):
        shapes = [(b, l, l) for b, l, _ in shapes]
    dec = maskedmha.decompose(proto)
    for i, (B, L, S) in enumerate(shapes):
        a = _inputs(kw, kpm_kind, am_kind, unbatched, B, L, S, seed=i)
        with torch.no_grad():
            ref = model(*a)
        refs = ref if isinstance(ref, tuple) else (ref,)
        feeds = {n: t.numpy() for n, t in zip(names, a) if t is not None}
        for label, m in runs(proto, dec):
            got = ort_run(m, feeds)
            assert len(got) == len(refs)
            for gi, ri in zip(got, refs):
                close(gi, ri, f"{name} {exporter} {label} B,L,S={B},{L},{S}")


# ----------------------------------------------------------------------------------------------
# What the op cannot express: left to PyTorch, with a warning

class StaticKV(nn.Module):
    def __init__(self):
        super().__init__()
        self.fn = Functional()

    def forward(self, q, k, v, static_k, static_v):
        f = self.fn
        return F.multi_head_attention_forward(
            q, k, v, E, H, f.in_w, f.in_b, None, None, False, 0.0, f.out_w, f.out_b,
            training=False, need_weights=False, static_k=static_k, static_v=static_v)[0]


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("case", ["static_kv", "wide_out_proj"])
def test_unfusable_calls_stay_pytorch(case, exporter):
    B, L, S = 2, 5, 6
    g = _gen(3)
    q, k, v = (torch.randn(n, B, E, generator=g) for n in (L, S, S))
    if case == "static_kv":
        model = StaticKV().eval()
        args = (q, k, v, torch.randn(B * H, S, E // H, generator=g),
                torch.randn(B * H, S, E // H, generator=g))
    else:
        model = Functional(out_dim=2 * E).eval()
        args = (q, k, v, None, None)
    with pytest.warns(UserWarning, match="exported unfused"):
        proto = maskedmha.export(model, args, exporter=exporter)
    assert count_mha(proto) == 0
    with torch.no_grad():
        ref = model(*args)
    # Default input names are forward's parameter names; an input the graph does not read
    # (k and v beside static_k/v: TorchScript drops them) is filtered out by ort_run.
    names = ["q", "k", "v", "static_k", "static_v"] if case == "static_kv" else ["q", "k", "v"]
    feeds = {n: a.numpy() for n, a in zip(names, args) if a is not None}
    close(ort_run(proto, feeds)[0], ref, f"{case} {exporter}")


def test_functional_is_restored():
    before = F.multi_head_attention_forward
    model = Functional(is_causal=True).eval()
    x = torch.randn(3, 2, E)
    with pytest.raises(RuntimeError, match="Need attn_mask"):
        maskedmha.export(model, (x, x, x, None, None))
    assert F.multi_head_attention_forward is before
    maskedmha.export(model, (x, x, x, None, torch.ones(3, 3, dtype=torch.bool).triu(1)))
    assert F.multi_head_attention_forward is before
