"""The kernel's thread team (ops/team.h): one pool section per call, phases handed to helpers."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest

import maskedmha
from helpers.cases import CASES, export_case, feeds, make_inputs
from helpers.cxx import compiler_or_skip

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _build(out: str, sanitize: bool) -> bool:
    cxx = compiler_or_skip()
    cmd = [cxx, "-std=c++17", "-O1", "-g", "-pthread", "-I", os.path.join(ROOT, "ops"),
           os.path.join(ROOT, "tests", "cpp", "team_stress.cc"), os.path.join(ROOT, "ops", "team.cc"),
           "-o", out]
    if sanitize:
        cmd.insert(1, "-fsanitize=thread")
    return subprocess.run(cmd, capture_output=True, text=True).returncode == 0


def test_every_item_runs_once_per_phase(tmp_path):
    exe = str(tmp_path / "team_stress")
    # ThreadSanitizer where the toolchain has it (it reports a missing happens-before between an
    # item's writes and the leader's reads, which a plain run would rarely show).
    sanitized = _build(exe, sanitize=True)
    if not sanitized:
        assert _build(exe, sanitize=False), "team_stress.cc does not compile"
    # (Not LD_PRELOAD: scripts/sanitize.sh preloads AddressSanitizer into the interpreter.)
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    env["TSAN_OPTIONS"] = "halt_on_error=1 exitcode=66"
    res = subprocess.run([exe, "1500"], capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    assert res.stdout.startswith("ok 1500")


CASE = next(c for c in CASES if c.name == "kpm_bool_am_float2")


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return export_case(CASE, str(tmp_path_factory.mktemp("team") / "m.onnx"))


@pytest.mark.parametrize("threads", [1, 2, 4, 7])
@pytest.mark.parametrize("spinning", ["0", "1"])
def test_pool_size_and_spinning_do_not_change_results(model_path, threads, spinning):
    """More pool threads than cores, a pool that sleeps between sections or spins: the same answer
    as one thread, on shapes with many and with few tasks per phase."""
    ref = maskedmha.InferenceSession(model_path, sess_options=_opts(1, "0"))
    s = maskedmha.InferenceSession(model_path, sess_options=_opts(threads, spinning))
    for i, shape in enumerate([(1, 3, 3), (4, 70, 70), (2, 130, 130)]):
        f = feeds(make_inputs(CASE, *shape, seed=i))
        for _ in range(3):
            np.testing.assert_allclose(s.run(None, f)[0], ref.run(None, f)[0], rtol=1e-6, atol=1e-6)


def _opts(threads: int, spinning: str) -> ort.SessionOptions:
    o = ort.SessionOptions()
    o.intra_op_num_threads = threads
    o.add_session_config_entry("session.intra_op.allow_spinning", spinning)
    return o


def _two_node_model(E: int, heads: tuple[int, int]) -> bytes:
    """Two MaskedMHA nodes on the same inputs (different head counts), independent of each other,
    so ORT's parallel executor can run them at once on its inter-op threads."""
    from onnx import TensorProto, helper
    ins = ["query", "key", "value", "in_proj_weight", "", "", "in_proj_bias", "out_proj_weight",
           "out_proj_bias", "", "", "key_padding_mask"]
    nodes = [helper.make_node("MaskedMHA", ins, [f"out{i}"], domain=maskedmha.DOMAIN, num_heads=h)
             for i, h in enumerate(heads)]
    shapes = {"query": ["B", "L", E], "key": ["B", "S", E], "value": ["B", "S", E],
              "in_proj_weight": [3 * E, E], "in_proj_bias": [3 * E], "out_proj_weight": [E, E],
              "out_proj_bias": [E]}
    graph_inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, d) for n, d in shapes.items()]
    graph_inputs.append(helper.make_tensor_value_info("key_padding_mask", TensorProto.BOOL, ["B", "S"]))
    outs = [helper.make_tensor_value_info(f"out{i}", TensorProto.FLOAT, None) for i in range(2)]
    model = helper.make_model(helper.make_graph(nodes, "two", graph_inputs, outs),
                              opset_imports=[helper.make_opsetid("", 18),
                                             helper.make_opsetid(maskedmha.DOMAIN, 1)])
    model.ir_version = 10
    return model.SerializeToString()


def test_nodes_run_concurrently_by_the_parallel_executor():
    """Two kernel calls at once on one session, each leading its own team over the shared
    intra-op pool (ORT_PARALLEL runs independent nodes on inter-op threads): the same results as
    sequential execution."""
    E, B, L, S = 64, 3, 40, 50
    rng = np.random.default_rng(5)
    f = {"query": rng.standard_normal((B, L, E), np.float32), "key": rng.standard_normal((B, S, E), np.float32),
         "in_proj_weight": rng.standard_normal((3 * E, E), np.float32) / 8,
         "in_proj_bias": rng.standard_normal(3 * E, np.float32) / 10,
         "out_proj_weight": rng.standard_normal((E, E), np.float32) / 8,
         "out_proj_bias": rng.standard_normal(E, np.float32) / 10,
         "key_padding_mask": rng.random((B, S)) < 0.3}
    f["value"] = rng.standard_normal((B, S, E), np.float32)
    model = _two_node_model(E, (4, 8))
    seq = maskedmha.InferenceSession(model, sess_options=_opts(2, "0"))
    par_opts = _opts(2, "0")
    par_opts.execution_mode = ort.ExecutionMode.ORT_PARALLEL
    par_opts.inter_op_num_threads = 2
    par = maskedmha.InferenceSession(model, sess_options=par_opts)
    want = seq.run(None, f)
    for _ in range(20):
        for a, b in zip(par.run(None, f), want):
            np.testing.assert_array_equal(a, b)


_GLOBAL_POOL_SCRIPT = r"""
import concurrent.futures as cf, sys
import numpy as np
import onnxruntime as ort
from onnxruntime.capi import _pybind_state as C
# One intra-op pool for the whole process, shared by every session that opts out of its own
# (as servers configure ORT); must be set before ORT's environment exists.
C.set_global_thread_pool_sizes(int(sys.argv[2]), 1)
import maskedmha
model, feeds_file = sys.argv[1], sys.argv[3]
data = np.load(feeds_file, allow_pickle=True)
jobs, want = [dict(d) for d in data["jobs"]], list(data["want"])
def session():
    o = ort.SessionOptions()
    o.use_per_session_threads = False
    return maskedmha.InferenceSession(model, sess_options=o)
shared = [session() for _ in range(3)]
with cf.ThreadPoolExecutor(max_workers=6) as ex:
    got = list(ex.map(lambda i: shared[i % 3].run(None, jobs[i])[0], range(len(jobs))))
for i, (a, b) in enumerate(zip(got, want)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6, err_msg=f"job {i}")
print("ok", len(jobs))
"""


@pytest.mark.parametrize("pool_threads", [2, 4])
def test_sessions_sharing_the_global_thread_pool(model_path, tmp_path, pool_threads):
    """Three sessions on ORT's process-wide intra-op pool (use_per_session_threads off), run from
    six threads at once: every call leads its own team over the one shared pool (workers may join
    any call), and the answers equal a single-threaded session's (computed here: a process with
    the global pool allows no session of its own threads)."""
    jobs = [feeds(make_inputs(CASE, *shape, seed=i)) for i, shape in
            enumerate([(1, 3, 3), (4, 70, 70), (2, 130, 130), (3, 17, 17)] * 6)]
    ref = maskedmha.InferenceSession(model_path, sess_options=_opts(1, "0"))
    want = np.empty(len(jobs), dtype=object)
    want[:] = [ref.run(None, f)[0] for f in jobs]
    arr = np.empty(len(jobs), dtype=object)
    arr[:] = jobs
    feeds_file = str(tmp_path / "jobs.npz")
    np.savez(feeds_file, jobs=arr, want=want)
    res = subprocess.run([sys.executable, "-c", _GLOBAL_POOL_SCRIPT, model_path, str(pool_threads),
                          feeds_file], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    assert res.stdout.strip().endswith(f"ok {len(jobs)}")
