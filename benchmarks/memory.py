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

The peak is also split at the end of creation (``create_peak_mb``: during session or module
creation; ``after_create_mb``: resident when it is created; ``run_peak_mb``: during the runs),
which shows whether the weights' copies or the run's buffers make the peak (docs/memory.md).
With ``--external`` the session is created from ALT_ext.onnx, whose initializers are external
data that ORT memory-maps, instead of from the model's bytes (benchmarks/memory_phases.py).

Run as a script by benchmarks/run.py:  python memory.py DIR ALT THREADS RUNS [LIBRARY] [--external]
DIR holds feeds.npz, and ALT.onnx (ALT_ext.onnx + its data) or weights.npz + point.json
(write_point_dir writes them)."""
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


def write_point_dir(d: str, p, w, feeds: dict, models: dict, external: bool = False) -> None:
    """Everything a child needs for point p: the inputs, the weights (for torch), and each
    alternative's model (also as ALT_ext.onnx + ALT.data, initializers as external data)."""
    import numpy as np
    import onnx
    np.savez(os.path.join(d, "feeds.npz"), **feeds)
    np.savez(os.path.join(d, "weights.npz"), w_in=w.w_in, b_in=w.b_in, w_out=w.w_out, b_out=w.b_out)
    with open(os.path.join(d, "point.json"), "w") as f:
        json.dump({k: getattr(p, k) for k in ("B", "L", "E", "H", "cross", "pad", "mask")}, f)
    for name, m in models.items():
        onnx.save(m, os.path.join(d, f"{name}.onnx"))
        if external:
            # size_threshold 1024: the weights go to the data file, small constants stay inline.
            onnx.save(m, os.path.join(d, f"{name}_ext.onnx"), save_as_external_data=True,
                      all_tensors_to_one_file=True, location=f"{name}.data", size_threshold=1024)


def child(d: str, alt: str, threads: int, runs: int, library: str | None,
          external: bool = False) -> dict:
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
        if external:
            model = os.path.join(d, f"{alt}_ext.onnx")  # ORT maps the data file next to it
        else:
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
    if exact:
        after_create = _status_kb("VmRSS")
        create_peak = _status_kb("VmHWM")  # read second: the high-water mark covers the RSS read
        _reset_peak()
    for _ in range(runs):
        out = run()
    del out
    if not exact:  # only the peak since process start is known
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return {"peak_mb": (peak - base) / 1024, "baseline_mb": base / 1024, "exact": False}
    run_peak = _status_kb("VmHWM")
    mb = lambda kb: (kb - base) / 1024  # noqa: E731
    return {"peak_mb": mb(max(create_peak, run_peak)), "create_peak_mb": mb(create_peak),
            "after_create_mb": mb(after_create), "run_peak_mb": mb(run_peak),
            "baseline_mb": base / 1024, "exact": True}


def measure(d: str, alt: str, threads: int, runs: int = 3, library: str | None = None,
            timeout: float = 600, external: bool = False) -> dict:
    """Run the child and return its report (or {"error": ...})."""
    cmd = [sys.executable, os.path.abspath(__file__), d, alt, str(threads), str(runs)]
    if library:
        cmd.append(library)
    if external:
        cmd.append("--external")
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": "timeout"}
    if r.returncode != 0:
        return {"error": (r.stderr.strip().splitlines() or ["exit %d" % r.returncode])[-1][:200]}
    return json.loads(r.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    argv = [a for a in sys.argv[1:] if a != "--external"]
    d, alt, threads, runs = argv[0], argv[1], int(argv[2]), int(argv[3])
    print(json.dumps(child(d, alt, threads, runs, argv[4] if len(argv) > 4 else None,
                           external="--external" in sys.argv[1:])))
