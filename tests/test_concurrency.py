"""Inference servers share one session across threads and hold many sessions per process."""
from __future__ import annotations

import concurrent.futures as cf

import numpy as np
import onnxruntime as ort
import pytest

import maskedmha
from helpers.cases import CASES, export_case, feeds, make_inputs

CASE = next(c for c in CASES if c.name == "kpm_bool_am_float2")
SHAPES = [(1, 3, 3), (2, 5, 5), (3, 9, 9), (4, 17, 17), (2, 33, 33), (5, 2, 2), (1, 40, 40), (3, 12, 12)]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return export_case(CASE, str(tmp_path_factory.mktemp("conc") / "m.onnx"))


def _feeds(i: int) -> dict[str, np.ndarray]:
    return feeds(make_inputs(CASE, *SHAPES[i % len(SHAPES)], seed=i))


def test_one_session_from_eight_threads(model_path):
    session = maskedmha.InferenceSession(model_path)
    jobs = [_feeds(i) for i in range(64)]
    sequential = [session.run(None, f)[0] for f in jobs]
    with cf.ThreadPoolExecutor(max_workers=8) as pool:
        concurrent = list(pool.map(lambda f: session.run(None, f)[0], jobs))
    for i, (a, b) in enumerate(zip(concurrent, sequential)):
        np.testing.assert_array_equal(a, b, err_msg=f"job {i}: concurrent result differs from sequential")


def test_sessions_with_different_thread_settings_agree(model_path):
    results = []
    for threads in (1, 2, 3):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        results.append(maskedmha.InferenceSession(model_path, sess_options=opts))
    f = _feeds(6)
    outs = [s.run(None, f)[0] for s in results]
    for threads, out in zip((2, 3), outs[1:]):
        np.testing.assert_allclose(out, outs[0], rtol=1e-6, atol=1e-6,
                                   err_msg=f"{threads} threads differ from 1 thread")


def test_library_registered_in_many_sessions(model_path):
    sessions = [maskedmha.InferenceSession(model_path) for _ in range(20)]
    f = _feeds(3)
    first = sessions[0].run(None, f)[0]
    for s in sessions[1:]:
        np.testing.assert_array_equal(s.run(None, f)[0], first)
    del sessions
    # The library stays usable after those sessions are gone.
    np.testing.assert_array_equal(maskedmha.InferenceSession(model_path).run(None, f)[0], first)
