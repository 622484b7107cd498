"""Kernel-level tests of com.maskedmha::MaskedMHA: hand-built one-node ONNX graphs run by
onnxruntime with our library registered, compared with PyTorch's
``torch.nn.functional.multi_head_attention_forward`` (and, where PyTorch has no equivalent call,
with a direct float64 transcription of docs/MaskedMHA.md).

No timing assertions.  Every comparison is against an independent reference, so a wrong kernel
fails (see also test_reference_detects_wrong_output)."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

import maskedmha
from helpers.graphs import make_model, run, session
from helpers.reference import assert_close, make_feeds, spec_reference, torch_reference

# PyTorch warns when a bool key_padding_mask meets a float attn_mask; the op allows it.
pytestmark = pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask")


# ----------------------------------------------------------------------------------------------
# Configurations vs PyTorch

SHAPES = [(2, 5, 7), (3, 9, 4), (1, 1, 1), (2, 40, 70)]  # (B, L, S), L != S mostly

CONFIGS = {
    # name: (make_feeds kwargs, run attrs)
    "packed": (dict(), dict()),
    "no_bias": (dict(bias=False), dict()),
    "separate_kdim_vdim": (dict(kdim=12, vdim=20), dict()),
    "separate_same_dims": (dict(kdim=16, vdim=16), dict()),
    "bias_kv": (dict(bias_kv=True), dict()),
    "zero_attn": (dict(), dict(add_zero_attn=1)),
    "bias_kv_zero_attn": (dict(bias_kv=True), dict(add_zero_attn=1)),
    "kpm_bool": (dict(kpm="bool"), dict()),
    "kpm_float": (dict(kpm="float"), dict()),
    "am_bool2": (dict(attn_mask="bool2"), dict()),
    "am_float2": (dict(attn_mask="float2"), dict()),
    "am_bool3": (dict(attn_mask="bool3"), dict()),
    "am_float3": (dict(attn_mask="float3"), dict()),
    "kpm_bool_am_float3": (dict(kpm="bool", attn_mask="float3"), dict()),
    "kpm_float_am_bool2": (dict(kpm="float", attn_mask="bool2"), dict()),
    "kpm_bool_am_bool3": (dict(kpm="bool", attn_mask="bool3"), dict()),
    "kpm_float_am_float2": (dict(kpm="float", attn_mask="float2"), dict()),
    "everything": (dict(kdim=12, vdim=20, bias_kv=True, kpm="bool", attn_mask="float3"),
                   dict(add_zero_attn=1)),
}


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B%d_L%d_S%d" % s)
@pytest.mark.parametrize("config", list(CONFIGS))
def test_output_matches_pytorch(config, shape):
    B, L, S = shape
    E, H = 16, 4
    fk, attrs = CONFIGS[config]
    feeds = make_feeds(B, L, S, E, H, seed=hash((config, shape)) % 2**32, **fk)
    (out,) = run(feeds, H, **attrs)
    ref, _ = torch_reference(feeds, H, add_zero_attn=bool(attrs.get("add_zero_attn")))
    assert out.shape == (B, L, E) and out.dtype == np.float32
    assert_close(out, ref)


@pytest.mark.parametrize("average", [1, 0])
@pytest.mark.parametrize("config", ["packed", "kpm_bool_am_float3", "everything", "kpm_float"])
def test_weights_match_pytorch(config, average):
    B, L, S, E, H = 3, 6, 9, 24, 3
    fk, attrs = CONFIGS[config]
    feeds = make_feeds(B, L, S, E, H, seed=7, **fk)
    out, w = run(feeds, H, need_weights=True, average_attn_weights=average,
                 fully_masked_row="nan", **attrs)
    zero_attn = bool(attrs.get("add_zero_attn"))
    ref, ref_w = torch_reference(feeds, H, add_zero_attn=zero_attn, need_weights=True,
                                 average=bool(average))
    Sp = S + ("bias_k" in feeds) + zero_attn
    assert w.shape == ((B, L, Sp) if average else (B, H, L, Sp))
    assert_close(out, ref)
    assert_close(w, ref_w)


def test_self_attention_same_tensor():
    """query is key is value: the fused single-GEMM path (with and without key compaction)."""
    B, L, E, H = 3, 33, 32, 4
    for kpm in (None, "bool"):
        feeds = make_feeds(B, L, L, E, H, seed=3, self_attn=True, kpm=kpm)
        # Graph with ONE input feeding query, key and value.
        node = helper.make_node("MaskedMHA", ["x", "x", "x", "w", "", "", "b", "wo", "bo"] +
                                (["", "", "kpm"] if kpm else []), ["y"],
                                domain=maskedmha.DOMAIN, num_heads=H)
        ins = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "L", E])]
        if kpm:
            ins.append(helper.make_tensor_value_info("kpm", TensorProto.BOOL, ["B", "L"]))
        inits = [onnx.numpy_helper.from_array(feeds[n], name=a) for n, a in
                 [("in_proj_weight", "w"), ("in_proj_bias", "b"), ("out_proj_weight", "wo"),
                  ("out_proj_bias", "bo")]]
        graph = helper.make_graph([node], "self", ins,
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                                  initializer=inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18),
                                                        helper.make_opsetid(maskedmha.DOMAIN, 1)])
        model.ir_version = 9  # readable by ORT 1.17 (see single_node_model)
        sess = session(model.SerializeToString())
        # Weights are constant initializers (packed once and cached by the kernel): run twice
        # with different shapes and contents, and from two threads at once.
        for seed, (b, l) in [(3, (B, L)), (4, (2, 70)), (3, (B, L))]:
            f2 = make_feeds(b, l, l, E, H, seed=seed, self_attn=True, kpm=kpm)
            for n in ("in_proj_weight", "in_proj_bias", "out_proj_weight", "out_proj_bias"):
                f2[n] = feeds[n]
            run_feeds = {"x": f2["query"]}
            if kpm:
                run_feeds["kpm"] = f2["key_padding_mask"]
            (out,) = sess.run(None, run_feeds)
            assert_close(out, torch_reference(f2, H)[0])
        import concurrent.futures
        run_feeds = {"x": feeds["query"]}
        if kpm:
            run_feeds["kpm"] = feeds["key_padding_mask"]
        ref, _ = torch_reference(feeds, H)
        with concurrent.futures.ThreadPoolExecutor(2) as ex:
            for (out,) in ex.map(lambda _: sess.run(None, run_feeds), range(6)):
                assert_close(out, ref)


def test_nn_module_larger():
    """nn.MultiheadAttention itself (float32, default init) at a transformer-like size, with
    padding, several threads: long key ranges exercise the multi-block online softmax."""
    torch.manual_seed(0)
    B, L, E, H = 4, 150, 64, 4
    mha = torch.nn.MultiheadAttention(E, H, batch_first=True).eval()
    x = torch.randn(B, L, E)
    lengths = torch.tensor([150, 97, 64, 1])
    kpm = torch.arange(L)[None, :] >= lengths[:, None]
    with torch.no_grad():
        ref, ref_w = mha(x, x, x, key_padding_mask=kpm, need_weights=True)
    feeds = {"query": x.numpy(), "key": x.numpy(), "value": x.numpy(),
             "in_proj_weight": mha.in_proj_weight.detach().numpy(),
             "in_proj_bias": mha.in_proj_bias.detach().numpy(),
             "out_proj_weight": mha.out_proj.weight.detach().numpy(),
             "out_proj_bias": mha.out_proj.bias.detach().numpy(),
             "key_padding_mask": kpm.numpy()}
    out, w = run(feeds, H, need_weights=True)
    assert_close(out, ref.numpy(), atol=2e-5)
    assert_close(w, ref_w.numpy(), atol=2e-6)


# ----------------------------------------------------------------------------------------------
# is_causal

@pytest.mark.parametrize("shape", [(2, 6, 6), (2, 9, 4), (1, 3, 11), (2, 70, 70)],
                         ids=lambda s: "B%d_L%d_S%d" % s)
def test_causal_matches_pytorch(shape):
    """PyTorch's is_causal=True path == an explicit triu(1) bool mask over the S keys."""
    B, L, S = shape
    E, H = 16, 2
    feeds = make_feeds(B, L, S, E, H, seed=11)
    (out,) = run(feeds, H, is_causal=1)
    ref_feeds = dict(feeds, attn_mask=np.triu(np.ones((L, S), bool), 1))
    ref, _ = torch_reference(ref_feeds, H)
    assert_close(out, ref)
    # And the same with PyTorch's own SDPA causal path.
    if L == S:
        t = lambda n: torch.from_numpy(feeds[n]).double()  # noqa: E731
        mha = torch.nn.MultiheadAttention(E, H, batch_first=True).double().eval()
        with torch.no_grad():
            mha.in_proj_weight.copy_(t("in_proj_weight"))
            mha.in_proj_bias.copy_(t("in_proj_bias"))
            mha.out_proj.weight.copy_(t("out_proj_weight"))
            mha.out_proj.bias.copy_(t("out_proj_bias"))
            mask = torch.nn.Transformer.generate_square_subsequent_mask(L, dtype=torch.float64)
            ref2, _ = mha(t("query"), t("key"), t("value"), attn_mask=mask, is_causal=True,
                          need_weights=False)
        assert_close(out, ref2.numpy())


@pytest.mark.parametrize("need_weights", [False, True])
def test_causal_over_extra_keys_and_masks(need_weights):
    """is_causal covers all S' keys (extra keys included) and combines with both masks."""
    B, L, S, E, H = 2, 5, 3, 16, 4
    feeds = make_feeds(B, L, S, E, H, seed=5, bias_kv=True, kpm="bool", attn_mask="float3")
    res = run(feeds, H, need_weights=need_weights, is_causal=1, add_zero_attn=1,
              average_attn_weights=0)
    ref, P = spec_reference(feeds, H, add_zero_attn=True, is_causal=True)
    assert_close(res[0], ref)
    if need_weights:
        assert_close(res[1], P)


# ----------------------------------------------------------------------------------------------
# Fully masked rows, empty tensors

def _fully_masked_feeds(kind, with_bias=True):
    B, L, S, E, H = 3, 4, 5, 16, 4
    feeds = make_feeds(B, L, S, E, H, seed=13, bias=with_bias,
                       kpm="bool" if kind == "kpm_bool" else "float" if kind == "kpm_float" else None,
                       attn_mask="bool3" if kind == "am_bool3" else None)
    if kind == "kpm_bool":
        feeds["key_padding_mask"][1] = True               # batch item 1: every key padded
    elif kind == "kpm_float":
        feeds["key_padding_mask"][1] = -np.inf
    else:
        feeds["attn_mask"][1 * H + 2, 3] = True           # batch 1, head 2, row 3
    return feeds, H


@pytest.mark.parametrize("kind", ["kpm_bool", "kpm_float", "am_bool3"])
def test_fully_masked_rows_nan_mode_matches_pytorch_need_weights(kind):
    feeds, H = _fully_masked_feeds(kind)
    out, w = run(feeds, H, need_weights=True, fully_masked_row="nan", average_attn_weights=0)
    ref, ref_w = torch_reference(feeds, H, need_weights=True, average=False)
    assert np.isnan(ref).any(), "the reference must have NaN rows for this test to mean anything"
    np.testing.assert_array_equal(np.isnan(out), np.isnan(ref))
    np.testing.assert_array_equal(np.isnan(w), np.isnan(ref_w))
    assert_close(np.nan_to_num(out, nan=0.0), np.nan_to_num(ref, nan=0.0))
    assert_close(np.nan_to_num(w, nan=0.0), np.nan_to_num(ref_w, nan=0.0))


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("kind", ["kpm_bool", "kpm_float", "am_bool3"])
def test_fully_masked_rows_zero_mode_matches_pytorch_sdpa(kind, with_bias):
    feeds, H = _fully_masked_feeds(kind, with_bias)
    out, w = run(feeds, H, need_weights=True, average_attn_weights=0)  # default "zero"
    ref, _ = torch_reference(feeds, H, need_weights=False)
    assert not np.isnan(out).any() and not np.isnan(w).any()
    assert_close(out, ref)
    if kind.startswith("kpm"):
        bo = feeds["out_proj_bias"] if with_bias else np.zeros(16, np.float32)
        assert_close(out[1], np.broadcast_to(bo, out[1].shape))
        assert (w[1] == 0).all()
    else:
        assert (w[1, 2, 3] == 0).all() and w[1, 2, 2].sum() == pytest.approx(1, rel=1e-5)
    # Without the weights output, the one-pass kernel gives the same.
    (out2,) = run(feeds, H)
    assert_close(out2, ref)


def test_all_minus_inf_float_mask_row_with_extra_key():
    """A float mask of -inf on every given key leaves the extra (bias_kv) key: not fully masked."""
    B, L, S, E, H = 2, 3, 4, 16, 2
    feeds = make_feeds(B, L, S, E, H, seed=17, bias_kv=True, attn_mask="float2")
    feeds["attn_mask"][1] = -np.inf
    for nw in (False, True):
        res = run(feeds, H, need_weights=nw, fully_masked_row="nan")
        ref, ref_w = torch_reference(feeds, H, need_weights=True)
        assert not np.isnan(res[0]).any()
        assert_close(res[0], ref)
        if nw:
            assert_close(res[1], ref_w)


@pytest.mark.parametrize("kind", ["float2", "bool3"])
def test_mask_hiding_whole_key_blocks(kind):
    """A causal-like mask given as attn_mask over 300 keys hides whole blocks of 128 keys for
    the first query blocks (the kernel skips their P·V); results still match PyTorch."""
    B, L, S, E, H = 2, 300, 300, 32, 2
    feeds = make_feeds(B, L, S, E, H, seed=23, self_attn=True, attn_mask=kind, kpm="bool", pad_frac=0.1)
    hide = np.triu(np.ones((L, S), dtype=bool), k=1)
    if kind == "float2":
        feeds["attn_mask"] = np.where(hide, -np.inf, feeds["attn_mask"]).astype(np.float32)
    else:
        feeds["attn_mask"] = feeds["attn_mask"] | hide[None]
    out, = run(feeds, H)
    ref, _ = torch_reference(feeds, H)
    assert_close(out, ref)


def test_nan_value_in_a_hidden_key_block_propagates_like_pytorch():
    """PyTorch multiplies the zero weights of hidden keys by their values, so a NaN value makes
    the row NaN even when the mask hides its whole key block: the block must not be skipped."""
    B, L, S, E, H = 1, 40, 300, 32, 2
    feeds = make_feeds(B, L, S, E, H, seed=29)
    m = np.zeros((L, S), dtype=np.float32)
    m[:, 128:256] = -np.inf  # the second key block is hidden for every query
    feeds["attn_mask"] = m
    feeds["value"][0, 200, 3] = np.nan
    out, = run(feeds, H)
    ref, _ = torch_reference(feeds, H)
    assert np.isnan(ref).all() and np.isnan(out).all()
    feeds["value"][0, 200, 3] = 1.0  # the same mask with finite values: finite and equal
    out, = run(feeds, H)
    ref, _ = torch_reference(feeds, H)
    assert not np.isnan(out).any()
    assert_close(out, ref)


def test_huge_negative_float_mask_is_stable():
    """Scores shifted by -1e30 everywhere must not underflow to a 0/0 (max-subtracted softmax)."""
    B, L, S, E, H = 2, 4, 6, 16, 2
    feeds = make_feeds(B, L, S, E, H, seed=19, attn_mask="float2")
    feeds["attn_mask"] = (feeds["attn_mask"] - 1e30).astype(np.float32)
    out, w = run(feeds, H, need_weights=True)
    ref, ref_w = torch_reference(feeds, H, need_weights=True)
    assert_close(out, ref)
    assert_close(w, ref_w)


@pytest.mark.parametrize("mode", ["zero", "nan"])
@pytest.mark.parametrize("shape", [(0, 4, 5), (2, 0, 5), (2, 4, 0), (0, 0, 0)],
                         ids=lambda s: "B%d_L%d_S%d" % s)
def test_empty(shape, mode):
    B, L, S = shape
    E, H = 8, 2
    feeds = make_feeds(B, L, S, E, H, seed=23, kpm="bool", attn_mask="float2")
    for average in (1, 0):
        out, w = run(feeds, H, need_weights=True, fully_masked_row=mode,
                     average_attn_weights=average)
        assert out.shape == (B, L, E)
        assert w.shape == ((B, L, S) if average else (B, H, L, S))
        if S == 0 and B * L > 0:
            # S' = 0: the "zero" answer in both modes: output rows = out_proj_bias.
            assert_close(out, np.broadcast_to(feeds["out_proj_bias"], out.shape))
    if S == 0 and B * L > 0:
        # With an extra key S' = 1 > 0: ordinary attention over the zero key.
        out, w = run(feeds, H, need_weights=True, fully_masked_row=mode, add_zero_attn=1)
        ref, ref_w = torch_reference(feeds, H, add_zero_attn=True, need_weights=True)
        assert_close(out, ref)
        assert_close(w, ref_w)


# ----------------------------------------------------------------------------------------------
# The tests can fail

def test_reference_detects_wrong_output():
    """Guard against tautologies: a perturbed kernel answer or a different config is caught."""
    feeds = make_feeds(2, 5, 7, 16, 4, seed=41, kpm="bool")
    (out,) = run(feeds, 4)
    ref, _ = torch_reference(feeds, 4)
    with pytest.raises(AssertionError):
        assert_close(out * (1 + 1e-4), ref)
    ref_nomask, _ = torch_reference(dict(feeds, key_padding_mask=None), 4)
    with pytest.raises(AssertionError):
        assert_close(out, ref_nomask)


@pytest.mark.skipif(os.environ.get("MASKEDMHA_ISA") is not None, reason="already forced")
@pytest.mark.parametrize("isa", ["generic", "avx2"])
def test_other_instruction_set_variants(isa):
    """The kernel picks AVX-512 / AVX2 / portable loops at run time; MASKEDMHA_ISA lowers the
    choice, so the narrower variants are checked here too (in a subprocess: the choice is made
    once per process)."""
    env = dict(os.environ, MASKEDMHA_ISA=isa)
    sel = ("output_matches_pytorch and (everything or kpm_bool_am_float3 or packed) "
           "or weights_match or fully_masked or causal or self_attention or nn_module")
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                          __file__, "-k", sel], env=env, capture_output=True, text=True,
                         cwd=os.path.dirname(__file__))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert " passed" in res.stdout


def test_threads_give_same_answer():
    feeds = make_feeds(4, 70, 90, 32, 4, seed=43, kpm="bool", attn_mask="float3")
    model = make_model(feeds, 4, need_weights=True)
    r1 = session(model, threads=1).run(None, feeds)
    r2 = session(model, threads=2).run(None, feeds)
    for a, b in zip(r1, r2):
        assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_zero_embed_dim_does_not_crash():
    """E = 0: empty output rows; scores are 0 + masks, so the weights are still a softmax."""
    feeds = make_feeds(2, 3, 4, 0, 2, seed=47, kpm="bool", attn_mask="float2")
    out, w = run(feeds, 2, need_weights=True)
    assert out.shape == (2, 3, 0) and w.shape == (2, 3, 4)
    np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-6)
    assert (w[feeds["key_padding_mask"][:, None, :].repeat(3, 1)] == 0).all()
