"""Kernel-level tests of MaskedMHA's variable-length mode (input 13 ``sequence_offsets``):
hand-built one-node graphs over packed (T, E) token rows, run by onnxruntime with our library,
compared row for row with PyTorch's ``F.multi_head_attention_forward`` on each sequence alone
(float64, helpers/varlen.py); and the inputs the mode refuses, each with a one-line error naming
it.  No timing assertions."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from helpers.graphs import make_model, run, self_attention_feeds, self_attention_model, session
from helpers.reference import assert_close, make_feeds
from helpers.varlen import offsets_of, varlen_feeds, varlen_reference

# Sequence lengths: empty sequences among others, one sequence, none at all, only empty ones,
# and longer ones (more than one key block of 128, more than one query block of 32).
LENGTHS = {
    "mixed_with_empty": [3, 0, 7, 1],
    "one": [9],
    "none": [],
    "all_empty": [0, 0],
    "long": [150, 33, 2],
}

CONFIGS = {
    # name: (varlen_feeds kwargs, run attrs, E, H)
    "packed": (dict(), dict(), 16, 4),
    "no_bias": (dict(bias=False), dict(), 16, 4),
    "separate_kdim_vdim": (dict(kdim=12, vdim=20), dict(), 16, 4),
    "bias_kv_zero_attn": (dict(bias_kv=True), dict(add_zero_attn=1), 16, 4),
    "causal": (dict(), dict(is_causal=1), 16, 4),
    "causal_bias_kv_zero_attn": (dict(bias_kv=True), dict(is_causal=1, add_zero_attn=1), 16, 4),
    "one_head_E20": (dict(), dict(), 20, 1),  # E not a multiple of 16, H = 1
    "E12_H3_causal": (dict(kdim=7, vdim=5), dict(is_causal=1), 12, 3),
}


def _reference(feeds, H, attrs):
    return varlen_reference(feeds, H, add_zero_attn=bool(attrs.get("add_zero_attn")),
                            is_causal=bool(attrs.get("is_causal")))


@pytest.mark.parametrize("lengths", list(LENGTHS))
@pytest.mark.parametrize("config", list(CONFIGS))
def test_varlen_matches_pytorch_per_sequence(config, lengths):
    """Separate query / key / value inputs (the Q projection and a K/V projection over T rows)."""
    fk, attrs, E, H = CONFIGS[config]
    feeds = varlen_feeds(LENGTHS[lengths], E, H, seed=hash((config, lengths)) % 2**32, **fk)
    (out,) = run(feeds, H, **attrs)
    T = sum(LENGTHS[lengths])
    assert out.shape == (T, E) and out.dtype == np.float32
    assert_close(out, _reference(feeds, H, attrs))


@pytest.mark.parametrize("attrs", [{}, {"is_causal": 1}, {"add_zero_attn": 1}],
                         ids=["plain", "causal", "zero_attn"])
def test_varlen_self_attention_one_input(attrs):
    """query, key and value are one graph input (one GEMM with the packed (3E, E) weight over the
    T rows) and the weights constant initializers: one session, several offset sets and token
    counts in turn, including one with more (batch, head) pairs than the per-head task split
    needs (B*H >= 8) and one with fewer."""
    E, H = 32, 4
    base = varlen_feeds([5, 0, 40], E, H, seed=3, self_attn=True)
    sess = session(self_attention_model(base, H, **attrs))
    for seed, lengths in [(3, [5, 0, 40]), (4, [130]), (5, [1, 2, 3, 70, 0, 9]), (6, [])]:
        feeds = varlen_feeds(lengths, E, H, seed=seed, self_attn=True)
        for name in ("in_proj_weight", "in_proj_bias", "out_proj_weight", "out_proj_bias"):
            feeds[name] = base[name]  # the session's initializers
        (out,) = sess.run(None, self_attention_feeds(feeds))
        assert_close(out, _reference(feeds, H, attrs))


def test_varlen_rows_equal_the_dense_op_per_sequence():
    """A sequence's rows are the dense op's output for that sequence alone (B=1, L=S=len), and
    do not depend on the other sequences packed with it."""
    E, H = 16, 2
    feeds = varlen_feeds([6, 11, 4], E, H, seed=9)
    (packed,) = run(feeds, H)
    off = feeds["sequence_offsets"]
    for b in range(3):
        rows = slice(int(off[b]), int(off[b + 1]))
        dense = {k: v for k, v in feeds.items() if k != "sequence_offsets"}
        for n in ("query", "key", "value"):
            dense[n] = feeds[n][rows][None]
        (alone,) = run(dense, H)
        np.testing.assert_allclose(packed[rows], alone[0], rtol=1e-6, atol=1e-6)


def test_varlen_threads_give_same_answer():
    feeds = varlen_feeds([70, 3, 0, 129, 40], 32, 4, seed=21, bias_kv=True)
    model = make_model(feeds, 4, is_causal=1)
    (one,) = session(model, threads=1).run(None, feeds)
    (two,) = session(model, threads=2).run(None, feeds)
    assert_close(one, two, rtol=1e-6, atol=1e-7)


@pytest.mark.skipif(os.environ.get("MASKEDMHA_ISA") is not None, reason="already forced")
@pytest.mark.parametrize("isa", ["generic", "avx2"])
def test_varlen_other_instruction_set_variants(isa):
    """The narrower code paths (chosen once per process, hence a subprocess)."""
    env = dict(os.environ, MASKEDMHA_ISA=isa)
    sel = ("matches_pytorch_per_sequence and (long or mixed) and (packed or causal_bias) "
           "or self_attention_one_input")
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                          __file__, "-k", sel], env=env, capture_output=True, text=True,
                         cwd=os.path.dirname(__file__))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert " passed" in res.stdout


# ----------------------------------------------------------------------------------------------
# Errors: each names the input (or attribute / output) and says what was expected; the same
# session then still computes PyTorch's numbers.

def _good():
    return varlen_feeds([3, 0, 5], 16, 4, seed=31)


def _error_then_good(bad: dict, needle: str, good: dict | None = None, **attrs) -> str:
    good = good if good is not None else _good()
    sess = session(make_model(good, 4, **attrs), quiet=True)
    with pytest.raises(Exception) as exc:
        sess.run(None, {k: v for k, v in bad.items() if v is not None})
    msg = str(exc.value)
    assert needle in msg and "MaskedMHA" in msg, msg
    assert "\n" not in msg.strip(), msg
    (out,) = sess.run(None, {k: v for k, v in good.items() if v is not None})
    assert_close(out, _reference(good, 4, attrs))
    return msg


@pytest.mark.parametrize("offsets,expect", [
    ([1, 3, 3, 8], "starts with 1"),
    ([0, 5, 3, 8], "decreases: offsets[2] = 3 < offsets[1] = 5"),
    ([0, 3, 3, 7], "offsets[3] = 7"),
    ([0, 3, 9, 8], "offsets[2] = 9"),
    ([0, -1, 3, 8], "decreases"),
], ids=["first_not_0", "decreasing", "last_below_T", "beyond_T", "negative"])
def test_error_bad_offset_values(offsets, expect):
    good = _good()
    bad = dict(good, sequence_offsets=np.array(offsets, np.int64))
    msg = _error_then_good(bad, "input 13 'sequence_offsets'")
    assert expect in msg and "T = 8" in msg, msg


def test_error_offsets_empty():
    good = _good()
    bad = dict(good, sequence_offsets=np.zeros(0, np.int64))
    msg = _error_then_good(bad, "input 13 'sequence_offsets' has shape [0], expected [B+1]")
    assert "B >= 0" in msg


def test_error_offsets_rank_2():
    good = _good()
    sess_feeds = dict(good, sequence_offsets=good["sequence_offsets"][None])
    with pytest.raises(Exception) as exc:
        run(sess_feeds, 4)
    msg = str(exc.value)
    assert "input 13 'sequence_offsets' has shape [1,4], expected [B+1]" in msg, msg


def test_error_offsets_not_int64():
    """int32 offsets: refused by ORT's type check (the op declares tensor(int64))."""
    good = _good()
    bad = dict(good, sequence_offsets=good["sequence_offsets"].astype(np.int32))
    with pytest.raises(Exception) as exc:
        run(bad, 4)
    msg = str(exc.value)
    assert "sequence_offsets" in msg and "int32" in msg, msg


def test_error_query_rank_3():
    good = _good()
    bad = dict(good, query=good["query"][None], key=good["key"][None], value=good["value"][None])
    with pytest.raises(Exception) as exc:
        run(bad, 4)
    msg = str(exc.value)
    assert "input 0 'query' has rank 3" in msg and "(T, E) in the variable-length mode" in msg


def test_error_key_rows_differ_from_query():
    good = _good()
    bad = dict(good, key=good["key"][:7], value=good["value"][:7])
    msg = _error_then_good(bad, "input 1 'key' has shape [7,16], expected [8,16] (T, E)")
    assert "sequence_offsets" not in msg


@pytest.mark.parametrize("mask", ["key_padding_mask", "attn_mask"])
def test_error_mask_with_offsets(mask):
    good = _good()
    T = good["query"].shape[0]
    feeds = dict(good, **{mask: np.zeros((1, T) if mask == "key_padding_mask" else (T, T), bool)})
    with pytest.raises(Exception) as exc:
        run(feeds, 4)
    msg = str(exc.value)
    assert f"'{mask}' is not supported with sequence_offsets (variable-length mode)" in msg, msg


def test_error_attn_weights_with_offsets():
    with pytest.raises(Exception) as exc:
        run(_good(), 4, need_weights=True)
    msg = str(exc.value)
    assert "output 1 'attn_weights' is not supported with sequence_offsets" in msg, msg


def test_error_skip_padded_queries_with_offsets():
    with pytest.raises(Exception) as exc:
        run(_good(), 4, skip_padded_queries=1)
    msg = str(exc.value)
    assert "attribute 'skip_padded_queries' = 1 is not supported with sequence_offsets" in msg


def test_dense_feeds_still_dense():
    """Without sequence_offsets the op is the dense one (rank-2 query refused as before)."""
    feeds = make_feeds(1, 4, 4, 16, 4, seed=1)
    feeds = {k: (v[0] if k in ("query", "key", "value") else v) for k, v in feeds.items()}
    with pytest.raises(Exception) as exc:
        run(feeds, 4)
    assert "input 0 'query' has rank 2" in str(exc.value)


def test_offsets_of():
    assert offsets_of([3, 0, 2]).tolist() == [0, 3, 3, 5]
    assert offsets_of([]).tolist() == [0]
