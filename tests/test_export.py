"""maskedmha.export: one MaskedMHA node per attention, dynamic shapes, stock-ORT fallback and
decompose() all matching PyTorch, for both exporters."""
from __future__ import annotations

import io

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import maskedmha
from helpers.exporting import (ATTENTION_OPS, EXPORTERS, KERNEL, close, count_mha, ort_run,
                               runs)
from helpers.reference import no_fastpath

SHAPES = [(2, 5, 6), (3, 7, 4), (1, 3, 9)]   # (B, L, S): export shape first, then two others


def all_ops(model):
    ops = [(n.domain, n.op_type) for n in model.graph.node]
    for f in model.functions:
        ops += [(n.domain, n.op_type) for n in f.node]
    return ops


# ----------------------------------------------------------------------------------------------
# nn.MultiheadAttention alone

class MHACall(nn.Module):
    """Calls an nn.MultiheadAttention with the optional masks given as inputs (None allowed)."""

    def __init__(self, mha, self_attn, need_weights, average, is_causal):
        super().__init__()
        self.mha, self.self_attn = mha, self_attn
        self.need_weights, self.average, self.is_causal = need_weights, average, is_causal

    def forward(self, q, k, v, kpm, am):
        if self.self_attn:
            k = v = q
        out, w = self.mha(q, k, v, key_padding_mask=kpm, need_weights=self.need_weights,
                          attn_mask=am, average_attn_weights=self.average,
                          is_causal=self.is_causal)
        return (out, w) if self.need_weights else out


E, H = 16, 4

CONFIGS = {
    # name: (module kwargs, call options)
    "self_kpm_b": (dict(), dict(self_attn=True, kpm="b")),
    "self_bf_false_am2_f": (dict(batch_first=False), dict(self_attn=True, am="2f")),
    "cross_kdim_vdim_kpm_f_am3_b": (dict(kdim=12, vdim=8),
                                    dict(kpm="f", am="3b")),
    "nobias_weights_avg_kpm_b_am2_b": (dict(bias=False), dict(kpm="b", am="2b",
                                                              need_weights=True)),
    "bias_kv_zero_attn_weights_all_am3_f": (dict(add_bias_kv=True, add_zero_attn=True),
                                            dict(am="3f", kpm="b", need_weights=True,
                                                 average=False)),
    "causal_self": (dict(), dict(self_attn=True, am="2b", is_causal=True)),
    "causal_with_kpm": (dict(), dict(self_attn=True, am="2f", kpm="b", is_causal=True)),
    "bf_false_cross_bias_kv_no_masks": (dict(batch_first=False, add_bias_kv=True), dict()),
}


def make_inputs(opts, mha, B, L, S, seed=0):
    g = torch.Generator().manual_seed(seed)
    if opts.get("self_attn"):
        S = L
    bf = mha.batch_first

    def seq(n, d):
        return torch.randn((B, n, d) if bf else (n, B, d), generator=g)

    q, k, v = seq(L, mha.embed_dim), seq(S, mha.kdim), seq(S, mha.vdim)
    if opts.get("self_attn"):
        k = v = None
    kpm = am = None
    if opts.get("kpm"):
        kpm = torch.rand(B, S, generator=g) < 0.3
        kpm[:, 0] = False  # no fully masked rows here (PyTorch's two paths differ there)
        if opts["kpm"] == "f":
            kpm = torch.randn(B, S, generator=g)
    if opts.get("am"):
        shape = (L, S) if opts["am"][0] == "2" else (B * mha.num_heads, L, S)
        if opts.get("is_causal"):
            am = torch.ones(L, S, dtype=torch.bool).triu(1)
            if opts["am"][1] == "f":
                am = torch.zeros(L, S).masked_fill(am, float("-inf"))
        elif opts["am"][1] == "b":
            am = torch.rand(shape, generator=g) < 0.3
            am[..., 0] = False
        else:
            am = torch.randn(shape, generator=g)
    return q, k, v, kpm, am


def dyn_axes(opts, mha):
    b, s = (0, 1) if mha.batch_first else (1, 0)
    ax = {"q": {b: "B", s: "L"}, "k": {b: "B", s: "S"}, "v": {b: "B", s: "S"},
          "kpm": {0: "B", 1: "S"}}
    if opts.get("self_attn"):
        ax["kpm"] = {0: "B", 1: "L"}
    am = opts.get("am")
    if am:
        last = "L" if opts.get("self_attn") else "S"
        ax["am"] = {0: "L", 1: last} if am[0] == "2" else {0: "BH", 1: "L", 2: last}
    ax["out"] = {b: "B", s: "L"}
    return ax


def feeds_of(q, k, v, kpm, am):
    return {n: t.numpy() for n, t in zip(["q", "k", "v", "kpm", "am"], (q, k, v, kpm, am))
            if t is not None}


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_mha_alone(name, exporter, tmp_path):
    mod_kw, opts = CONFIGS[name]
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(E, H, batch_first=mod_kw.pop("batch_first", True),
                                **mod_kw).eval()
    if mha.bias_k is not None:
        nn.init.normal_(mha.bias_k)
        nn.init.normal_(mha.bias_v)
    model = MHACall(mha, opts.get("self_attn", False), opts.get("need_weights", False),
                    opts.get("average", True), opts.get("is_causal", False)).eval()
    args = make_inputs(opts, mha, *SHAPES[0])
    out_names = ["out", "w"] if model.need_weights else ["out"]
    path = tmp_path / "m.onnx"
    proto = maskedmha.export(model, args, str(path), input_names=["q", "k", "v", "kpm", "am"],
                             output_names=out_names, dynamic_axes=dyn_axes(opts, mha),
                             exporter=exporter)
    assert count_mha(proto) == 1
    assert not {op for d, op in ((n.domain, n.op_type) for n in proto.graph.node)
                if d in ("", "ai.onnx")} & ATTENTION_OPS
    node = next(n for n in proto.graph.node if n.op_type == "MaskedMHA")
    # The node's fallback is in the file (how functions are laid out, overloads and IR version
    # included, is attach's business and tested with it).
    ours = [f for f in proto.functions
            if f.domain == maskedmha.DOMAIN and f.name == maskedmha.OP_TYPE]
    assert any(f.overload == node.overload for f in ours)
    onnx.checker.check_model(proto, full_check=True)
    saved = onnx.load(str(path))
    assert count_mha(saved) == 1

    dec = maskedmha.decompose(proto)
    assert count_mha(dec) == 0
    assert all(d in ("", "ai.onnx") for d, _ in all_ops(dec))
    assert not any(i.domain == maskedmha.DOMAIN for i in dec.opset_import)

    for i, (B, L, S) in enumerate(SHAPES):
        q, k, v, kpm, am = make_inputs(opts, mha, B, L, S, seed=i)
        with torch.no_grad(), no_fastpath():
            ref = model(q, k, v, kpm, am)
        refs = ref if isinstance(ref, tuple) else (ref,)
        feeds = feeds_of(q, k, v, kpm, am)
        for label, m in runs(saved, dec):
            got = ort_run(m, feeds)
            assert len(got) == len(refs)
            for gi, ri in zip(got, refs):
                close(gi, ri, f"{name} {exporter} {label} at B,L,S={B},{L},{S}")


@pytest.mark.parametrize("batch_first", [True, False])
def test_unbatched_inputs(batch_first):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(E, H, batch_first=batch_first).eval()
    model = MHACall(mha, False, True, False, False).eval()
    L, S = 4, 6
    args = (torch.randn(L, E), torch.randn(S, E), torch.randn(S, E), torch.rand(S) < 0.3,
            torch.randn(H, L, S))
    args[3][0] = False
    for exporter in EXPORTERS:
        proto = maskedmha.export(model, args, exporter=exporter,
                                 input_names=["q", "k", "v", "kpm", "am"],
                                 output_names=["out", "w"])
        assert count_mha(proto) == 1
        with torch.no_grad(), no_fastpath():
            ref = model(*args)
        got = ort_run(proto, feeds_of(*args))
        close(got[0], ref[0], exporter)
        close(got[1], ref[1], exporter)


class OutputOnly(MHACall):
    def forward(self, q, k, v, kpm, am):
        out, _ = self.mha(q, k, v, key_padding_mask=kpm, attn_mask=am)  # need_weights=True
        return out


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("need_weights", [False, True, "unused"])
def test_fully_masked_rows_match_pytorch(need_weights, exporter):
    """need_weights=True -> NaN rows (PyTorch's explicit softmax), False -> zero attention.
    Weights computed but never read: the node loses its second output, keeps "nan"."""
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(E, H, batch_first=True).eval()
    if need_weights == "unused":
        model = OutputOnly(mha, False, True, True, False).eval()
    else:
        model = MHACall(mha, False, need_weights, True, False).eval()
    B, L, S = 2, 3, 5
    q, k, v = torch.randn(B, L, E), torch.randn(B, S, E), torch.randn(B, S, E)
    kpm = torch.zeros(B, S, dtype=torch.bool)
    kpm[1] = True
    proto = maskedmha.export(model, (q, k, v, kpm, None), input_names=["q", "k", "v", "kpm"],
                             exporter=exporter)
    node = next(n for n in proto.graph.node if n.op_type == "MaskedMHA")
    fm = [a for a in node.attribute if a.name == "fully_masked_row"][0]
    assert fm.s == (b"nan" if need_weights else b"zero")
    assert len(node.output) == (2 if need_weights is True else 1)
    with torch.no_grad(), no_fastpath():
        ref = model(q, k, v, kpm, None)
    refs = ref if isinstance(ref, tuple) else (ref,)
    assert np.isnan(refs[0][1].numpy()).all() == bool(need_weights)
    for label, m in runs(proto, maskedmha.decompose(proto)):
        got = ort_run(m, feeds_of(q, k, v, kpm, None))
        assert len(got) == len(refs)
        for g, r in zip(got, refs):
            r = r.numpy()
            assert np.array_equal(np.isnan(g), np.isnan(r)), label
            np.testing.assert_allclose(np.nan_to_num(g), np.nan_to_num(r), atol=1e-5,
                                       err_msg=label)


def test_is_causal_without_mask_raises_like_pytorch():
    mha = nn.MultiheadAttention(E, H, batch_first=True).eval()
    model = MHACall(mha, True, False, True, True).eval()
    x = torch.randn(2, 3, E)
    with pytest.raises(RuntimeError, match="Need attn_mask"):
        maskedmha.export(model, (x, None, None, None, None), exporter="torchscript")


# ----------------------------------------------------------------------------------------------
# Transformer layers

def _transformer_case(kind, batch_first):
    torch.manual_seed(0)
    kw = dict(d_model=E, nhead=H, dim_feedforward=32, dropout=0.0, batch_first=batch_first)
    if kind == "encoder_layer":
        model = nn.TransformerEncoderLayer(**kw)
        n_attn = 1
    elif kind == "decoder_layer":
        model = nn.TransformerDecoderLayer(**kw)
        n_attn = 2
    else:
        model = nn.Transformer(num_encoder_layers=2, num_decoder_layers=1, **kw)
        n_attn = 2 + 2
    return model.eval(), n_attn


def _transformer_args(kind, batch_first, B, S, T, seed):
    g = torch.Generator().manual_seed(seed)

    def seq(n):
        return torch.randn((B, n, E) if batch_first else (n, B, E), generator=g)

    src_kpm = torch.rand(B, S, generator=g) < 0.3
    src_kpm[:, 0] = False
    tgt_kpm = torch.rand(B, T, generator=g) < 0.3
    tgt_kpm[:, 0] = False
    causal = nn.Transformer.generate_square_subsequent_mask(T)
    if kind == "encoder_layer":
        return dict(src=seq(S), src_key_padding_mask=src_kpm)
    if kind == "decoder_layer":
        return dict(tgt=seq(T), memory=seq(S), tgt_mask=causal, tgt_key_padding_mask=tgt_kpm,
                    memory_key_padding_mask=src_kpm)
    return dict(src=seq(S), tgt=seq(T), tgt_mask=causal, src_key_padding_mask=src_kpm,
                tgt_key_padding_mask=tgt_kpm, memory_key_padding_mask=src_kpm)


def _transformer_axes(inputs, batch_first):
    b, s = (0, 1) if batch_first else (1, 0)
    axes = {}
    for name in inputs:
        if name in ("src", "memory"):
            axes[name] = {b: "B", s: "S"}
        elif name == "tgt":
            axes[name] = {b: "B", s: "T"}
        elif name == "tgt_mask":
            axes[name] = {0: "T", 1: "T"}
        elif name in ("src_key_padding_mask", "memory_key_padding_mask"):
            axes[name] = {0: "B", 1: "S"}
        elif name == "tgt_key_padding_mask":
            axes[name] = {0: "B", 1: "T"}
    return axes


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("kind,batch_first", [("encoder_layer", True),
                                              ("decoder_layer", False),
                                              ("transformer", True),
                                              ("transformer", False)])
def test_transformers(kind, batch_first, exporter):
    model, n_attn = _transformer_case(kind, batch_first)
    inputs = _transformer_args(kind, batch_first, 2, 6, 5, seed=0)
    names = list(inputs)
    axes = _transformer_axes(inputs, batch_first)
    buf = io.BytesIO()
    proto = maskedmha.export(model, (), buf, kwargs=inputs, input_names=names,
                             output_names=["out"], dynamic_axes=axes, exporter=exporter)
    assert count_mha(proto) == n_attn
    assert not {op for d, op in ((n.domain, n.op_type) for n in proto.graph.node)
                if d in ("", "ai.onnx")} & ATTENTION_OPS
    saved = onnx.load_from_string(buf.getvalue())
    dec = maskedmha.decompose(proto)
    assert count_mha(dec) == 0
    for i, (B, S, T) in enumerate([(2, 6, 5), (3, 4, 7), (1, 9, 3)]):
        feeds_t = _transformer_args(kind, batch_first, B, S, T, seed=i)
        with torch.no_grad(), no_fastpath():
            ref = model(**feeds_t)
        feeds = {k: v.numpy() for k, v in feeds_t.items()}
        for label, m in runs(saved, dec):
            close(ort_run(m, feeds)[0], ref, f"{kind} {exporter} {label} B,S,T={B},{S},{T}")


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_fused_false_writes_standard_ops_only(exporter, tmp_path):
    model, _ = _transformer_case("encoder_layer", True)
    inputs = _transformer_args("encoder_layer", True, 2, 6, 5, seed=0)
    path = tmp_path / "dec.onnx"
    proto = maskedmha.export(model, (), str(path), kwargs=inputs, input_names=list(inputs),
                             dynamic_axes=_transformer_axes(inputs, True), fused=False,
                             exporter=exporter)
    saved = onnx.load(str(path))
    for m in (proto, saved):
        assert all(d in ("", "ai.onnx") for d, _ in all_ops(m))
        assert not m.functions
        onnx.checker.check_model(m)
    feeds_t = _transformer_args("encoder_layer", True, 3, 8, 5, seed=1)
    with torch.no_grad(), no_fastpath():
        ref = model(**feeds_t)
    close(ort_run(saved, {k: v.numpy() for k, v in feeds_t.items()})[0], ref, exporter)


def test_patching_is_undone_even_on_error():
    before = nn.MultiheadAttention.forward
    fast = torch.backends.mha.get_fastpath_enabled()
    mha = nn.MultiheadAttention(E, H, batch_first=True).eval()
    model = MHACall(mha, True, False, True, True).eval()
    with pytest.raises(RuntimeError):
        maskedmha.export(model, (torch.randn(2, 3, E), None, None, None, None),
                         exporter="dynamo")
    assert nn.MultiheadAttention.forward is before
    assert torch.backends.mha.get_fastpath_enabled() == fast


@pytest.mark.skipif(not KERNEL, reason="no loadable kernel library (build the package or set "
                                        "MASKEDMHA_LIBRARY)")
@pytest.mark.parametrize("exporter", EXPORTERS)
def test_fused_kernel_matches(exporter):
    model, n_attn = _transformer_case("transformer", True)
    inputs = _transformer_args("transformer", True, 2, 6, 5, seed=0)
    proto = maskedmha.export(model, (), kwargs=inputs, input_names=list(inputs),
                             dynamic_axes=_transformer_axes(inputs, True), exporter=exporter)
    sess = maskedmha.InferenceSession(proto.SerializeToString())
    feeds_t = _transformer_args("transformer", True, 3, 4, 7, seed=1)
    with torch.no_grad(), no_fastpath():
        ref = model(**feeds_t)
    close(sess.run(None, {k: v.numpy() for k, v in feeds_t.items()})[0], ref, exporter)


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_explicit_causal_hint_in_decoder(exporter):
    """tgt_is_causal=True without a target padding mask: PyTorch takes SDPA's is_causal path
    (the mask is dropped), so the decoder self-attention node gets is_causal=1 and no mask."""
    torch.manual_seed(0)
    model = nn.TransformerDecoderLayer(E, H, 32, dropout=0.0, batch_first=True).eval()

    class Wrap(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = model

        def forward(self, tgt, memory, tgt_mask):
            return self.layer(tgt, memory, tgt_mask=tgt_mask, tgt_is_causal=True)

    def args(B, T, S, seed):
        g = torch.Generator().manual_seed(seed)
        return (torch.randn(B, T, E, generator=g), torch.randn(B, S, E, generator=g),
                nn.Transformer.generate_square_subsequent_mask(T))

    axes = {"tgt": {0: "B", 1: "T"}, "memory": {0: "B", 1: "S"}, "tgt_mask": [0, 1]}
    proto = maskedmha.export(Wrap().eval(), args(2, 5, 4, 0), dynamic_axes=axes,
                             exporter=exporter)
    nodes = [n for n in proto.graph.node if n.op_type == "MaskedMHA"]
    causal = [n for n in nodes
              if any(a.name == "is_causal" and a.i == 1 for a in n.attribute)]
    assert len(nodes) == 2 and len(causal) == 1
    # PyTorch's is_causal path drops the mask: so does the node.
    assert len(causal[0].input) < 13 or not causal[0].input[12]
    assert [i.name for i in proto.graph.input][:2] == ["tgt", "memory"]  # default names
    for i, (B, T, S) in enumerate([(2, 5, 4), (3, 7, 2)]):
        a = args(B, T, S, i)
        with torch.no_grad(), no_fastpath():
            ref = Wrap().eval()(*a)
        feeds = {n: t.numpy() for n, t in zip(["tgt", "memory", "tgt_mask"], a)}
        for label, m in runs(proto, maskedmha.decompose(proto)):
            close(ort_run(m, feeds)[0], ref, f"{exporter} {label} {B, T, S}")


class CausalEncoder(nn.Module):
    """A GPT-style stack: the causal mask is built inside forward from the input's length; one
    pass with a padding mask (mask used), one with the is_causal hint (mask dropped)."""

    def __init__(self):
        super().__init__()
        layer = nn.TransformerEncoderLayer(E, H, 32, dropout=0.0, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)

    def forward(self, x, kpm):
        mask = nn.Transformer.generate_square_subsequent_mask(x.size(1))
        return (self.enc(x, mask=mask, src_key_padding_mask=kpm)
                + self.enc(x, mask=mask, is_causal=True))


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_mask_built_inside_forward(exporter):
    torch.manual_seed(0)
    model = CausalEncoder().eval()

    def args(B, L, seed):
        g = torch.Generator().manual_seed(seed)
        kpm = torch.rand(B, L, generator=g) < 0.3
        kpm[:, 0] = False
        return torch.randn(B, L, E, generator=g), kpm

    proto = maskedmha.export(model, args(2, 5, 0), exporter=exporter,
                             dynamic_axes={"x": {0: "B", 1: "L"}, "kpm": {0: "B", 1: "L"}})
    nodes = [n for n in proto.graph.node if n.op_type == "MaskedMHA"]
    assert len(nodes) == 4
    causal = [n for n in nodes if any(a.name == "is_causal" and a.i == 1 for a in n.attribute)]
    assert len(causal) == 2
    assert all(len(n.input) < 13 or not n.input[12] for n in causal)
    dec = maskedmha.decompose(proto)
    for i, (B, L) in enumerate([(2, 5), (3, 8), (1, 3)]):
        x, kpm = args(B, L, i)
        with torch.no_grad(), no_fastpath():
            ref = model(x, kpm)
        for label, m in runs(proto, dec):
            close(ort_run(m, {"x": x.numpy(), "kpm": kpm.numpy()})[0], ref,
                  f"{exporter} {label} {B, L}")
