"""Issue 12, item 2: the TorchScript route must not depend on ONNX shape inference for what the
trace already knew.  Mask2Former's transformer decoder builds its 3-D attn_mask from mask
predictions of queries expanded with ``param.unsqueeze(1).repeat(1, bs, 1)`` (dynamic bs) and
unmasks fully masked rows in place (ScatterND); ONNX cannot infer the mask's rank through
``Expand(x, ConstantOfShape(...))``, so attach could not tell a 2-D from a 3-D mask and the export
failed ("has rank None").  The op records each input's element type and rank at trace time."""
from __future__ import annotations

import onnx
import pytest
import torch
from torch import nn

import maskedmha
from maskedmha.symbolic.schema import ATTRIBUTES
from helpers.exporting import EXPORTERS, close, count_mha, ort_run, runs
from helpers.reference import no_fastpath

E, H, Q = 16, 4, 5


class MaskedAttentionDecoderLayer(nn.Module):
    """Mask2Former's masked cross-attention step (seq-first, as in its decoder): learned queries
    repeated over the batch, a mask from the queries' mask predictions (< 0.5 = hidden), rows
    that would hide everything un-hidden in place, then cross-attention with that 3-D mask."""

    def __init__(self):
        super().__init__()
        self.query_feat = nn.Embedding(Q, E)
        self.query_embed = nn.Embedding(Q, E)
        self.mask_embed = nn.Linear(E, E)
        self.cross = nn.MultiheadAttention(E, H)
        with torch.no_grad():
            self.cross.in_proj_bias.normal_(0, 0.5)
            self.cross.out_proj.bias.normal_(0, 0.5)

    def forward(self, memory):                       # memory: (S, B, E)
        bs = memory.shape[1]
        output = self.query_feat.weight.unsqueeze(1).repeat(1, bs, 1)        # (Q, B, E)
        pos = self.query_embed.weight.unsqueeze(1).repeat(1, bs, 1)
        mask_embed = self.mask_embed(output.transpose(0, 1))                  # (B, Q, E)
        outputs_mask = torch.einsum("bqc,sbc->bqs", mask_embed, memory)       # (B, Q, S)
        attn_mask = (outputs_mask.sigmoid().unsqueeze(1).repeat(1, H, 1, 1)
                     .flatten(0, 1) < 0.5).detach()                           # (B*H, Q, S)
        attn_mask[torch.where(attn_mask.sum(-1) == attn_mask.shape[-1])] = False
        return self.cross(output + pos, memory, memory, attn_mask=attn_mask,
                          need_weights=False)[0]


class Decoder(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.dec = MaskedAttentionDecoderLayer()

    def forward(self, memory):
        return self.dec(memory)


def _memory(S, B, seed):
    return torch.randn(S, B, E, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_mask2former_mask_through_dynamic_repeat(exporter):
    model = Decoder().eval()
    proto = maskedmha.export(model, (_memory(7, 2, 0),), input_names=["memory"],
                             output_names=["out"], exporter=exporter,
                             dynamic_axes={"memory": {0: "S", 1: "B"}, "out": {1: "B"}})
    assert count_mha(proto) == 1
    node = next(n for n in proto.graph.node if n.op_type == "MaskedMHA")
    # The file itself says what the trace knew: a bool mask of rank 3.
    mask = node.input[12]
    types = {vi.name: vi.type.tensor_type for vi in
             list(proto.graph.value_info) + list(proto.graph.input)}
    assert mask in types, mask
    assert types[mask].elem_type == onnx.TensorProto.BOOL
    assert len(types[mask].shape.dim) == 3
    # The trace-time record is export's own business: gone from the file.
    assert {a.name for a in node.attribute} <= set(ATTRIBUTES)
    dec = maskedmha.decompose(proto)
    checked_hidden = False
    for i, (S, B) in enumerate([(7, 2), (9, 3), (4, 1), (11, 5)]):
        memory = _memory(S, B, seed=10 + i)
        with torch.no_grad(), no_fastpath():
            ref = model(memory)
        for label, m in runs(proto, dec):
            close(ort_run(m, {"memory": memory.numpy()})[0], ref,
                  f"{exporter} {label} S,B={S},{B}")
        # The mask must actually hide something, or a dropped mask would pass too.
        with torch.no_grad():
            d = model.dec
            om = torch.einsum("bqc,sbc->bqs",
                              d.mask_embed(d.query_feat.weight.unsqueeze(0).expand(B, Q, E)),
                              memory)
            checked_hidden |= bool(((om.sigmoid() < 0.5).sum(-1) % S != 0).any())
    assert checked_hidden


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_output_shapes_keep_inferred_dims(exporter):
    """The record must only add what inference misses: MaskedMHA nodes whose query is computed
    inside the graph (every layer after the first) keep fully known output dims."""
    torch.manual_seed(0)
    model = nn.Transformer(E, H, 2, 1, 32, dropout=0.0, batch_first=True).eval()
    g = torch.Generator().manual_seed(0)
    src, tgt = torch.randn(2, 6, E, generator=g), torch.randn(2, 5, E, generator=g)
    pad = torch.zeros(2, 6, dtype=torch.bool)
    pad[1, 4:] = True
    proto = maskedmha.export(model, (src, tgt), kwargs={"src_key_padding_mask": pad},
                             exporter=exporter,
                             dynamic_axes={"src": {0: "B", 1: "S"}, "tgt": {0: "B", 1: "T"},
                                           "src_key_padding_mask": {0: "B", 1: "S"}})
    shapes = {vi.name: vi.type.tensor_type.shape for vi in
              list(proto.graph.value_info) + list(proto.graph.output)}
    nodes = [n for n in proto.graph.node if n.op_type == "MaskedMHA"]
    assert len(nodes) == 4
    for n in nodes:
        dims = shapes[n.output[0]].dim
        assert len(dims) == 3, n.name
        assert all(d.dim_param or d.HasField("dim_value") for d in dims), (n.name, dims)
        assert dims[0].dim_param == "B" and dims[2].dim_value == E, (n.name, dims)


def test_record_is_moved_to_value_info_and_stripped_everywhere():
    """record_traced_types on a hand-made graph: a MaskedMHA node in the main graph and one in
    an If body; each mask gets its rank in the value_info of the graph defining it, no node
    keeps the temporary attribute, and a value with a known type is left alone."""
    from onnx import TensorProto, helper
    from maskedmha.symbolic.torchscript import TRACED_TYPES, record_traced_types

    def mha(out, mask, record):
        return helper.make_node("MaskedMHA", ["q", "q", "q", "w", "", "", "", "ow", "", "", "",
                                              "kpm", mask], [out], domain="com.maskedmha",
                                num_heads=1, **{TRACED_TYPES: record})

    body = helper.make_graph([helper.make_node("Identity", ["outer"], ["m3"]),
                              mha("o", "m3", ";" * 11 + "9:2;9:3")], "body", [],
                             [helper.make_tensor_value_info("o", TensorProto.FLOAT, None)])
    graph = helper.make_graph(
        [helper.make_node("If", ["c"], ["r"], then_branch=body, else_branch=body),
         mha("o2", "m2", ";" * 11 + "9:2;1:2")], "g",
        [helper.make_tensor_value_info("c", TensorProto.BOOL, []),
         helper.make_tensor_value_info("kpm", TensorProto.BOOL, ["B", "S"])],
        [helper.make_tensor_value_info("r", TensorProto.FLOAT, None)])
    model = record_traced_types(helper.make_model(graph))
    assert TRACED_TYPES not in str(model)

    def ranks(g):
        return {v.name: (v.type.tensor_type.elem_type, len(v.type.tensor_type.shape.dim))
                for v in g.value_info}

    assert ranks(model.graph) == {"m2": (TensorProto.FLOAT, 2)}   # kpm: a graph input, known
    # In the body: its own m3 only; kpm is the outer graph's input, described there.
    assert ranks(model.graph.node[0].attribute[0].g) == {"m3": (TensorProto.BOOL, 3)}
