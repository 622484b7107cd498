"""The kernel's thread team (ops/team.h): one pool section per call, phases handed to helpers."""
from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import onnxruntime as ort
import pytest

import maskedmha
from mha_cases import CASES, export_case, feeds, make_inputs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _build(out: str, sanitize: bool) -> bool:
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if not cxx:
        pytest.skip("no C++ compiler")
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
