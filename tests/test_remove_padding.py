"""maskedmha.export(..., remove_padding=True): nn.TransformerEncoder(Layer) exported padding-free
(symbolic/packed_encoder.py), run by our kernel, against PyTorch's nested-tensor path (which
returns 0 / norm(0) at padded positions) and its documented slow path (valid positions); the
graph's layers work on the packed (T, .) rows; calls that do not qualify stay dense, with a
warning."""
from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper
from torch import nn

import maskedmha
from maskedmha.symbolic.schema import INPUT_NAMES
from helpers.exporting import EXPORTERS, count_mha, runs
from helpers.padding import kernel_session, padding_mask
from helpers.reference import no_fastpath

OFFSETS = INPUT_NAMES.index("sequence_offsets")
TOL = dict(rtol=1e-5, atol=1e-5)
AXES = {"src": {0: "B", 1: "L"}, "mask": {0: "B", 1: "L"}}
AXES_SEQ_FIRST = {"src": {0: "L", 1: "B"}, "mask": {0: "B", 1: "L"}}

# Exported at the first lengths, run at all: very uneven lengths, fully valid sequences, no
# padding at all, an empty sequence, new batch sizes and lengths.
LENGTHS = [([5, 2, 7], 7), ([12, 1, 3, 12, 6], 12), ([9], 9), ([0, 6, 2, 1], 6)]

# id: d_model, nhead, layers, activation, norm_first, batch_first, final norm
CASES = {
    "d64_h4_2layers_relu_norm": (64, 4, 2, "relu", False, True, True),
    "d128_h8_3layers_gelu_normfirst": (128, 8, 3, "gelu", True, True, False),
    "d64_h8_1layer_gelu_seqfirst_norm": (64, 8, 1, "gelu", False, False, True),
    "d128_h4_1layer_relu": (128, 4, 1, "relu", False, True, False),
}


def _encoder(d, h, layers, act, norm_first, batch_first, final_norm, seed=0):
    torch.manual_seed(seed)
    layer = nn.TransformerEncoderLayer(d, h, 2 * d, dropout=0.1, activation=act,
                                       batch_first=batch_first, norm_first=norm_first)
    norm = nn.LayerNorm(d) if final_norm else None
    enc = nn.TransformerEncoder(layer, layers, norm=norm, enable_nested_tensor=True,
                                mask_check=True)
    with torch.no_grad():  # clones start equal; non-trivial norms make norm(0) != 0
        for p in enc.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return enc.eval()


def _inputs(lengths, L, d, batch_first, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(lengths), L, d, generator=g)
    return (x if batch_first else x.transpose(0, 1).contiguous()), padding_mask(lengths, L)


def _batch_major(t, batch_first):
    return t if batch_first else t.transpose(0, 1)


def _export(module, x, m, exporter, batch_first=True, **kw):
    return maskedmha.export(module, (x,), kwargs={"src_key_padding_mask": m},
                            input_names=["src", "mask"], output_names=["out"],
                            dynamic_axes=AXES if batch_first else AXES_SEQ_FIRST,
                            exporter=exporter, remove_padding=True, **kw)


def _pytorch(module, x, m, nested_path):
    """PyTorch's answers for one batch: its slow path and, where it takes it, its nested-tensor
    path (None elsewhere)."""
    with torch.no_grad(), no_fastpath():
        slow = module(x, src_key_padding_mask=m)
    fast = None
    if nested_path:
        with torch.no_grad():
            fast = module(x, src_key_padding_mask=m)
    return slow, fast


def _check(got, refs, m, batch_first, pad_value):
    """``got`` against PyTorch (``_pytorch``): its slow path at valid positions, ``pad_value``
    at padded ones and, where PyTorch took its nested-tensor path, that path everywhere."""
    slow, fast = refs
    got_b = _batch_major(torch.from_numpy(got), batch_first)
    pads = pad_value.expand(int(m.sum()), -1).numpy()
    np.testing.assert_allclose(got_b[~m].numpy(), _batch_major(slow, batch_first)[~m].numpy(),
                               **TOL)
    np.testing.assert_allclose(got_b[m].numpy(), pads, **TOL)
    if fast is not None:
        # The reference itself: PyTorch took the nested-tensor path (pad_value at padding).
        np.testing.assert_allclose(_batch_major(fast, batch_first)[m].numpy(), pads, atol=1e-6)
        np.testing.assert_allclose(got, fast.numpy(), **TOL)


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("case", CASES)
def test_encoder_matches_pytorch(case, exporter):
    d, h, layers, act, norm_first, batch_first, final_norm = CASES[case]
    enc = _encoder(d, h, layers, act, norm_first, batch_first, final_norm)
    x, m = _inputs(*LENGTHS[0], d, batch_first, seed=1)
    proto = _export(enc, x, m, exporter, batch_first)
    nodes = [n for n in proto.graph.node if n.op_type == "MaskedMHA"]
    assert len(nodes) == layers and all(len(n.input) > OFFSETS and n.input[OFFSETS]
                                        for n in nodes)
    pad_value = enc.norm(torch.zeros(d)).detach() if final_norm else torch.zeros(d)
    nested_path = batch_first and not norm_first  # where PyTorch's encoder takes it
    batches = [_inputs(lengths, L, d, batch_first, seed=10 + i)
               for i, (lengths, L) in enumerate(LENGTHS)]
    refs = [_pytorch(enc, x, m, nested_path and bool((~m).any())) for x, m in batches]
    # our kernel, the in-file fallback (stock ORT) and decompose()
    for label, model in runs(proto, maskedmha.decompose(proto)):
        sess = model if hasattr(model, "run") else ort.InferenceSession(
            model.SerializeToString(), providers=["CPUExecutionProvider"])
        for (x, m), ref in zip(batches, refs):
            (got,) = sess.run(None, {"src": x.numpy(), "mask": m.numpy()})
            try:
                _check(got, ref, m, batch_first, pad_value)
            except AssertionError as exc:
                raise AssertionError(f"{label} at lengths {(~m).sum(1).tolist()}: "
                                     f"{exc}") from None


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_layer_called_alone(exporter):
    """A TransformerEncoderLayer on its own: valid positions PyTorch's, padded ones 0."""
    torch.manual_seed(3)
    layer = nn.TransformerEncoderLayer(64, 4, 96, batch_first=True).eval()
    x, m = _inputs([4, 1, 6], 6, 64, True, seed=4)
    proto = maskedmha.export(layer, (x,), kwargs={"src_key_padding_mask": m},
                             input_names=["src", "mask"], dynamic_axes=AXES,
                             exporter=exporter, remove_padding=True)
    assert count_mha(proto) == 1
    sess = kernel_session(proto)
    for i, (lengths, L) in enumerate(LENGTHS):
        x, m = _inputs(lengths, L, 64, True, seed=20 + i)
        (got,) = sess.run(None, {"src": x.numpy(), "mask": m.numpy()})
        _check(got, _pytorch(layer, x, m, False), m, True, torch.zeros(64))


def test_mask_not_left_aligned():
    """Padding anywhere (not only at the end): the valid tokens are gathered in order, each
    sequence attends over its own; PyTorch's slow path at valid positions."""
    enc = _encoder(64, 4, 2, "gelu", False, True, True)
    x, m = _inputs([5, 2, 7], 7, 64, True, seed=1)
    sess = kernel_session(_export(enc, x, m, "torchscript"))
    g = torch.Generator().manual_seed(5)
    m = torch.rand(4, 9, generator=g) < 0.5
    m[:, 0] = False
    m[2, :] = False
    x = torch.randn(4, 9, 64, generator=g)
    (got,) = sess.run(None, {"src": x.numpy(), "mask": m.numpy()})
    _check(got, _pytorch(enc, x, m, False), m, True, enc.norm(torch.zeros(64)).detach())


def _packed_rows_seen(proto, feeds):
    """(op type, first input's leading dim) of every Gemm/MatMul/LayerNormalization, run."""
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    watched = [(n.op_type, n.input[0]) for n in model.graph.node
               if n.op_type in ("Gemm", "MatMul", "LayerNormalization")]
    known = {o.name for o in model.graph.output}
    for _, name in watched:
        if name not in known:
            model.graph.output.append(helper.make_empty_tensor_value_info(name))
            known.add(name)
    outs = kernel_session(model).run(None, feeds)
    by_name = dict(zip([o.name for o in model.graph.output], outs))
    return [(op, by_name[name].shape) for op, name in watched]


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_cost_follows_valid_tokens(exporter):
    """Every projection, FFN GEMM and LayerNorm of the layers runs on the (T, E) packed rows;
    only the encoder's final norm sees the padded (B, L, E) output.  One NonZero for the whole
    stack."""
    layers, d = 2, 64
    enc = _encoder(d, 4, layers, "relu", False, True, True)
    x, m = _inputs([5, 2, 7], 7, d, True, seed=1)
    proto = _export(enc, x, m, exporter)
    assert sum(n.op_type == "NonZero" for n in proto.graph.node) == 1
    lengths, L = [3, 11, 1, 6], 11
    x, m = _inputs(lengths, L, d, True, seed=2)
    seen = _packed_rows_seen(proto, {"src": x.numpy(), "mask": m.numpy()})
    T = sum(lengths)
    packed = [s for op, s in seen if s == (T, d) or s == (T, 2 * d)]
    # per layer: 2 FFN GEMMs (the projections are inside MaskedMHA) + 2 LayerNorms
    assert len(packed) == 4 * layers, seen
    assert [s for op, s in seen if s not in packed] == [(len(lengths), L, d)], seen


def _warned(fn):
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        result = fn()
    return result, [str(x.message) for x in w if "remove_padding" in str(x.message)]


class _OwnFFN(nn.TransformerEncoderLayer):
    def _ff_block(self, x):  # not known to be token-wise: must not be packed
        return super()._ff_block(x) * 0.5


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("call", ["float_mask", "src_mask", "no_mask", "own_ffn"])
def test_calls_that_do_not_qualify_stay_dense(call, exporter):
    """Exported by PyTorch's own forward (dense attention nodes, no sequence_offsets), right,
    and the user is told which call and why in one warning."""
    torch.manual_seed(6)
    cls = _OwnFFN if call == "own_ffn" else nn.TransformerEncoderLayer
    enc = nn.TransformerEncoder(cls(32, 4, 64, batch_first=True), 2,
                                enable_nested_tensor=False).eval()
    x, m = _inputs([4, 2, 6], 6, 32, True, seed=7)
    kwargs = {"src_key_padding_mask": m}
    if call == "float_mask":
        kwargs = {"src_key_padding_mask": torch.zeros(m.shape).masked_fill(m, float("-inf"))}
    elif call == "src_mask":
        kwargs["mask"] = torch.zeros(6, 6, dtype=torch.bool)
        kwargs["mask"][0, 1] = True
    elif call == "no_mask":
        kwargs = {}
    proto, messages = _warned(lambda: maskedmha.export(enc, (x,), kwargs=kwargs,
                                                       exporter=exporter, remove_padding=True))
    expected_reason = {"float_mask": "float src_key_padding_mask", "src_mask": "src mask",
                       "no_mask": "no src_key_padding_mask", "own_ffn": "overrides _ff_block"}
    assert len(messages) == 1 and expected_reason[call] in messages[0], messages
    assert "2 encoder call(s)" not in messages[0]  # the layers' calls are the encoder's one
    nodes = [n for n in proto.graph.node if n.op_type == "MaskedMHA"]
    assert len(nodes) == 2 and not any(len(n.input) > OFFSETS and n.input[OFFSETS]
                                       for n in nodes)
    # kwargs given out of the forward's order (mask after src_key_padding_mask): each graph
    # input still carries its own argument's name, with both exporters
    feeds = {"src": x.numpy(), **{k: v.numpy() for k, v in kwargs.items()}}
    (got,) = kernel_session(proto).run(None, feeds)
    with torch.no_grad(), no_fastpath():
        expected = enc(x, **kwargs)
    np.testing.assert_allclose(got, expected.numpy(), **TOL)


class _Classifier(nn.Module):
    """Embedding -> encoder -> mean over the valid tokens -> linear: the encoder packed, the
    rest exported as usual around it."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(50, 64)
        layer = nn.TransformerEncoderLayer(64, 4, 128, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, norm=nn.LayerNorm(64))
        self.head = nn.Linear(64, 3)

    def forward(self, ids, pad):
        h = self.encoder(self.embed(ids), src_key_padding_mask=pad)
        keep = (~pad).unsqueeze(-1).to(h.dtype)
        return self.head((h * keep).sum(1) / keep.sum(1).clamp(min=1.0))


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_model_around_the_encoder(exporter):
    torch.manual_seed(8)
    model = _Classifier().eval()
    g = torch.Generator().manual_seed(9)
    ids, pad = torch.randint(0, 50, (3, 8), generator=g), padding_mask([8, 3, 5], 8)
    proto, messages = _warned(lambda: maskedmha.export(
        model, (ids, pad), input_names=["ids", "pad"], exporter=exporter, remove_padding=True,
        dynamic_axes={"ids": {0: "B", 1: "L"}, "pad": {0: "B", 1: "L"}}))
    assert messages == []
    assert count_mha(proto) == 2
    sess = kernel_session(proto)
    for lengths, L in [([8, 3, 5], 8), ([1, 10], 10)]:
        ids, pad = torch.randint(0, 50, (len(lengths), L), generator=g), padding_mask(lengths, L)
        (got,) = sess.run(None, {"ids": ids.numpy(), "pad": pad.numpy()})
        with torch.no_grad():
            expected = model(ids, pad)  # nested-tensor path
        np.testing.assert_allclose(got, expected.numpy(), **TOL)


def test_unbatched_without_biases():
    """(L, E) input with an (L,) mask, bias=False everywhere, seq-first layers: packed too."""
    torch.manual_seed(10)
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4, 64, bias=False), 2,
                                enable_nested_tensor=False).eval()
    x, m = torch.randn(6, 32), torch.tensor([False] * 4 + [True] * 2)
    proto, messages = _warned(lambda: maskedmha.export(
        enc, (x,), kwargs={"src_key_padding_mask": m}, input_names=["src", "mask"],
        dynamic_axes={"src": {0: "L"}, "mask": {0: "L"}}, exporter="torchscript",
        remove_padding=True))
    assert messages == [] and count_mha(proto) == 2
    sess = kernel_session(proto)
    for L, valid in [(6, 4), (9, 9), (5, 1)]:
        x, m = torch.randn(L, 32), torch.arange(L) >= valid
        (got,) = sess.run(None, {"src": x.numpy(), "mask": m.numpy()})
        with torch.no_grad(), no_fastpath():
            expected = enc(x, src_key_padding_mask=m)
        np.testing.assert_allclose(got[:valid], expected[:valid].numpy(), **TOL)
        assert (got[valid:] == 0).all()


def test_nn_transformer_encoder_packed():
    """nn.Transformer's encoder is packed (its decoder stays dense); with the memory mask
    given, the decoder never reads the padded memory, so the output is PyTorch's."""
    from maskedmha.demo import DYNAMIC_AXES, NAMES, DemoTranslator, demo_inputs
    torch.manual_seed(11)
    model = DemoTranslator().eval()
    proto = maskedmha.export(model, demo_inputs(2, 12, 10), input_names=NAMES,
                             dynamic_axes=DYNAMIC_AXES, exporter="torchscript",
                             remove_padding=True)
    offsets = [n for n in proto.graph.node
               if n.op_type == "MaskedMHA" and len(n.input) > OFFSETS and n.input[OFFSETS]]
    assert count_mha(proto) == 6 and len(offsets) == 2  # the 2 encoder layers
    sess = kernel_session(proto)
    for shape in [(2, 12, 10), (3, 20, 15)]:
        args = demo_inputs(*shape, seed=sum(shape))
        (got,) = sess.run(None, {n: a.numpy() for n, a in zip(NAMES, args)})
        with torch.no_grad(), no_fastpath():
            expected = model(*args)
        np.testing.assert_allclose(got, expected.numpy(), **TOL)


def test_no_encoder_in_the_model_is_said_and_forwards_restored():
    encoder_forward = nn.TransformerEncoder.forward
    layer_forward = nn.TransformerEncoderLayer.forward
    mha = nn.MultiheadAttention(16, 2, batch_first=True).eval()
    x = torch.randn(2, 3, 16)
    _, messages = _warned(lambda: maskedmha.export(mha, (x, x, x), exporter="torchscript",
                                                   remove_padding=True))
    assert len(messages) == 1 and "no nn.TransformerEncoder" in messages[0], messages
    assert nn.TransformerEncoder.forward is encoder_forward
    assert nn.TransformerEncoderLayer.forward is layer_forward
