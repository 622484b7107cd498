"""Peak memory of one alternative, measured in a fresh child process.

Method: the child imports its runtime (onnxruntime, or torch), runs a tiny unrelated model once
(one-time runtime initialisation belongs to the baseline), loads the inputs and the model
bytes (or the weights as numpy arrays for torch), then notes its resident set size (VmRSS) and
resets the kernel's high-water mark (writing 5 to /proc/self/clear_refs sets VmHWM to the current
RSS).  It then creates the session (or nn.MultiheadAttention), runs it ``runs`` times, and reports
VmHWM − baseline: the peak extra resident memory for the session (its copy of the weights, graph
and arena) and for the buffers of a run, including the output.  A fresh process per
(alternative, point) keeps allocator caches of earlier runs from hiding memory.  Where clear_refs
is not available, ru_maxrss (the peak since process start) is used instead, which can only
over-estimate by the import-time peak.

Run as a script by benchmarks/run.py:  python memory.py DIR ALT THREADS RUNS [LIBRARY]
DIR holds feeds.npz, and ALT.onnx or weights.npz + point.json."""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _ort_warmup(ort, threads: int) -> None:
    """Create and run a one-MatMul session first, so ORT's process-wide initialisation (logging
    environment, allocators, kernel registries) is in the baseline, not in the alternative's peak."""
    import numpy as np
    from onnx import TensorProto, helper
    g = helper.make_graph([helper.make_node("MatMul", ["a", "a"], ["b"])], "w",
                          [helper.make_tensor_value_info("a", TensorProto.FLOAT, [4, 4])],
                          [helper.make_tensor_value_info("b", TensorProto.FLOAT, [4, 4])])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    s = ort.InferenceSession(helper.make_model(g).SerializeToString(), opts,
                             providers=["CPUExecutionProvider"])
    s.run(None, {"a": np.ones((4, 4), np.float32)})


def child(d: str, alt: str, threads: int, runs: int, library: str | None) -> dict:
    import numpy as np
    feeds = {k: v for k, v in np.load(os.path.join(d, "feeds.npz")).items()}
    if alt == "torch":
        import torch
        torch.set_num_threads(threads)
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import graphs
        from grid import Point
        from alternatives import TorchRunner
        with open(os.path.join(d, "point.json")) as f:
            p = Point(**json.load(f))
        w = graphs.Weights(**{k: v for k, v in np.load(os.path.join(d, "weights.npz")).items()})
        make = lambda: TorchRunner(p, w, feeds)  # noqa: E731
        # first-use initialisation of torch's code path for this configuration, at a tiny size
        tiny = Point(2, 4, 8, 2, cross=p.cross, pad=p.pad, mask=p.mask)
        TorchRunner(tiny, graphs.make_weights(8), graphs.make_inputs(tiny))()
    else:
        import onnxruntime as ort
        with open(os.path.join(d, f"{alt}.onnx"), "rb") as f:
            model = f.read()

        def make():
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
            if library:
                opts.register_custom_ops_library(library)
            s = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
            names = {i.name for i in s.get_inputs()}
            fd = {k: v for k, v in feeds.items() if k in names}
            return lambda: s.run(["output"], fd)[0]

        _ort_warmup(ort, threads)
    base = _status_kb("VmRSS")
    exact = _reset_peak()
    run = make()
    for _ in range(runs):
        out = run()
    del out
    peak = _status_kb("VmHWM") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_mb": (peak - base) / 1024, "baseline_mb": base / 1024, "exact": exact}


def measure(d: str, alt: str, threads: int, runs: int = 3, library: str | None = None,
            timeout: float = 600) -> dict:
    """Run the child and return its report (or {"error": ...})."""
    cmd = [sys.executable, os.path.abspath(__file__), d, alt, str(threads), str(runs)]
    if library:
        cmd.append(library)
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": "timeout"}
    if r.returncode != 0:
        return {"error": (r.stderr.strip().splitlines() or ["exit %d" % r.returncode])[-1][:200]}
    return json.loads(r.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    d, alt, threads, runs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    print(json.dumps(child(d, alt, threads, runs, sys.argv[5] if len(sys.argv) > 5 else None)))
