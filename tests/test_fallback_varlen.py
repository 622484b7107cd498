"""Issue 14's two op features in the file format: the variable-length mode (input 13
``sequence_offsets``) and ``skip_padded_queries``.  Each one-node model, built by hand, runs three
ways -- fused (our library registered), on stock ORT through the in-file fallback function, and
after ``maskedmha.decompose`` -- and all three must match PyTorch in float64: per sequence through
``F.multi_head_attention_forward`` (variable-length mode), or PyTorch's documented path with the
padded query rows zeroed (skip mode).  What the op refuses, the fallback and decompose refuse too
(never a wrong number)."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import maskedmha
from maskedmha.symbolic.attach import attach_functions
from maskedmha.symbolic.fallback import REFUSE_OFFSETS, REFUSE_SKIP, Config, Signature
from helpers import ort_release
from helpers.graphs import make_model, session, stock_session
from helpers.packed_rows import packed_feeds, per_sequence_reference
from helpers.reference import ATOL, RTOL, make_feeds, no_fastpath, torch_reference


TOO_NEW = ("Unsupported model IR version", "Current official support for domain ai.onnx is till")


def assert_close(actual, expected, what):
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=RTOL, atol=ATOL,
                               err_msg=str(what))


def model_at(model_bytes: bytes, opset: int) -> onnx.ModelProto:
    """``model_bytes`` (a helpers.graphs model: opset 18, IR 9) at default-domain ``opset``."""
    m = onnx.load_from_string(model_bytes)
    for imp in m.opset_import:
        if imp.domain in ("", "ai.onnx"):
            imp.version = opset
    return m


def three_ways(model_bytes: bytes, opset: int = 18):
    """[(label, run(feeds) -> outputs)]: fused, in-file fallback on stock ORT, decompose()d."""
    fused = session(model_bytes)
    with_fallback = attach_functions(model_at(model_bytes, opset))
    decomposed = maskedmha.decompose(with_fallback)
    runs = [("fused", fused)]
    try:
        runs += [("fallback", stock_session(with_fallback)),
                 ("decomposed", stock_session(decomposed))]
    except Exception as e:  # noqa: BLE001
        # an opset / IR version newer than this release reads (ORT 1.17: opset 20, IR 9;
        # 1.19/1.20: opset 21, IR 10): the file is not for it
        if not any(t in str(e) for t in TOO_NEW) or ort_release.VERSION >= (1, 32):
            raise
        pytest.skip(f"onnxruntime {ort.__version__} does not read opset {opset} / its IR")
    return [(label, lambda feeds, s=s: s.run(None, feeds)) for label, s in runs]


# --- variable-length mode --------------------------------------------------------------------

# (name, E, H, packed_feeds keywords, attributes, lengths of each run: several shapes per session)
VARLEN_CASES = [
    ("packed_bias", 12, 3, {}, {}, [[3, 0, 5, 1], [7], [0, 4]]),
    ("one_sequence_causal_bias_kv", 8, 2, dict(bias_kv=True), dict(is_causal=1),
     [[6], [1], [0]]),
    ("separate_weights_zero_attn_causal", 12, 3, dict(kdim=5, vdim=7),
     dict(is_causal=1, add_zero_attn=1), [[2, 6, 0], [1, 1, 1]]),
    ("no_bias_bias_kv_zero_attn", 8, 1, dict(bias=False, bias_kv=True), dict(add_zero_attn=1),
     [[3, 2], [0, 0, 5]]),
    ("self_attention_causal", 16, 4, dict(self_attn=True), dict(is_causal=1),
     [[5, 9, 0, 2], [0]]),
]


@pytest.mark.parametrize("name,E,H,kw,attrs,runs", VARLEN_CASES, ids=[c[0] for c in VARLEN_CASES])
def test_varlen_matches_pytorch_per_sequence(name, E, H, kw, attrs, runs):
    feeds_of = [packed_feeds(lengths, E, seed=i, **kw) for i, lengths in enumerate(runs)]
    ways = three_ways(make_model(feeds_of[0], H, **attrs))
    for lengths, feeds in zip(runs, feeds_of):
        ref = per_sequence_reference(feeds, H, **attrs)
        for label, run in ways:
            (out,) = run(feeds)
            assert out.shape == ref.shape, (label, lengths)
            assert_close(out, ref, (label, lengths))


def test_varlen_empty_batch():
    """B = 0: offsets [0], T = 0 rows in and out."""
    feeds = packed_feeds([], 8, bias_kv=True)
    for label, run in three_ways(make_model(feeds, 2, is_causal=1, add_zero_attn=1)):
        (out,) = run(feeds)
        assert out.shape == (0, 8), label


@pytest.mark.parametrize("opset", [17, 21, 25])
def test_varlen_at_other_opsets(opset):
    """ReduceMax/ReduceMin/Split change form at opset 18; 21+ needs IR 10."""
    if opset > onnx.defs.onnx_opset_version():
        pytest.skip(f"onnx {onnx.__version__} does not know opset {opset}")
    feeds = packed_feeds([4, 0, 3], 8, bias_kv=True, seed=3)
    ref = per_sequence_reference(feeds, 2, is_causal=True)
    # every op of the body exists at this opset, with these types (onnx's checker, full)
    attached = attach_functions(model_at(make_model(feeds, 2, is_causal=1), opset))
    onnx.checker.check_model(attached, full_check=True)
    onnx.checker.check_model(maskedmha.decompose(attached), full_check=True)
    for label, run in three_ways(make_model(feeds, 2, is_causal=1), opset):
        assert_close(run(feeds)[0], ref, label)


@pytest.mark.parametrize("offsets", [[0, 3, 6], [1, 3, 5], [0, 4, 3, 5], [0, 5, 5, 4], [0, 3],
                                     []], ids=str)
def test_varlen_fallback_refuses_bad_offsets(offsets):
    """T = 5 rows; offsets that do not start at 0, decrease, or do not end at T are an error
    naming sequence_offsets (the kernel's check, made by the fallback and decompose too)."""
    feeds = packed_feeds([3, 2], 8)
    model = attach_functions(onnx.load_from_string(make_model(feeds, 2)))
    bad = dict(feeds, sequence_offsets=np.array(offsets, np.int64))
    for m in (model, maskedmha.decompose(model)):
        with pytest.raises(Exception, match=REFUSE_OFFSETS):
            quiet_session(m).run(None, bad)
    with pytest.raises(Exception, match="sequence_offsets"):
        session(make_model(feeds, 2), quiet=True).run(None, bad)


def quiet_session(model: onnx.ModelProto) -> ort.InferenceSession:
    """A stock session that does not log the errors these tests provoke."""
    so = ort.SessionOptions()
    so.log_severity_level = 4
    return ort.InferenceSession(model.SerializeToString(), so,
                                providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("what", ["key_padding_mask", "attn_mask", "attn_weights",
                                  "skip_padded_queries"])
def test_varlen_with_what_the_mode_forbids_is_refused_by_attach(what):
    feeds = packed_feeds([3, 2], 8)
    attrs = {}
    if what == "key_padding_mask":
        feeds[what] = np.zeros((2, 3), np.bool_)
    elif what == "attn_mask":
        feeds[what] = np.zeros((5, 5), np.bool_)
    elif what == "skip_padded_queries":
        attrs[what] = 1
    model = onnx.load_from_string(make_model(feeds, 2, need_weights=what == "attn_weights",
                                             **attrs))
    with pytest.raises(ValueError, match=f"{what}.*not supported with sequence_offsets"):
        attach_functions(model)
    with pytest.raises(ValueError, match=f"{what}.*not supported with sequence_offsets"):
        maskedmha.decompose(model)


def test_varlen_is_its_own_signature():
    dense, varlen = Signature(), Signature(varlen=True)
    assert varlen.id == "packed.ib.ob.varlen" and dense.id == "packed.ib.ob"
    # attributes, skip_padded_queries included, never split functions
    assert Config(num_heads=2, kpm="b", skip=True).signature == Config(num_heads=4,
                                                                       kpm="b").signature
    with pytest.raises(ValueError, match="sequence_offsets"):
        Config(num_heads=2, varlen=True, kpm="b")
    with pytest.raises(ValueError, match="bool key_padding_mask"):
        Config(num_heads=2, kpm="f", skip=True)


# --- skip_padded_queries -----------------------------------------------------------------------

# (name, make_feeds keywords, attributes, need_weights, average_attn_weights)
SKIP_CASES = [
    ("self_attention", dict(self_attn=True, kpm="bool"), {}, False, True),
    ("weights_averaged_attn_mask", dict(kpm="bool", attn_mask="bool2"), {}, True, True),
    ("weights_per_head_float_mask3", dict(kpm="bool", attn_mask="float3", bias_kv=True),
     dict(add_zero_attn=1), True, False),
    ("separate_weights_no_bias", dict(kpm="bool", kdim=5, vdim=7, bias=False), {}, False, True),
]


@pytest.mark.parametrize("name,kw,attrs,need_weights,average", SKIP_CASES,
                         ids=[c[0] for c in SKIP_CASES])
def test_skip_padded_queries_zeroes_padded_rows(name, kw, attrs, need_weights, average):
    E, H = 12, 3
    shapes = [(3, 5), (1, 7), (2, 1)]          # (B, L = S)
    feeds_of = [make_feeds(B, L, L, E, H, seed=i, pad_frac=0.4, **kw)
                for i, (B, L) in enumerate(shapes)]
    for feeds in feeds_of:      # at least one padded row where there is room (column 0 never)
        feeds["key_padding_mask"][0, -1] |= feeds["key_padding_mask"].shape[1] > 1
    model = make_model(feeds_of[0], H, need_weights=need_weights, skip_padded_queries=1,
                       average_attn_weights=int(average),
                       fully_masked_row="nan" if need_weights else "zero", **attrs)
    ways = three_ways(model)
    for (B, L), feeds in zip(shapes, feeds_of):
        with no_fastpath():
            out, w = torch_reference(feeds, H, need_weights=need_weights, average=average,
                                     add_zero_attn=bool(attrs.get("add_zero_attn")))
        pad = feeds["key_padding_mask"]                      # (B, L): the skipped rows
        out[pad] = 0.0
        if need_weights:
            if average:
                w[pad] = 0.0
            else:
                w.transpose(0, 2, 1, 3)[pad] = 0.0
        for label, run in ways:
            got = run(feeds)
            assert_close(got[0], out, (label, B, L))
            assert (got[0][pad] == 0).all(), (label, B, L)       # exactly 0, not out_proj_bias
            if need_weights:
                assert_close(got[1], w, (label, B, L))


@pytest.mark.parametrize("skip", [0, 1])
def test_decompose_specialises_skip_padded_queries(skip):
    """decompose() builds the skip mode only where the node has it: no check, no zeroing, no
    attribute read at run time otherwise."""
    feeds = make_feeds(2, 4, 4, 8, 2, kpm="bool")
    dec = maskedmha.decompose(onnx.load_from_string(make_model(feeds, 2,
                                                               skip_padded_queries=skip)))
    checks = [n for n in dec.graph.node if REFUSE_SKIP in n.name]
    assert len(checks) == skip
    assert not any(a.ref_attr_name for n in dec.graph.node for a in n.attribute)


def test_skip_padded_queries_with_l_ne_s_is_refused():
    feeds = make_feeds(2, 3, 4, 8, 2, kpm="bool")
    model = make_model(feeds, 2, skip_padded_queries=1)
    with_fallback = attach_functions(onnx.load_from_string(model))
    for m in (with_fallback, maskedmha.decompose(with_fallback)):
        with pytest.raises(Exception, match=REFUSE_SKIP):
            quiet_session(m).run(None, feeds)
    with pytest.raises(Exception, match="skip_padded_queries"):
        session(model, quiet=True).run(None, feeds)


@pytest.mark.parametrize("kind", ["no_kpm", "float_kpm", "varlen"])
def test_skip_set_on_a_file_afterwards_is_refused_not_ignored(kind):
    """A node whose skip_padded_queries is set to 1 after attach (the file edited by hand) in a
    signature that cannot skip: the shared function reads the attribute and fails the run with
    an error naming it; attach and decompose refuse such a node outright."""
    if kind == "varlen":
        feeds = packed_feeds([3, 2], 8)
    else:
        feeds = make_feeds(2, 4, 4, 8, 2, kpm=None if kind == "no_kpm" else "float")
    model = attach_functions(onnx.load_from_string(make_model(feeds, 2)))
    attr = next(a for a in model.graph.node[0].attribute if a.name == "skip_padded_queries")
    assert attr.i == 0   # attach writes every attribute
    attr.i = 1
    with pytest.raises(Exception, match=REFUSE_SKIP):
        quiet_session(model).run(None, feeds)
    with pytest.raises(ValueError, match="skip_padded_queries"):
        maskedmha.decompose(model)


# --- files with several nodes, `maskedmha info` -------------------------------------------------

def two_nodes(first: bytes, second: bytes) -> onnx.ModelProto:
    """The two one-node models side by side in one graph (names prefixed a_ / b_)."""
    a = onnx.compose.add_prefix(onnx.load_from_string(first), "a_")
    b = onnx.compose.add_prefix(onnx.load_from_string(second), "b_")
    a.graph.node.extend(b.graph.node)
    a.graph.input.extend(b.graph.input)
    a.graph.output.extend(b.graph.output)
    return a


def test_varlen_and_dense_skip_nodes_in_one_file():
    """Two signatures (varlen; dense with a bool mask): overloads and guards, right wherever the
    runtime honours overloads, refused elsewhere (as every several-signature file)."""
    packed = packed_feeds([3, 0, 4], 8, bias_kv=True, seed=1)
    dense = make_feeds(2, 5, 5, 8, 2, kpm="bool", seed=2)
    dense["key_padding_mask"][0, -1] = True
    model = attach_functions(two_nodes(make_model(packed, 2, is_causal=1),
                                       make_model(dense, 2, skip_padded_queries=1)))
    assert sorted(f.overload for f in model.functions if "needs" not in f.overload) == [
        "packed.ib.ob.bkv.varlen", "packed.ib.ob.kpm_b"]
    feeds = {**{f"a_{k}": v for k, v in packed.items()}, **{f"b_{k}": v for k, v in dense.items()}}
    with no_fastpath():
        ref_dense = torch_reference(dense, 2)[0]
    ref_dense[dense["key_padding_mask"]] = 0.0
    runs = [("decomposed", stock_session(maskedmha.decompose(model)))]
    if ort_release.fallback_runs(model):
        runs.append(("fallback", stock_session(model)))
    else:
        with pytest.raises(Exception, match=ort_release.REFUSAL):
            quiet_session(model)
    for label, sess in runs:
        got_packed, got_dense = sess.run(None, feeds)
        assert_close(got_packed, per_sequence_reference(packed, 2, is_causal=True), label)
        assert_close(got_dense, ref_dense, label)


def test_info_shows_the_mode_and_the_attribute():
    from maskedmha.info import node_lines
    packed = packed_feeds([3, 2], 8)
    dense = make_feeds(2, 4, 4, 8, 2, kpm="bool")
    model = attach_functions(two_nodes(make_model(packed, 2),
                                       make_model(dense, 2, skip_padded_queries=1)))
    # the nodes have no names: `#0: ...` and `#1: ...`, each followed by its inputs line
    varlen_node, dense_node = "\n".join(node_lines(model)).split("\n  #1:")
    assert "variable-length mode" in varlen_node and "sequence_offsets int64" in varlen_node
    assert "skip_padded_queries=0" in varlen_node
    assert "skip_padded_queries=1" in dense_node and "variable-length" not in dense_node


@pytest.mark.parametrize("which", ["key", "value"])
def test_varlen_fallback_refuses_rows_that_do_not_match_query(which):
    feeds = packed_feeds([3, 2], 8)
    model = attach_functions(onnx.load_from_string(make_model(feeds, 2)))
    bad = dict(feeds, **{which: np.concatenate([feeds[which], feeds[which][:1]])})   # T + 1
    for m in (model, maskedmha.decompose(model)):
        with pytest.raises(Exception, match=REFUSE_OFFSETS):
            quiet_session(m).run(None, bad)
