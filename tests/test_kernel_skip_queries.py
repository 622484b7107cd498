"""Kernel-level tests of MaskedMHA's skip_padded_queries = 1: query rows that the bool
key_padding_mask marks are not computed and come out as zeros (output rows and attn_weights rows),
every other row is what skip_padded_queries = 0 gives -- compared with PyTorch's
``F.multi_head_attention_forward`` (float64) on random inputs; and the nodes it refuses, each
with a one-line error naming the attribute.  No timing assertions."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from helpers.graphs import make_model, run, self_attention_feeds, self_attention_model, session
from helpers.reference import assert_close, make_feeds, spec_reference, torch_reference

# PyTorch warns when a bool key_padding_mask meets a float attn_mask; the op allows it.
pytestmark = pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask")

SHAPES = [(3, 9), (2, 70), (1, 1), (4, 33)]  # (B, L == S)

CONFIGS = {
    # name: (make_feeds kwargs, run attrs)
    "self_attn": (dict(self_attn=True), dict()),
    "cross_same_length": (dict(), dict()),
    "no_bias": (dict(bias=False), dict()),
    "separate_kdim_vdim": (dict(kdim=12, vdim=20), dict()),
    "bias_kv_zero_attn": (dict(bias_kv=True), dict(add_zero_attn=1)),
    "am_float3": (dict(attn_mask="float3"), dict()),
    "am_bool2": (dict(self_attn=True, attn_mask="bool2"), dict()),
}


def _check(res, feeds, H, *, need_weights=False, average=True, add_zero_attn=False):
    """Padded rows are exactly 0 (output and weights), the others PyTorch's."""
    ref, ref_w = torch_reference(feeds, H, add_zero_attn=add_zero_attn,
                                 need_weights=need_weights, average=average)
    pad = feeds["key_padding_mask"]
    out = res[0]
    assert out.shape == ref.shape
    assert (out[pad] == 0).all()
    assert_close(out[~pad], ref[~pad])
    if need_weights:
        w = res[1] if average else res[1].transpose(0, 2, 1, 3)  # (B, L, [H,] S')
        ref_w = ref_w if average else ref_w.transpose(0, 2, 1, 3)
        assert res[1].shape == (ref_w.shape if average else ref_w.transpose(0, 2, 1, 3).shape)
        assert (w[pad] == 0).all()
        assert_close(w[~pad], ref_w[~pad])


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B%d_L%d" % s)
@pytest.mark.parametrize("config", list(CONFIGS))
def test_skip_matches_pytorch(config, shape):
    B, L = shape
    E, H = 16, 4
    fk, attrs = CONFIGS[config]
    feeds = make_feeds(B, L, L, E, H, seed=hash((config, shape)) % 2**32, kpm="bool",
                       pad_frac=0.4, **fk)
    res = run(feeds, H, skip_padded_queries=1, **attrs)
    _check(res, feeds, H, add_zero_attn=bool(attrs.get("add_zero_attn")))


@pytest.mark.parametrize("average", [1, 0], ids=["average", "per_head"])
@pytest.mark.parametrize("config", ["self_attn", "am_float3", "bias_kv_zero_attn"])
def test_skip_with_weights_matches_pytorch(config, average):
    B, L, E, H = 3, 40, 24, 3
    fk, attrs = CONFIGS[config]
    feeds = make_feeds(B, L, L, E, H, seed=17, kpm="bool", pad_frac=0.3, **fk)
    res = run(feeds, H, need_weights=True, average_attn_weights=average, skip_padded_queries=1,
              **attrs)
    _check(res, feeds, H, need_weights=True, average=bool(average),
           add_zero_attn=bool(attrs.get("add_zero_attn")))


@pytest.mark.parametrize("need_weights", [False, True])
def test_skip_with_causal(need_weights):
    """is_causal places the kept rows by their positions (docs/MaskedMHA.md's transcription,
    as PyTorch's causal mask does not cover the extra keys)."""
    B, L, E, H = 2, 37, 16, 4
    feeds = make_feeds(B, L, L, E, H, seed=5, bias_kv=True, kpm="bool", pad_frac=0.4)
    res = run(feeds, H, need_weights=need_weights, is_causal=1, add_zero_attn=1,
              average_attn_weights=0, skip_padded_queries=1)
    ref, P = spec_reference(feeds, H, add_zero_attn=True, is_causal=True)
    pad = feeds["key_padding_mask"]
    assert (res[0][pad] == 0).all()
    assert_close(res[0][~pad], ref[~pad])
    if need_weights:
        w, P = res[1].transpose(0, 2, 1, 3), P.transpose(0, 2, 1, 3)
        assert (w[pad] == 0).all()
        assert_close(w[~pad], P[~pad])


def test_skip_self_attention_one_input():
    """query, key and value one graph input, weights constant initializers (Q, K and V of the
    kept rows from one GEMM): one session, several shapes and masks, from two threads."""
    E, H = 32, 4
    base = make_feeds(3, 33, 33, E, H, seed=3, self_attn=True, kpm="bool")
    sess = session(self_attention_model(base, H, skip_padded_queries=1))
    for seed, (b, n) in [(3, (3, 33)), (4, (2, 130)), (5, (9, 8))]:
        feeds = make_feeds(b, n, n, E, H, seed=seed, self_attn=True, kpm="bool", pad_frac=0.5)
        for name in ("in_proj_weight", "in_proj_bias", "out_proj_weight", "out_proj_bias"):
            feeds[name] = base[name]
        _check(sess.run(None, self_attention_feeds(feeds)), feeds, H)


def test_skip_rows_equal_unskipped_rows():
    """Every row that is not skipped is exactly (bitwise) what skip_padded_queries = 0 gives."""
    E, H = 32, 4
    feeds = make_feeds(4, 50, 50, E, H, seed=23, self_attn=True, kpm="bool", pad_frac=0.5,
                       attn_mask="float3")
    pad = feeds["key_padding_mask"]
    skipped = run(feeds, H, need_weights=True, skip_padded_queries=1)
    full = run(feeds, H, need_weights=True)
    for a, b in zip(skipped, full):
        np.testing.assert_array_equal(a[~pad], b[~pad])


def test_skip_fully_padded_item():
    """An item whose every position is padded gives zeros only (no NaN, no out_proj_bias)."""
    B, L, E, H = 3, 6, 16, 4
    feeds = make_feeds(B, L, L, E, H, seed=41, self_attn=True, kpm="bool")
    feeds["key_padding_mask"][1] = True
    out, w = run(feeds, H, need_weights=True, skip_padded_queries=1, fully_masked_row="nan")
    assert (out[1] == 0).all() and (w[1] == 0).all()
    _check((out, w), feeds, H, need_weights=True)


@pytest.mark.parametrize("where", ["padded_key_row", "attn_mask"])
def test_skip_without_compaction(where):
    """NaN in a padded key row (or NaN / +inf in a float attn_mask) rules out dropping the
    padded rows (PyTorch's numbers would change): every row is computed as with
    skip_padded_queries = 0, and the padded ones are still zeros."""
    B, L, E, H = 2, 12, 16, 4
    feeds = make_feeds(B, L, L, E, H, seed=43, kpm="bool", attn_mask="float3", pad_frac=0.4)
    pad = feeds["key_padding_mask"]
    if where == "padded_key_row":
        b, j = np.argwhere(pad)[0]
        feeds["key"][b, j, 3] = np.nan
    else:
        feeds["attn_mask"][0, 2, 5] = np.inf
    out, w = run(feeds, H, need_weights=True, skip_padded_queries=1)
    ref, _ = torch_reference(feeds, H)
    assert (out[pad] == 0).all() and (w[pad] == 0).all()
    np.testing.assert_allclose(out[~pad], ref[~pad], rtol=1e-5, atol=1e-5, equal_nan=True)
    assert np.isnan(out[~pad]).any() or where == "attn_mask"  # the case is really there
    # The weights of NaN rows are the op's own (docs/MaskedMHA.md), not compared with PyTorch
    # here: the other rows are those of skip_padded_queries = 0.
    full_out, full_w = run(feeds, H, need_weights=True)
    np.testing.assert_array_equal(out[~pad], full_out[~pad])
    np.testing.assert_array_equal(w[~pad], full_w[~pad])


def test_skip_empty_batch():
    feeds = make_feeds(0, 5, 5, 16, 4, seed=1, kpm="bool")
    (out,) = run(feeds, 4, skip_padded_queries=1)
    assert out.shape == (0, 5, 16)


@pytest.mark.skipif(os.environ.get("MASKEDMHA_ISA") is not None, reason="already forced")
@pytest.mark.parametrize("isa", ["generic", "avx2"])
def test_skip_other_instruction_set_variants(isa):
    """The narrower code paths (chosen once per process, hence a subprocess)."""
    env = dict(os.environ, MASKEDMHA_ISA=isa)
    sel = ("skip_matches_pytorch and B2_L70 or skip_with_weights or skip_with_causal "
           "or one_input or fully_padded")
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                          __file__, "-k", sel], env=env, capture_output=True, text=True,
                         cwd=os.path.dirname(__file__))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert " passed" in res.stdout


# ----------------------------------------------------------------------------------------------
# Errors: one line naming the attribute and what it needs; the session stays usable.

def _skip_error(bad: dict, good: dict, needle: str):
    sess = session(make_model(good, 4, skip_padded_queries=1), quiet=True)
    with pytest.raises(Exception) as exc:
        sess.run(None, {k: v for k, v in bad.items() if v is not None})
    msg = str(exc.value)
    assert "MaskedMHA: attribute 'skip_padded_queries' = 1 needs" in msg and needle in msg, msg
    assert "\n" not in msg.strip(), msg
    _check(sess.run(None, good), good, 4)


def test_error_skip_with_float_mask():
    feeds = make_feeds(2, 5, 5, 16, 4, seed=2, kpm="float")
    with pytest.raises(Exception) as exc:
        run(feeds, 4, skip_padded_queries=1)
    msg = str(exc.value)
    assert "'skip_padded_queries' = 1 needs a tensor(bool) input 11 'key_padding_mask'" in msg
    assert "it is tensor(float)" in msg


def test_error_skip_without_mask():
    feeds = make_feeds(2, 5, 5, 16, 4, seed=2)
    with pytest.raises(Exception) as exc:
        run(feeds, 4, skip_padded_queries=1)
    msg = str(exc.value)
    assert "'skip_padded_queries' = 1 needs a tensor(bool) input 11 'key_padding_mask'" in msg
    assert "absent" in msg


def test_error_skip_with_l_not_s():
    good = make_feeds(2, 5, 5, 16, 4, seed=2, kpm="bool")
    bad = make_feeds(2, 4, 5, 16, 4, seed=2, kpm="bool")
    _skip_error(bad, good, "L == S")


def test_error_skip_attribute_value():
    feeds = make_feeds(2, 5, 5, 16, 4, seed=2, kpm="bool")
    with pytest.raises(Exception) as exc:
        session(make_model(feeds, 4, skip_padded_queries=2), quiet=True)
    msg = str(exc.value)
    assert "attribute 'skip_padded_queries' is 2, expected an int 0 or 1" in msg, msg
