"""MASKEDMHA_TEAM (ops/team_policy.h): a call's parallel phases run on the thread team or on the
calling thread alone ("solo"), as the node's policy chooses from its own measurements.  Both
modes must give bitwise the same answer, PyTorch's; the policy itself is driven with made-up
measurements (tests/cpp/team_policy_check.cc), since real timings cannot be asserted on."""
from __future__ import annotations

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from helpers.cxx import compiler_or_skip
from helpers.graphs import make_model
from helpers.reference import assert_close, make_feeds, torch_reference
from helpers.varlen import varlen_feeds, varlen_reference

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cases():
    """(name, model bytes, feeds, expected outputs) over the kernel's paths: masks with
    need_weights, causal with padding, skipped padded queries, the variable-length mode."""
    out = []
    f = make_feeds(3, 40, 50, 32, 4, seed=1, kpm="bool", attn_mask="float3")
    out.append(("masks_weights", make_model(f, 4, need_weights=True), f,
                list(torch_reference(f, 4, need_weights=True))))
    f = make_feeds(2, 70, 70, 64, 4, seed=2, self_attn=True, kpm="bool")
    causal = np.triu(np.ones((70, 70), bool), 1)
    out.append(("causal", make_model(f, 4, is_causal=1), f,
                [torch_reference(dict(f, attn_mask=causal), 4)[0]]))
    f = make_feeds(3, 40, 40, 32, 4, seed=3, self_attn=True, kpm="bool")
    ref = torch_reference(f, 4)[0].copy()
    ref[f["key_padding_mask"]] = 0.0  # skip_padded_queries: the padded rows are zeros
    out.append(("skip_padded_queries", make_model(f, 4, skip_padded_queries=1), f, [ref]))
    f = varlen_feeds([5, 0, 33, 17], 32, 4, seed=4, self_attn=True)
    out.append(("varlen", make_model(f, 4), f, [varlen_reference(f, 4)]))
    return out


_CHILD = r"""
import pickle, sys
import onnxruntime as ort
import maskedmha
cases = pickle.load(open(sys.argv[1], "rb"))
got = {}
for name, model, feeds, _ in cases:
    o = ort.SessionOptions()
    o.intra_op_num_threads = 2
    s = maskedmha.InferenceSession(model, o)
    # Several calls: under "auto" the node's policy may switch modes between them.
    got[name] = [s.run(None, feeds) for _ in range(20)]
pickle.dump(got, open(sys.argv[2], "wb"))
"""


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """Each mode's outputs, from a child process per mode (the variable is read once)."""
    d = tmp_path_factory.mktemp("team_modes")
    cases = _cases()
    with open(d / "cases.pkl", "wb") as fh:
        pickle.dump(cases, fh)
    res = {}
    # The CPU's own ISA and AVX2 (MASKEDMHA_ISA, as tests/test_kernel.py): the modes must agree
    # within each ISA (across ISAs the sums may round differently).
    for isa in ("", "avx2"):
        for mode in ("team", "solo", "auto"):
            env = dict(os.environ, MASKEDMHA_TEAM=mode)
            if isa:
                env["MASKEDMHA_ISA"] = isa
            out = d / f"{mode}{isa}.pkl"
            r = subprocess.run([sys.executable, "-c", _CHILD, str(d / "cases.pkl"), str(out)],
                               env=env, capture_output=True, text=True, timeout=600)
            assert r.returncode == 0, r.stderr[-3000:]
            with open(out, "rb") as fh:
                res[mode, isa] = pickle.load(fh)
    return cases, res


@pytest.mark.skipif(os.environ.get("MASKEDMHA_TEAM") is not None or os.environ.get("MASKEDMHA_ISA") is not None,
                    reason="mode or ISA already forced")
def test_modes_give_bitwise_the_same_answer_and_it_is_pytorchs(outputs):
    cases, res = outputs
    for isa in ("", "avx2"):
        for name, _, _, expected in cases:
            first = res["team", isa][name][0]
            for mode in ("team", "solo", "auto"):
                for call in res[mode, isa][name]:
                    for a, b in zip(call, first):
                        np.testing.assert_array_equal(
                            a, b, err_msg=f"{name}, MASKEDMHA_TEAM={mode}, ISA {isa or 'native'}")
            for a, e in zip(first, expected):
                assert_close(a, e)


def test_policy_choices_on_made_up_measurements(tmp_path):
    cxx = compiler_or_skip()
    exe = str(tmp_path / "team_policy_check")
    build = subprocess.run([cxx, "-std=c++17", "-O1", "-g", "-I", os.path.join(ROOT, "ops"),
                            os.path.join(ROOT, "tests", "cpp", "team_policy_check.cc"),
                            os.path.join(ROOT, "ops", "team_policy.cc"), "-o", exe],
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-3000:]
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}  # (sanitize.sh preloads ASan)
    res = subprocess.run([exe], capture_output=True, text=True, timeout=60, env=env)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stdout + res.stderr
