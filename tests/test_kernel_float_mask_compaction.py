"""A float key_padding_mask whose every value is 0 or -inf is the bool mask canon() turns into it
(docs/MaskedMHA.md), so the kernel takes the bool route for it, key compaction included
(ops/kernel.cc, FloatMaskAsBool).  nn.TransformerEncoder hands its attention exactly such masks.

Checked against PyTorch's multi_head_attention_forward with the same float mask: plain, with
attention weights, with attn_masks, bias_kv / add_zero_attn, fully masked rows (both
fully_masked_row modes), NaN in hidden key rows and NaN / +inf attn_masks (where compaction is
not exact and the kernel must compute like PyTorch), and float masks with other values (which
must keep the additive path).  No timing assertions."""
from __future__ import annotations

import numpy as np
import pytest

from helpers.graphs import run, self_attention_feeds, self_attention_model, session
from helpers.reference import assert_close, make_feeds, spec_reference, torch_reference

NINF = np.float32(-np.inf)


def as_zero_ninf(feeds, *, negative_zero=False):
    """The bool key_padding_mask of ``feeds`` as a float 0 / -inf mask (-0.0 for 0 if asked)."""
    pad = feeds["key_padding_mask"]
    zero = np.float32(-0.0 if negative_zero else 0.0)
    feeds["key_padding_mask"] = np.where(pad, NINF, zero).astype(np.float32)
    return feeds


SHAPES = [(2, 5, 7), (3, 17, 17), (8, 61, 61), (2, 40, 70)]  # (B, L, S)
CONFIGS = {
    "plain": (dict(), dict()),
    "am_float2": (dict(attn_mask="float2"), dict()),
    "am_bool3": (dict(attn_mask="bool3"), dict()),
    "bias_kv_zero_attn": (dict(bias_kv=True), dict(add_zero_attn=1)),
    "separate_kdim_vdim": (dict(kdim=12, vdim=20), dict()),
}


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B%d_L%d_S%d" % s)
@pytest.mark.parametrize("config", list(CONFIGS))
def test_zero_ninf_float_mask_matches_pytorch(config, shape):
    B, L, S = shape
    E, H = 32, 2  # head dim 16, the small-model case
    fk, attrs = CONFIGS[config]
    feeds = as_zero_ninf(make_feeds(B, L, S, E, H, seed=hash((config, shape)) % 2**32,
                                    kpm="bool", pad_frac=0.5, **fk))
    (out,) = run(feeds, H, **attrs)
    ref, _ = torch_reference(feeds, H, add_zero_attn=bool(attrs.get("add_zero_attn")))
    assert_close(out, ref)


@pytest.mark.parametrize("average", [1, 0])
def test_weights_match_pytorch(average):
    B, L, S, E, H = 3, 6, 9, 24, 3
    feeds = as_zero_ninf(make_feeds(B, L, S, E, H, seed=11, kpm="bool", pad_frac=0.5),
                         negative_zero=True)
    out, w = run(feeds, H, need_weights=True, average_attn_weights=average)
    ref, ref_w = torch_reference(feeds, H, need_weights=True, average=bool(average))
    assert_close(out, ref)
    assert_close(w, ref_w)


@pytest.mark.parametrize("B,L,E,H", [(8, 61, 64, 4), (4, 128, 128, 8), (3, 33, 96, 3)])
def test_self_attention_single_gemm_matches_pytorch(B, L, E, H):
    """query is key is value with constant weights: the compacted one-GEMM path."""
    feeds = as_zero_ninf(make_feeds(B, L, L, E, H, seed=5, self_attn=True, kpm="bool",
                                    pad_frac=0.4))
    feeds["key_padding_mask"][::2, L // 2:] = NINF  # also a contiguous padded tail
    (out,) = session(self_attention_model(feeds, H)).run(None, self_attention_feeds(feeds))
    ref, _ = torch_reference(feeds, H)
    assert_close(out, ref)


@pytest.mark.parametrize("mode", ["zero", "nan"])
def test_fully_masked_rows(mode):
    """Items whose keys are all -inf: their rows follow fully_masked_row like a bool mask's."""
    B, L, S, E, H = 4, 5, 6, 16, 2
    feeds = as_zero_ninf(make_feeds(B, L, S, E, H, seed=2, kpm="bool"))
    feeds["key_padding_mask"][1] = NINF
    feeds["key_padding_mask"][3] = NINF
    (out,) = run(feeds, H, fully_masked_row=mode)
    ref, _ = spec_reference(feeds, H, nan_rows=mode == "nan")
    if mode == "nan":
        assert np.isnan(out[[1, 3]]).all()
    else:  # PyTorch's own result too (its softmax path yields the output bias on such rows)
        assert_close(out, torch_reference(feeds, H)[0])
        np.testing.assert_allclose(out[1], np.broadcast_to(feeds["out_proj_bias"], (L, E)),
                                   rtol=1e-6, atol=1e-6)
    assert_close(out, ref)
    assert np.isfinite(out[[0, 2]]).all()


def test_nan_in_hidden_key_rows_gives_pytorchs_nan():
    """A hidden key row holding NaN makes PyTorch's scores NaN (-inf + NaN): no compaction."""
    B, L, S, E, H = 2, 4, 6, 16, 2
    feeds = as_zero_ninf(make_feeds(B, L, S, E, H, seed=4, kpm="bool"))
    feeds["key_padding_mask"][0, 3] = NINF
    feeds["key"][0, 3, 0] = np.nan
    (out,) = run(feeds, H)
    ref, _ = torch_reference(feeds, H)
    assert np.isnan(ref[0]).all() and np.isfinite(ref[1]).all()
    assert_close(out, ref)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_posinf_attn_mask_computed_like_pytorch(bad):
    B, L, S, E, H = 2, 4, 6, 16, 2
    feeds = as_zero_ninf(make_feeds(B, L, S, E, H, seed=6, kpm="bool", attn_mask="float2"))
    feeds["key_padding_mask"][:, 4] = NINF
    feeds["attn_mask"][1, 4] = bad  # meets a hidden key: NaN in PyTorch
    (out,) = run(feeds, H)
    ref, _ = torch_reference(feeds, H)
    assert np.isnan(ref[:, 1]).all()
    assert_close(out, ref)


@pytest.mark.parametrize("other", [-1e4, -0.5, 1.0, np.nan])
def test_other_float_values_keep_the_additive_path(other):
    """One value other than 0 / -inf among them: every value counts additively, as in PyTorch."""
    B, L, S, E, H = 3, 5, 9, 16, 2
    feeds = as_zero_ninf(make_feeds(B, L, S, E, H, seed=8, kpm="bool"))
    feeds["key_padding_mask"][2, 1] = np.float32(other)
    (out,) = run(feeds, H)
    ref, _ = torch_reference(feeds, H)
    if np.isnan(other):
        assert np.isnan(ref[2]).all()
    assert_close(out, ref)


@pytest.mark.parametrize("D", [16, 20, 48, 52])
def test_head_dims_off_the_register_chunk_match_pytorch(D):
    """Head dims that are not a whole number of P·V register chunks (32 floats under AVX-512):
    the one-vector tile for the whole vectors left, then the scalar tail (attention.cc)."""
    B, L, H = 3, 40, 2
    feeds = as_zero_ninf(make_feeds(B, L, L, D * H, H, seed=D, kpm="bool"))
    (out,) = run(feeds, H)
    ref, _ = torch_reference(feeds, H)
    assert_close(out, ref)
