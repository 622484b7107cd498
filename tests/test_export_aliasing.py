"""Issue 12, item 1: example inputs that alias each other must still give one independent graph
input each.  torch.export de-duplicates a tensor passed twice (``(x, mem, mem)``), so the graph
used to wire ONE input into both places: the file then computed with v where k belongs, silently
wrong (max diff ~0.5) as soon as k and v differ.  Every check here runs the exported file with
DISTINCT tensors for each input and compares with PyTorch on the same tensors."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import maskedmha
from helpers.exporting import EXPORTERS, close, count_mha, ort_run, runs
from helpers.reference import no_fastpath

E, H = 16, 4


class CrossAttn(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.mha = nn.MultiheadAttention(E, H, batch_first=True)
        with torch.no_grad():
            self.mha.in_proj_bias.normal_(0, 0.5)
            self.mha.out_proj.bias.normal_(0, 0.5)

    def forward(self, q, k, v):
        return self.mha(q, k, v, need_weights=False)[0]


def _rand(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _aliased(pattern):
    """(args, kwargs) for forward(q, k, v) at B, L, S = 2, 5, 6, with the given aliasing."""
    q, mem = _rand(2, 5, E, seed=1), _rand(2, 6, E, seed=2)
    if pattern == "args_kv":                     # the common (x, mem, mem)
        return (q, mem, mem), {}
    if pattern == "args_qkv":                    # self-attention through a cross-attention API
        return (mem, mem, mem), {}
    if pattern == "args_kwargs":                 # one tensor positional and keyword
        return (q, mem), {"v": mem}
    if pattern == "kwargs_kv":                   # twice as keywords
        return (q,), {"k": mem, "v": mem}
    if pattern == "same_view":                   # two view objects over the same memory
        return (q, mem.view(2, 6, E), mem[:, :, :]), {}
    if pattern == "storage_halves":              # disjoint views of one storage
        both = _rand(2, 6, 2 * E, seed=3)
        return (q, both[..., :E], both[..., E:]), {}
    if pattern == "overlapping_views":           # q and k/v slices of one buffer
        both = _rand(2, 6, E, seed=4)
        return (both[:, :5], both, both[:, :]), {}
    raise AssertionError(pattern)


PATTERNS = ["args_kv", "args_qkv", "args_kwargs", "kwargs_kv", "same_view", "storage_halves",
            "overlapping_views"]


def _check_distinct(proto, model, shapes, what):
    """Run the file (fallback, decomposed, kernel when available) with independent q, k, v."""
    assert count_mha(proto) == 1, what
    assert [i.name for i in proto.graph.input] == ["q", "k", "v"], what
    for i, (B, L, S) in enumerate(shapes):
        q, k, v = _rand(B, L, E, seed=10 + i), _rand(B, S, E, seed=20 + i), \
            _rand(B, S, E, seed=30 + i)
        with torch.no_grad(), no_fastpath():
            ref = model(q, k, v)
        feeds = {"q": q.numpy(), "k": k.numpy(), "v": v.numpy()}
        for label, m in runs(proto, maskedmha.decompose(proto)):
            close(ort_run(m, feeds)[0], ref, f"{what} {label} B,L,S={B},{L},{S}")


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("pattern", PATTERNS)
def test_aliased_inputs_stay_separate(pattern, exporter):
    model = CrossAttn().eval()
    args, kwargs = _aliased(pattern)
    proto = maskedmha.export(model, args, kwargs=kwargs, input_names=["q", "k", "v"],
                             exporter=exporter)
    # Without dynamic axes the file runs at the export shapes only.
    shape = (args[0].shape[0], args[0].shape[1], 6)
    _check_distinct(proto, model, [shape], f"{pattern} {exporter}")


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_aliased_inputs_with_dynamic_axes(exporter):
    """(x, mem, mem) with dynamic batch and lengths, run at new shapes with k != v."""
    model = CrossAttn().eval()
    args, _ = _aliased("args_kv")
    axes = {"q": {0: "B", 1: "L"}, "k": {0: "B", 1: "S"}, "v": {0: "B", 1: "S"}}
    proto = maskedmha.export(model, args, input_names=["q", "k", "v"], dynamic_axes=axes,
                             exporter=exporter)
    _check_distinct(proto, model, [(2, 5, 6), (3, 4, 9), (1, 7, 2)], f"dynamic {exporter}")


def test_caller_tensors_untouched():
    """The copies are export's own: the caller's tensors keep their identity and values."""
    model = CrossAttn().eval()
    q, mem = _rand(2, 5, E, seed=1), _rand(2, 6, E, seed=2)
    before = mem.clone()
    args = (q, mem, mem)
    maskedmha.export(model, args, input_names=["q", "k", "v"])
    assert args[1] is mem and args[2] is mem and torch.equal(mem, before)


class WithMemory(CrossAttn):
    """A learned memory the caller passes in as key and value (DETR-style query embeddings)."""

    def __init__(self):
        super().__init__()
        self.mem = nn.Parameter(_rand(1, 6, E, seed=5))


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_parameter_passed_as_inputs(exporter):
    """The model's own parameter given as k and v: still two graph inputs of their own."""
    model = WithMemory().eval()
    proto = maskedmha.export(model, (_rand(1, 5, E, seed=1), model.mem, model.mem),
                             input_names=["q", "k", "v"], exporter=exporter)
    _check_distinct(proto, model, [(1, 5, 6)], f"parameter {exporter}")


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_one_padding_mask_for_source_and_memory(exporter):
    """nn.Transformer users pass one padding mask as src_key_padding_mask AND
    memory_key_padding_mask; the file must still take two masks and honour each."""
    torch.manual_seed(0)
    model = nn.Transformer(E, H, 1, 1, 32, dropout=0.0, batch_first=True).eval()

    def inputs(B, S, T, seed, same):
        g = torch.Generator().manual_seed(seed)
        src, tgt = torch.randn(B, S, E, generator=g), torch.randn(B, T, E, generator=g)
        pad = torch.rand(B, S, generator=g) < 0.4
        pad[:, 0] = False
        other = pad.clone() if not same else pad
        if not same:  # a different memory mask: some other key hidden in every row
            other[:, 0] = False
            other[:, -1] = ~pad[:, -1] if S > 1 else False
        return dict(src=src, tgt=tgt, src_key_padding_mask=pad, memory_key_padding_mask=other)

    names = ["src", "tgt", "src_key_padding_mask", "memory_key_padding_mask"]
    axes = {"src": {0: "B", 1: "S"}, "tgt": {0: "B", 1: "T"},
            "src_key_padding_mask": {0: "B", 1: "S"},
            "memory_key_padding_mask": {0: "B", 1: "S"}}
    proto = maskedmha.export(model, (), kwargs=inputs(2, 6, 5, 0, same=True), input_names=names,
                             dynamic_axes=axes, exporter=exporter)
    assert [i.name for i in proto.graph.input] == names
    for i, (B, S, T) in enumerate([(2, 6, 5), (3, 4, 7)]):
        feeds_t = inputs(B, S, T, 10 + i, same=False)
        assert not torch.equal(feeds_t["src_key_padding_mask"],
                               feeds_t["memory_key_padding_mask"])
        with torch.no_grad(), no_fastpath():
            ref = model(**feeds_t)
        feeds = {k: v.numpy() for k, v in feeds_t.items()}
        for label, m in runs(proto, maskedmha.decompose(proto)):
            close(ort_run(m, feeds)[0], ref, f"{exporter} {label} B,S,T={B},{S},{T}")
