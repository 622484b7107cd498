"""Kernel-level errors: hand-built one-node graphs fed inputs of the wrong shape, rank, type or
presence, and nodes with bad attributes.  Each error names the input or attribute, and a session
that refused a bad call still computes PyTorch's numbers for the next good one."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from helpers.graphs import make_model, run, session
from helpers.reference import assert_close, make_feeds, torch_reference

pytestmark = pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask")



def _good():
    return make_feeds(2, 5, 9, 16, 4, seed=29, kpm="bool", attn_mask="bool2")


def _check_error_then_good(bad: dict, good: dict, H: int, needle: str, **attrs):
    """`bad` and `good` must fit the same graph; the error names the input; the same session
    then still works."""
    sess = session(make_model(good, H, **attrs))
    with pytest.raises(Exception) as exc:
        sess.run(None, {k: v for k, v in bad.items() if v is not None})
    msg = str(exc.value)
    assert needle in msg, msg
    assert "MaskedMHA" in msg, msg
    (out,) = sess.run(None, {k: v for k, v in good.items() if v is not None})
    ref, _ = torch_reference(good, H)
    assert_close(out, ref)
    return msg


def test_error_wrong_mask_length():
    good = _good()
    bad = dict(good, key_padding_mask=good["key_padding_mask"][:, :7])
    msg = _check_error_then_good(bad, good, 4, "'key_padding_mask'")
    assert "[2,7]" in msg and "[2,9]" in msg


def test_error_wrong_attn_mask_shape():
    good = _good()
    bad = dict(good, attn_mask=good["attn_mask"][:, :8])
    _check_error_then_good(bad, good, 4, "'attn_mask'")


def test_error_attn_mask_wrong_rank():
    good = _good()
    bad = dict(good, attn_mask=good["attn_mask"][None, None])
    sess_msg = None
    with pytest.raises(Exception) as exc:
        run(bad, 4)
    sess_msg = str(exc.value)
    assert "'attn_mask'" in sess_msg and "rank" in sess_msg


def test_error_wrong_key_width():
    good = _good()
    bad = dict(good, key=np.zeros((2, 9, 12), np.float32))
    msg = _check_error_then_good(bad, good, 4, "'key'")
    assert "[2,9,12]" in msg


def test_error_wrong_batch_of_value():
    good = _good()
    bad = dict(good, value=np.zeros((3, 9, 16), np.float32))
    _check_error_then_good(bad, good, 4, "'value'")


def test_error_wrong_rank_query():
    good = _good()
    bad = dict(good, query=good["query"][0])
    # The graph declares rank 3 for query; ORT itself checks ranks of graph inputs, so use a
    # graph without rank information to reach the kernel.
    model = make_model(good, 4)
    m = onnx.load_from_string(model)
    m.graph.input[0].type.tensor_type.ClearField("shape")
    sess = session(m.SerializeToString())
    with pytest.raises(Exception) as exc:
        sess.run(None, {k: v for k, v in bad.items() if v is not None})
    assert "'query'" in str(exc.value) and "rank" in str(exc.value)
    (out,) = sess.run(None, {k: v for k, v in good.items() if v is not None})
    assert_close(out, torch_reference(good, 4)[0])


def test_error_wrong_weight_shape():
    good = _good()
    bad = dict(good, in_proj_weight=good["in_proj_weight"][:40])
    _check_error_then_good(bad, good, 4, "'in_proj_weight'")


def test_error_embed_dim_not_divisible_by_heads():
    good = make_feeds(2, 3, 3, 15, 5, seed=1)
    sess = session(make_model(good, 4))
    with pytest.raises(Exception) as exc:
        sess.run(None, good)
    assert "num_heads" in str(exc.value)


def _check_error_in_own_graph_then_good(bad: dict, good: dict, H: int, *needles: str):
    """`bad` in a graph of its own: the error names every needle; a good input then still works
    in the same process."""
    with pytest.raises(Exception) as exc:
        run(bad, H)
    msg = str(exc.value)
    assert all(needle in msg for needle in needles), msg
    (out,) = run(good, H)
    assert_close(out, torch_reference(good, H)[0])


def test_error_int32_mask():
    good = _good()
    bad = dict(good, key_padding_mask=good["key_padding_mask"].astype(np.int32))
    _check_error_in_own_graph_then_good(bad, good, 4, "'key_padding_mask'", "tensor(int32)")


def test_error_float64_query():
    """Inputs 0-10 are declared tensor(float) in the op schema, so ORT rejects a double query
    when the session is created; its message names the node input's value and the type."""
    good = _good()
    bad = dict(good, query=good["query"].astype(np.float64))
    m = onnx.load_from_string(make_model(bad, 4))
    m.graph.input[0].name = m.graph.node[0].input[0] = "query_f64"
    with pytest.raises(Exception) as exc:
        session(m.SerializeToString())
    msg = str(exc.value)
    assert "query_f64" in msg and "tensor(double)" in msg, msg
    (out,) = run(good, 4)
    assert_close(out, torch_reference(good, 4)[0])


def test_error_missing_k_proj_weight():
    good = make_feeds(2, 5, 9, 16, 4, seed=31, kdim=8, vdim=12)
    bad = dict(good, k_proj_weight=None)
    _check_error_in_own_graph_then_good(bad, good, 4, "'k_proj_weight'", "'v_proj_weight'")


def test_error_missing_bias_v():
    good = make_feeds(2, 5, 9, 16, 4, seed=37, bias_kv=True)
    bad = dict(good, bias_v=None)
    with pytest.raises(Exception) as exc:
        run(bad, 4)
    assert "'bias_v'" in str(exc.value)


@pytest.mark.parametrize("attrs,needle", [
    (dict(fully_masked_row="maybe"), "fully_masked_row"),
    (dict(is_causal=2), "is_causal"),
])
def test_error_bad_attributes(attrs, needle):
    with pytest.raises(Exception) as exc:
        run(_good(), 4, **attrs)
    assert needle in str(exc.value)


def test_error_num_heads_missing():
    feeds = _good()
    model = onnx.load_from_string(make_model(feeds, 4))
    del model.graph.node[0].attribute[:]
    with pytest.raises(Exception) as exc:
        session(model.SerializeToString()).run(None, feeds)
    assert "num_heads" in str(exc.value)
