"""Whole Transformer stacks: one MaskedMHA node per attention, PyTorch's numbers at new shapes."""
from __future__ import annotations

import onnxruntime as ort
import pytest
import torch
from torch import nn

import maskedmha
from maskedmha.demo import DYNAMIC_AXES, NAMES, DemoTranslator, demo_inputs
from helpers import ort_release
from helpers.cases import assert_matches
from helpers.reference import no_fastpath

EXPORTERS = ["dynamo", "torchscript"]


def _check_all_runtimes(path, model, module, make_args, names, shapes, export_again):
    """Fused, in-file fallback and decompose() against PyTorch -- as far as this onnxruntime
    release runs them.  ``export_again(path)`` exports the same model with ``fallback=False``:
    what a release that cannot read the default file (IR 10 on ORT 1.17-1.18) runs fused."""
    fused_path = path
    if not ort_release.reads(model):
        fused_path = path.replace(".onnx", ".nofallback.onnx")
        assert ort_release.reads(export_again(fused_path))
    plain = maskedmha.decompose(model)
    sessions = {
        "fused": maskedmha.InferenceSession(fused_path),
        "decompose()": ort.InferenceSession(plain.SerializeToString(), providers=["CPUExecutionProvider"]),
    }
    if ort_release.fallback_runs(model):
        sessions["no library"] = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    else:  # right or refused: never another node's fallback
        with pytest.raises(Exception, match=ort_release.REFUSAL):
            ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for shape in shapes:
        args = make_args(*shape)
        with torch.no_grad():
            expected = module(*args).numpy()
        feeds = {n: a.numpy() for n, a in zip(names, args)}
        for label, sess in sessions.items():
            assert_matches(sess.run(None, feeds)[0], expected, f"{label} at {shape}", rel=2e-5)


def _count_fused(model) -> int:
    return sum(n.domain == maskedmha.DOMAIN and n.op_type == maskedmha.OP_TYPE for n in model.graph.node)


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_encoder_decoder_transformer(exporter, tmp_path):
    torch.manual_seed(0)
    module = DemoTranslator().eval()
    path = str(tmp_path / "t.onnx")
    kw = dict(input_names=NAMES, output_names=["output"], dynamic_axes=DYNAMIC_AXES, exporter=exporter)
    model = maskedmha.export(module, demo_inputs(2, 12, 10), path, **kw)
    # 2 encoder self-attentions + 2 × (decoder self-attention + cross-attention)
    assert _count_fused(model) == 6
    assert not any(n.op_type == "Softmax" for n in model.graph.node)
    _check_all_runtimes(path, model, module, lambda b, s, t: demo_inputs(b, s, t, seed=b + s + t),
                        NAMES, [(2, 12, 10), (3, 20, 15), (1, 5, 7)],
                        lambda p: maskedmha.export(module, demo_inputs(2, 12, 10), p, fallback=False, **kw))


class EncoderStack(nn.Module):
    def __init__(self, batch_first: bool):
        super().__init__()
        layer = nn.TransformerEncoderLayer(32, 4, dim_feedforward=64, dropout=0.0, batch_first=batch_first)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.batch_first = batch_first

    def forward(self, x, src_key_padding_mask):
        return self.encoder(x, src_key_padding_mask=src_key_padding_mask)


class DecoderOnly(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = nn.TransformerDecoderLayer(32, 4, dim_feedforward=64, dropout=0.0, batch_first=True)

    def forward(self, tgt, memory, tgt_mask, memory_key_padding_mask):
        return self.layer(tgt, memory, tgt_mask=tgt_mask, memory_key_padding_mask=memory_key_padding_mask)


def _padding(batch, length, g):
    valid = torch.randint(1, length + 1, (batch,), generator=g)
    return torch.arange(length)[None, :] >= valid[:, None]


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("batch_first", [True, False])
def test_encoder_stack(exporter, batch_first, tmp_path):
    torch.manual_seed(1)
    module = EncoderStack(batch_first).eval()

    def make(b, s):
        g = torch.Generator().manual_seed(b * 100 + s)
        x = torch.randn(b, s, 32, generator=g)
        return (x if batch_first else x.transpose(0, 1).contiguous()), _padding(b, s, g)

    seq = {0: "batch", 1: "seq"} if batch_first else {0: "seq", 1: "batch"}
    axes = {"x": seq, "src_key_padding_mask": {0: "batch", 1: "seq"}, "output": seq}
    path = str(tmp_path / "enc.onnx")
    kw = dict(input_names=["x", "src_key_padding_mask"], output_names=["output"],
              dynamic_axes=axes, exporter=exporter)
    model = maskedmha.export(module, make(2, 6), path, **kw)
    assert _count_fused(model) == 2
    _check_all_runtimes(path, model, module, make, ["x", "src_key_padding_mask"], [(2, 6), (4, 13), (1, 3)],
                        lambda p: maskedmha.export(module, make(2, 6), p, fallback=False, **kw))


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_decoder_layer_with_float_causal_mask(exporter, tmp_path):
    torch.manual_seed(2)
    module = DecoderOnly().eval()

    def make(b, t, s=None):
        s = s or t + 3
        g = torch.Generator().manual_seed(b * 100 + t)
        causal = nn.Transformer.generate_square_subsequent_mask(t)
        return (torch.randn(b, t, 32, generator=g), torch.randn(b, s, 32, generator=g), causal,
                _padding(b, s, g))

    names = ["tgt", "memory", "tgt_mask", "memory_key_padding_mask"]
    axes = {"tgt": {0: "batch", 1: "tgt_len"}, "memory": {0: "batch", 1: "src_len"},
            "tgt_mask": {0: "tgt_len", 1: "tgt_len2"}, "memory_key_padding_mask": {0: "batch", 1: "src_len"},
            "output": {0: "batch", 1: "tgt_len"}}
    path = str(tmp_path / "dec.onnx")
    kw = dict(input_names=names, output_names=["output"], dynamic_axes=axes, exporter=exporter)
    model = maskedmha.export(module, make(2, 5), path, **kw)
    assert _count_fused(model) == 2
    _check_all_runtimes(path, model, module, make, names, [(2, 5), (3, 9), (1, 2)],
                        lambda p: maskedmha.export(module, make(2, 5), p, fallback=False, **kw))


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_export_without_fallback_is_ir9_and_runs_only_with_the_library(exporter, tmp_path):
    """fallback=False: the demo Transformer (several node signatures, which in-file fallbacks
    need IR-10 overloads for) becomes an IR 9 file with no function: fused it gives PyTorch's
    numbers on every release from 1.17; a stock ORT refuses it rather than run anything."""
    torch.manual_seed(0)
    module = DemoTranslator().eval()
    path = str(tmp_path / "bare.onnx")
    model = maskedmha.export(module, demo_inputs(2, 12, 10), path, input_names=NAMES,
                             output_names=["output"], dynamic_axes=DYNAMIC_AXES, exporter=exporter,
                             fallback=False)
    assert model.ir_version == 9 and not model.functions
    assert not any(n.overload for n in model.graph.node)
    args = demo_inputs(3, 9, 7, seed=5)
    with no_fastpath(), torch.no_grad():
        expected = module(*args).numpy()
    feeds = {n: a.numpy() for n, a in zip(NAMES, args)}
    assert_matches(maskedmha.InferenceSession(path).run(None, feeds)[0], expected, "fused", rel=2e-5)
    with pytest.raises(Exception, match="MaskedMHA"):
        ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    # decompose() still works on it: it builds the fallback it needs itself.
    plain = maskedmha.decompose(model)
    sess = ort.InferenceSession(plain.SerializeToString(), providers=["CPUExecutionProvider"])
    assert_matches(sess.run(None, feeds)[0], expected, "decompose()", rel=2e-5)
