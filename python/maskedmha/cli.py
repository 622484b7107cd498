"""Command line: `maskedmha demo` and `maskedmha compare MODEL.onnx`."""
from __future__ import annotations

import argparse
import sys


def _sizes(pairs: list[str]) -> dict[str, int]:
    sizes = {}
    for p in pairs:
        name, _, value = p.partition("=")
        if not value.isdigit():
            raise SystemExit(f"--dim expects NAME=INT, got {p!r}")
        sizes[name] = int(value)
    return sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="maskedmha", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="export a small built-in Transformer fused and decomposed, run and compare")
    demo.add_argument("--out", help="folder for the .onnx files (default: a new temporary folder)")
    demo.add_argument("--exporter", choices=["dynamo", "torchscript"], default="dynamo")
    demo.add_argument("--runs", type=int, default=20, help="timed runs per graph (default 20)")
    demo.add_argument("--threads", type=int, default=None, help="ORT intra-op threads (default: ORT's)")

    cmp = sub.add_parser("compare", help="run MODEL fused (with the library) and decomposed (without)")
    cmp.add_argument("model", help="an .onnx file holding MaskedMHA nodes")
    cmp.add_argument("--inputs", help=".npz file with one array per graph input (default: random)")
    cmp.add_argument("--dim", action="append", default=[], metavar="NAME=INT",
                     help="size of a symbolic dimension for random inputs (repeatable; default 4)")
    cmp.add_argument("--runs", type=int, default=20)
    cmp.add_argument("--threads", type=int, default=None)

    args = parser.parse_args(argv)
    if args.command == "demo":
        import logging
        import warnings
        try:
            from .demo import run_demo
        except ModuleNotFoundError as exc:  # the demo exports with torch: the "export" extra
            top = (exc.name or "").split(".")[0]
            if top not in ("torch", "onnxscript"):
                raise
            from . import EXPORT_EXTRA_HINT
            print(f"maskedmha demo: needs {top}, which is not installed: {EXPORT_EXTRA_HINT}",
                  file=sys.stderr)
            return 2
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # "torchvision is not installed"
        with warnings.catch_warnings():
            # PyTorch's own deprecation chatter (nested tensors, mixed mask dtypes) would bury the
            # table; the demo's numbers are checked against PyTorch instead.
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", FutureWarning)
            print(run_demo(args.out, args.exporter, args.runs, args.threads))
        return 0

    import numpy as np
    from .compare import compare, format_table
    feeds = dict(np.load(args.inputs)) if args.inputs else None
    try:
        result = compare(args.model, feeds=feeds, runs=args.runs, threads=args.threads,
                         sizes=_sizes(args.dim))
    except (ValueError, FileNotFoundError) as exc:
        print(f"maskedmha compare: {exc}", file=sys.stderr)
        return 2
    print(format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
