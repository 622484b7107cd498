"""Whole encoders: one nn.TransformerEncoderLayer and a 6-layer nn.TransformerEncoder on padded
batches, PyTorch's nested-tensor fast path against the ONNX Runtime paths, interleaved.

    python benchmarks/encoder.py [--grid quick|full|tiny] [--threads 2] [--out DIR]

| name | what runs |
|---|---|
| `torch_fast` | PyTorch eager, eval, no_grad, batch_first, `enable_nested_tensor=True`: the encoder drops padded tokens (nested tensors) in every op; a lone layer uses the fused `_transformer_encoder_layer_fwd` |
| `torch_slow` | the same module with `torch.backends.mha.set_fastpath_enabled(False)`: the documented per-op path, every padded row computed |
| `fused` | `maskedmha.export` (default: dense, attention as one MaskedMHA node) on ORT with the library |
| `packed` | `maskedmha.export(..., remove_padding=True)`: valid tokens only, through every layer (included when this maskedmha has the keyword) |
| `ort_stock` | `torch.onnx.export` of the same module (PyTorch's documented path, as it exports), ORT graph optimization level ALL |
| `ort_transformers` | that stock model through `onnxruntime.transformers.optimizer` (model_type bert) first, then ORT level ALL |

Every output is compared with `torch_fast` on the valid (unpadded) positions (max |diff| / max
|ref| > 1e-4: FAIL, not timed); padded positions differ by design (the fast path returns 0 there
for the encoder, the dense paths compute them).  Timing as run.py: every round runs each
alternative once in a new shuffled order; ratio = alternative median / packed median (or fused
when packed is absent).  ORT pools do not spin between runs.  dim_feedforward = 4 d, ReLU,
post-norm, dropout 0 (the BERT layout).  Writes DIR/latest.json and DIR/latest.md.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import inspect
import io
import json
import os
import sys
import tempfile
import warnings

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as run.py: torch threads must not spin

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import alternatives as A  # noqa: E402
import graphs  # noqa: E402
import timing  # noqa: E402

REL_TOL = 1e-4
ALTERNATIVES = ["packed", "fused", "ort_stock", "ort_transformers", "torch_fast", "torch_slow"]


class Case:
    def __init__(self, layers: int, E: int, H: int, B: int, L: int, pad: float):
        self.layers, self.E, self.H, self.B, self.L, self.pad = layers, E, H, B, L, pad

    @property
    def label(self) -> str:
        what = "layer" if self.layers == 0 else f"{self.layers}-layer encoder"
        return f"{what} {self.B}x{self.L} E{self.E}/H{self.H} pad{int(self.pad * 100)}%"

    def as_dict(self) -> dict:
        return {"layers": self.layers, "E": self.E, "H": self.H, "B": self.B, "L": self.L,
                "pad": self.pad, "label": self.label}


def _grid(name: str) -> list[Case]:
    """layers 0: one nn.TransformerEncoderLayer called on its own; 6: nn.TransformerEncoder."""
    if name == "tiny":
        return [Case(0, 32, 4, 3, 16, 0.25), Case(2, 32, 4, 3, 16, 0.5)]
    if name == "full":
        return [Case(n, E, H, B, L, pad) for n in (0, 6) for E, H in ((512, 8), (768, 12))
                for B, L in ((8, 128), (4, 512), (8, 1024)) for pad in (0.25, 0.5)]
    return [Case(0, 768, 12, 8, 128, 0.25), Case(0, 512, 8, 8, 1024, 0.5),
            Case(6, 512, 8, 8, 128, 0.25), Case(6, 768, 12, 8, 128, 0.5),
            Case(6, 768, 12, 4, 512, 0.25), Case(6, 512, 8, 4, 512, 0.5)]


GRIDS = ("quick", "full", "tiny")


class Model(nn.Module):
    """forward(x, src_key_padding_mask) of a lone layer or an encoder of `layers` layers."""

    def __init__(self, c: Case, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        layer = nn.TransformerEncoderLayer(c.E, c.H, dim_feedforward=4 * c.E, dropout=0.0,
                                           batch_first=True)
        self.body = layer if c.layers == 0 else nn.TransformerEncoder(
            layer, num_layers=c.layers, enable_nested_tensor=True)
        with torch.no_grad():  # non-zero biases and norm affines, as trained weights have
            for name, p in self.body.named_parameters():
                if name.endswith("bias") or "norm" in name:
                    p.add_(0.1 * torch.randn_like(p))
        self.eval()

    def forward(self, x, src_key_padding_mask):
        return self.body(x, src_key_padding_mask=src_key_padding_mask)


def make_inputs(c: Case, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """x (B, L, E) and a suffix padding mask (True = pad), per item over [pad/2, 3 pad/2]."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(c.B, c.L, c.E, generator=g)
    lengths = torch.from_numpy(graphs.valid_lengths(c.B, c.L, c.pad))
    return x, torch.arange(c.L)[None, :] >= lengths[:, None]


def has_remove_padding() -> bool:
    """Whether this maskedmha.export takes remove_padding (the package-level function forwards
    **kwargs to maskedmha/export.py's export, whose signature names its keywords)."""
    import importlib
    try:
        module = importlib.import_module("maskedmha.export")
        return "remove_padding" in inspect.signature(module.export).parameters
    except (ImportError, AttributeError, TypeError, ValueError):
        return False


@contextlib.contextmanager
def _quiet():
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


@contextlib.contextmanager
def slow_path():
    old = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(old)


def export_model(name: str, model: Model, inputs, exporter: str, c: Case) -> bytes:
    """The ONNX file of an ORT alternative, as bytes."""
    import maskedmha
    names = ["x", "src_key_padding_mask"]
    with _quiet(), tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "m.onnx")
        if name in ("fused", "packed"):
            kw = {"remove_padding": True} if name == "packed" else {}
            maskedmha.export(model, inputs, path, input_names=names, output_names=["output"],
                             exporter=exporter, **kw)
        else:
            with torch.no_grad(), slow_path():  # what a stock export records (no nested tensors)
                torch.onnx.export(model, inputs, path, input_names=names, output_names=["output"],
                                  dynamo=exporter == "dynamo", opset_version=18)
            if name == "ort_transformers":
                from onnxruntime.transformers.optimizer import optimize_model
                opt = optimize_model(path, model_type="bert", num_heads=c.H, hidden_size=c.E,
                                     opt_level=0)
                opt.save_model_to_file(path)
        return onnx.load(path, load_external_data=True).SerializeToString()


class OrtEncoder:
    def __init__(self, model_bytes: bytes, feeds: dict, threads: int, library: str | None):
        opts = A.session_options(threads, False, library)
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])
        names = {i.name for i in self.session.get_inputs()}
        self.feeds = {k: v for k, v in feeds.items() if k in names}
        self.ops = sorted({f"{n.domain + '::' if n.domain else ''}{n.op_type}"
                           for n in onnx.load_from_string(model_bytes).graph.node
                           if n.op_type in ("MaskedMHA", "Attention", "MultiHeadAttention")})

    def __call__(self) -> np.ndarray:
        return self.session.run(None, self.feeds)[0]


class TorchEncoder:
    def __init__(self, model: Model, inputs, slow: bool):
        self.model, self.inputs, self.slow = model, inputs, slow

    def __call__(self) -> np.ndarray:
        with torch.no_grad(), (slow_path() if self.slow else contextlib.nullcontext()):
            return self.model(*self.inputs).numpy()


def check(out: np.ndarray, ref: np.ndarray, valid: np.ndarray) -> tuple[bool, float]:
    """On the valid positions only: (max |diff| / max |ref| <= REL_TOL, that relative diff)."""
    if out.shape != ref.shape:
        return False, float("inf")
    d = np.abs(out[valid].astype(np.float64) - ref[valid])
    if not np.all(np.isfinite(d)):
        return False, float("nan")
    rel = float(d.max()) / max(float(np.abs(ref[valid]).max()), 1e-30)
    return rel <= REL_TOL, rel


def bench_case(c: Case, alts: list[str], threads: int, budget: float, exporter: str,
               seed: int = 0) -> dict:
    model = Model(c, seed)
    x, kpm = make_inputs(c, seed + 1)
    feeds = {"x": x.numpy(), "src_key_padding_mask": kpm.numpy()}
    valid = ~kpm.numpy()
    library = A.library_path()
    runners, res = {}, {}
    ref = TorchEncoder(model, (x, kpm), slow=False)()
    for name in alts:
        try:
            if name == "packed" and not has_remove_padding():
                res[name] = {"status": "n/a", "note": "this maskedmha.export has no remove_padding"}
                continue
            if name.startswith("torch"):
                runner = TorchEncoder(model, (x, kpm), slow=name == "torch_slow")
            else:
                runner = OrtEncoder(export_model(name, model, (x, kpm), exporter, c), feeds, threads,
                                    library if name in ("fused", "packed") else None)
            ok, rel = check(runner(), ref, valid)
        except Exception as exc:  # noqa: BLE001 - reported, never timed
            res[name] = {"status": "error", "note": f"{type(exc).__name__}: {str(exc).strip()[:200]}"}
            continue
        res[name] = {"status": "ok" if ok else "FAIL", "rel_diff": rel}
        if getattr(runner, "ops", None) is not None:
            res[name]["attention_ops"] = runner.ops
        if ok:
            runners[name] = runner
    samples = timing.interleaved(runners, budget_s=budget, min_reps=5, max_reps=30, seed=seed)
    for name, ms in samples.items():
        res[name].update(timing.summary(ms))
    base = next((b for b in ("packed", "fused") if "median_ms" in res.get(b, {})), None)
    if base:
        for r in res.values():
            if "median_ms" in r:
                r["vs_" + base] = r["median_ms"] / res[base]["median_ms"]
    return {"case": c.as_dict(), "base": base, "alts": res}


def markdown(meta: dict, rows: list[dict]) -> str:
    alts = meta["alternatives"]
    out = [f"Run {meta['date']} · CPU {meta['cpu']}, fused kernel ISA {meta['kernel_isa']} · "
           f"onnxruntime {meta['onnxruntime']} · torch {meta['torch']} · {meta['threads']} threads · "
           f"exporter {meta['exporter']} · {meta['budget_s']} s per case", "",
           "Median ms (alternative / packed, or / fused where packed is absent); checked against "
           "torch_fast on valid positions (rel. 1e-4).", "",
           "| case | " + " | ".join(alts) + " |", "|---|" + "---:|" * len(alts)]
    for r in rows:
        cells = []
        for a in alts:
            x = r["alts"].get(a, {})
            if "median_ms" in x:
                cells.append(f"{x['median_ms']:.1f} ({x['vs_' + r['base']]:.2f})")
            else:
                cells.append(x.get("status", "–"))
        out.append(f"| {r['case']['label']} | " + " | ".join(cells) + " |")
    notes = {f"{a}: {x['note']}" for r in rows for a, x in r["alts"].items() if x.get("note")}
    if notes:
        out += ["", "Notes: " + "; ".join(sorted(notes))]
    ops = {f"{a}: {', '.join(x['attention_ops']) or 'none'}" for r in rows for a, x in r["alts"].items()
           if "attention_ops" in x}
    if ops:
        out += ["", "Attention nodes in the ORT graphs: " + "; ".join(sorted(ops))]
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--grid", choices=GRIDS, default="quick")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--budget", type=float, default=4.0, help="seconds of timed runs per case")
    ap.add_argument("--alternatives", default=",".join(ALTERNATIVES))
    ap.add_argument("--exporter", choices=["torchscript", "dynamo"], default="torchscript",
                    help="for maskedmha.export and the stock export alike (torchscript: faster)")
    ap.add_argument("--filter", default="", help="only cases whose label contains this text")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "encoder"))
    args = ap.parse_args(argv)
    alts = [a.strip() for a in args.alternatives.split(",") if a.strip()]
    unknown = set(alts) - set(ALTERNATIVES)
    if unknown:
        ap.error(f"unknown alternatives: {sorted(unknown)}")
    torch.set_num_threads(args.threads)
    from run import _cpu_model, _kernel_isa
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "cpu": _cpu_model(), "cores": os.cpu_count(), "kernel_isa": _kernel_isa(),
            "onnxruntime": ort.__version__, "torch": torch.__version__, "threads": args.threads,
            "exporter": args.exporter, "budget_s": args.budget, "alternatives": alts,
            "remove_padding_available": has_remove_padding()}
    os.makedirs(args.out, exist_ok=True)
    rows = []
    for c in _grid(args.grid):
        if args.filter not in c.label:
            continue
        r = bench_case(c, alts, args.threads, args.budget, args.exporter)
        rows.append(r)
        print(f"{c.label:<40} " + "  ".join(
            f"{a} {r['alts'][a]['median_ms']:.1f}" if "median_ms" in r["alts"].get(a, {})
            else f"{a} {r['alts'].get(a, {}).get('status', '-')}" for a in alts), flush=True)
        with open(os.path.join(args.out, "latest.json"), "w") as f:
            json.dump({"meta": meta, "results": rows}, f, indent=1)
    with open(os.path.join(args.out, "latest.md"), "w") as f:
        f.write(markdown(meta, rows))
    print(f"wrote {args.out}/latest.json, latest.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
