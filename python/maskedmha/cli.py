"""The `maskedmha` command.

User errors (a bad file, a wrong option value) are one line on stderr starting with
"maskedmha: " and exit status 2; a runtime failure (the library cannot load, ORT refuses or fails
a graph) is one line and exit status 1.  Only `demo` needs torch (tests/test_no_torch.py runs the
others in a venv without it)."""
from __future__ import annotations

import argparse
import os
import sys

from .modelfile import UsageError

DESCRIPTION = """\
nn.MultiheadAttention as ONE fused ONNX node (com.maskedmha::MaskedMHA), run by a C++ ONNX
Runtime kernel, with a standard-op fallback in the same file for a stock ONNX Runtime."""
EPILOG = """`maskedmha COMMAND --help` describes each command.  `demo` needs torch:
pip install "maskedmha[export]"."""


class _Parser(argparse.ArgumentParser):
    """argparse's errors are a usage block plus a line; ours are the one line users read."""

    def error(self, message):  # noqa: D401 - argparse API
        sub = self.prog.split(" ", 1)[1] + ": " if " " in self.prog else ""
        self.exit(2, f"maskedmha: {sub}{message} (see `{self.prog} --help`)\n")


def _whole_number(minimum: int, bound_text: str):
    """An argparse type: a whole number >= minimum, else one line saying ``bound_text``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{bound_text}, got {value}")
        return value
    return parse


_at_least_1 = _whole_number(1, "must be at least 1")
_at_least_0 = _whole_number(0, "must be 0 or more")


def _size(text: str) -> tuple[str, int]:
    name, eq, value = text.partition("=")
    if not eq or not name or not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected NAME=INT with INT >= 1, got {text!r}")
    return name, int(value)


def _add_run_options(parser: argparse.ArgumentParser, runs_help: str) -> None:
    """--runs and --threads, for the commands that time ONNX Runtime sessions."""
    parser.add_argument("--runs", type=_at_least_1, default=20, metavar="N", help=runs_help)
    parser.add_argument("--threads", type=_at_least_1, default=None, metavar="N",
                        help="ONNX Runtime intra-op threads (default: ORT's choice)")


def _add_in_out(parser: argparse.ArgumentParser, in_help: str, out_help: str) -> None:
    """IN.onnx and OUT.onnx, for the commands that write a changed copy of a model."""
    parser.add_argument("input", metavar="IN.onnx", help=in_help)
    parser.add_argument("output", metavar="OUT.onnx", help=out_help)


def _parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(prog="maskedmha", description=DESCRIPTION, epilog=EPILOG,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"maskedmha {__version__}",
                        help="print the package version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                title="commands", help="one of:")

    demo = sub.add_parser(
        "demo", help="export a small built-in Transformer fused and decomposed, run, compare (needs torch)",
        description="Export a small encoder-decoder nn.Transformer (padding + causal masks) fused "
                    "and decomposed, run both at a shape other than the export shape, check them "
                    "against PyTorch and print the compare table.  Needs the export extra.")
    demo.add_argument("--out", metavar="DIR",
                      help="folder for the .onnx files (default: a new temporary folder)")
    demo.add_argument("--exporter", choices=["dynamo", "torchscript"], default="dynamo",
                      help="torch.onnx exporter to use (default: dynamo)")
    _add_run_options(demo, "timed runs per graph (default 20)")

    cmp = sub.add_parser(
        "compare", help="run MODEL fused (with the library) and decomposed (stock ORT), side by side",
        description="Run MODEL fused (our kernel) and decomposed (standard ops on stock ONNX "
                    "Runtime) on the same inputs: node counts, op histograms, the largest "
                    "difference, latency min/median/max and the speed-up.  The inputs used are "
                    "printed first.  Random inputs: floats are normal, inputs named *mask* are "
                    "padding masks (never a whole row), integers are in [0, smallest axis of that "
                    "input) so index inputs stay in range; give real inputs with --inputs.")
    cmp.add_argument("model", metavar="MODEL.onnx", help="an ONNX file holding MaskedMHA nodes")
    cmp.add_argument("--inputs", metavar="FILE.npz",
                     help="numpy.savez file with one array per graph input, named like the "
                          "inputs (default: random inputs)")
    cmp.add_argument("--dim", action="append", default=[], type=_size, metavar="NAME=INT",
                     help="size of the symbolic dimension NAME in random inputs (repeatable; "
                          "others are 4)")
    cmp.add_argument("--original", metavar="STOCK.onnx",
                     help="compare against this file (the stock export MODEL was fused from "
                          "by `maskedmha fuse`) instead of MODEL's decomposition")
    _add_run_options(cmp, "timed runs per graph, interleaved (default 20)")

    info = sub.add_parser(
        "info", help="MaskedMHA nodes, fallback functions, IR/opsets, which runtimes run MODEL",
        description="Show MODEL's IR version and opsets, every MaskedMHA node's configuration, its "
                    "fallback functions, and which ONNX Runtime releases run it with and without "
                    "the library; then try both on this onnxruntime.")
    info.add_argument("model", metavar="MODEL.onnx", help="an ONNX file")
    info.add_argument("--no-check", action="store_true",
                      help="do not create test sessions with this onnxruntime (large models)")

    sub.add_parser(
        "doctor", help="versions, library path, whether it loads into this onnxruntime, kernel ISA",
        description="Check this installation: package, Python, onnxruntime, onnx, numpy and torch "
                    "versions, the library's path, whether it registers into this onnxruntime "
                    "and runs a node, and the instruction set the kernel will use "
                    "(MASKEDMHA_ISA=generic|avx2 lowers it).  Exit status 1 if models cannot run.")

    opt = sub.add_parser(
        "optimize", help="save an ORT-optimized copy of IN that still runs without the library",
        description="Optimize IN with ONNX Runtime (the library registered), attach the fallback "
                    "functions that ORT's saved file lacks, and write OUT.")
    _add_in_out(opt, "the model to optimize", "where to write the optimized model")
    opt.add_argument("--level", choices=["basic", "extended"], default="extended",
                     help="ORT graph optimization level (default extended; 'all' is not offered: "
                          "its layouts are specific to the machine)")

    att = sub.add_parser(
        "attach", help="add the standard-op fallback functions to IN's MaskedMHA nodes, write OUT",
        description="Re-attach the standard-op fallback functions to every MaskedMHA node of IN "
                    "(e.g. a file saved by a tool that dropped them) so OUT runs on a stock ONNX "
                    "Runtime as well.  Existing fallback functions are replaced.")
    _add_in_out(att, "a model with MaskedMHA nodes", "where to write the result")

    fus = sub.add_parser(
        "fuse", help="replace every nn.MultiheadAttention subgraph of a stock export by MaskedMHA",
        description="Find every nn.MultiheadAttention subgraph in IN (a file torch.onnx.export "
                    "wrote the stock way, TorchScript or dynamo exporter) and replace it with "
                    "one MaskedMHA node carrying its fallback function; the sizes the tracer "
                    "baked into its Reshapes go with it.  A replacement is kept only when the "
                    "rewritten file gives IN's numbers (1e-5 relative) on random inputs.  Needs "
                    "no torch.")
    _add_in_out(fus, "the stock-exported model", "where to write the fused model")
    fus.add_argument("--report", action="store_true",
                     help="print a table of every attention-like subgraph: fused, or left "
                          "unchanged and why")

    tri = sub.add_parser(
        "triton", help="write a Triton Inference Server model repository entry for MODEL",
        description="Write REPO_DIR/NAME/config.pbtxt, REPO_DIR/NAME/1/model.onnx and the "
                    "custom-op library REPO_DIR/NAME/libmaskedmha_ops.so for Triton's ONNX "
                    "Runtime backend.  Inputs, outputs, data types and dims come from MODEL; a "
                    "leading axis named like a batch axis on every input and output becomes "
                    "max_batch_size (else max_batch_size 0 and full dims).  docs/serving.md "
                    "shows how to serve it.")
    tri.add_argument("model", metavar="MODEL.onnx", help="the ONNX file to serve")
    tri.add_argument("repo", metavar="REPO_DIR",
                     help="the model repository (created if missing)")
    tri.add_argument("--name", metavar="NAME",
                     help="the model's name in Triton, its folder (default: MODEL's file stem)")
    tri.add_argument("--max-batch-size", type=_at_least_0, default=None, metavar="N",
                     help="largest batch Triton forms (default 4 when the model has a batch "
                          "axis; 0 turns batching off)")
    tri.add_argument("--batch-dim", metavar="SYMBOL",
                     help="the model's dimension name to batch along, when its name does not "
                          "contain 'batch' (it must be axis 0 of every input and output)")
    tri.add_argument("--dynamic-batching", action="store_true",
                     help="let Triton combine concurrent requests into one batch")
    tri.add_argument("--instances", type=_at_least_1, default=1, metavar="N",
                     help="model instances (ONNX Runtime sessions) the server runs (default 1)")
    tri.add_argument("--threads", type=_at_least_1, default=None, metavar="N",
                     help="intra-op threads per instance (default: ONNX Runtime's choice, "
                          "all cores)")
    where = tri.add_mutually_exclusive_group()
    where.add_argument("--server-repository", metavar="DIR",
                       help="absolute path at which the server sees REPO_DIR, e.g. /models for "
                            "`docker run -v $PWD/REPO_DIR:/models` (default: REPO_DIR's "
                            "absolute path here)")
    where.add_argument("--library-path", metavar="PATH_IN_SERVER",
                       help="op_library_filename exactly as given: an absolute path in the "
                            "server, or a bare file name found on its library path")
    tri.add_argument("--force", action="store_true",
                     help="replace an existing REPO_DIR/NAME (the whole folder)")
    return parser


def _check_output_path(path: str) -> None:
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise UsageError(f"output {path} is a directory")
    if not os.path.isdir(parent):
        raise UsageError(f"output {path}: folder {parent} does not exist")


def _compare(args) -> int:
    from .compare import compare, format_table
    from .inputs import check_feeds, check_sizes, load_feeds
    from .modelfile import load_model, require_mha_nodes

    sizes = dict(args.dim)
    model = load_model(args.model)
    require_mha_nodes(model, args.model, "compare")
    if args.inputs:
        if sizes:
            raise UsageError("--dim sets sizes of random inputs; it has no effect with --inputs")
        feeds = load_feeds(args.inputs)
        check_feeds(model, feeds, args.inputs)
    else:
        check_sizes(model, sizes)
        feeds = None
    from ._library import LibraryNotFoundError
    from .session import LibraryLoadError
    try:
        if args.original:  # `maskedmha fuse`'s output against its input
            from .fuse import compare_with_original, format_pair
            result = compare_with_original(model, load_model(args.original), feeds=feeds,
                                           runs=args.runs, threads=args.threads, sizes=sizes)
            format_table = format_pair  # noqa: F811 - the right-hand column is the original
        else:
            result = compare(model, feeds=feeds, runs=args.runs, threads=args.threads,
                             sizes=sizes)
    except (UsageError, LibraryNotFoundError, LibraryLoadError):
        raise
    except Exception as exc:  # noqa: BLE001 - ORT's Fail/InvalidArgument (not RuntimeErrors),
        # decompose's ValueErrors: a graph that fails on these inputs stays one line.
        raise _RuntimeFailure(f"running {args.model} failed: {' '.join(str(exc).split())[:500]}"
                              + ("" if args.inputs else " (random inputs; give real ones with --inputs)")) from None
    print(format_table(result))
    return 0


def _info(args) -> int:
    from .info import describe
    from .modelfile import load_model

    model = load_model(args.model, load_external_data=False)  # weights are not needed
    print(describe(model, args.model, check=not args.no_check))
    return 0


def _doctor(args) -> int:
    from .doctor import report

    text, ok = report()
    print(text)
    return 0 if ok else 1


def _optimize(args) -> int:
    from .info import fallback_functions
    from .modelfile import load_model, mha_nodes
    from .optimize import optimize

    before = load_model(args.input)
    _check_output_path(args.output)
    try:
        after = optimize(before, args.output, level=args.level)
    except Exception as exc:  # noqa: BLE001 - ORT's Fail/InvalidGraph, library errors: one line
        raise _RuntimeFailure(f"optimizing {args.input} failed: {' '.join(str(exc).split())[:500]}") from None
    bodies, _ = fallback_functions(after)
    print(f"wrote {args.output}: {len(before.graph.node)} -> {len(after.graph.node)} nodes "
          f"(level {args.level}), {len(mha_nodes(after))} MaskedMHA nodes, {len(bodies)} fallback "
          f"function(s) attached, IR {after.ir_version}")
    return 0


def _attach(args) -> int:
    import onnx

    from .info import fallback_functions
    from .modelfile import load_model, mha_nodes, require_mha_nodes

    model = load_model(args.input)
    require_mha_nodes(model, args.input, "attach")
    _check_output_path(args.output)
    had = sum(map(len, fallback_functions(model)))  # bodies and guards it carried
    from maskedmha.symbolic.attach import attach_functions

    try:
        attach_functions(model)
    except ValueError as exc:  # the file's nodes cannot be typed or are malformed
        raise UsageError(f"{args.input}: {str(exc).removeprefix('maskedmha: ')}") from None
    onnx.save(model, args.output)
    bodies, guard_functions = fallback_functions(model)
    guards = len(guard_functions)
    print(f"wrote {args.output}: {len(bodies)} fallback function(s) for {len(mha_nodes(model))} "
          "MaskedMHA node(s)"
          + (" (told apart by overload" + (f", plus {guards} guard functions)" if guards else ")")
             if any(f.overload for f in bodies) else "")
          + (f", replacing {had} the file carried" if had else "") + f", IR {model.ir_version}")
    return 0


class _RuntimeFailure(Exception):
    """Not the user's mistake (exit status 1), still one line."""


def _demo(args) -> int:
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


def _triton(args) -> int:
    from . import triton
    from .info import library_summary
    from .modelfile import load_model

    model = load_model(args.model, load_external_data=False)  # copied as files, not parsed
    name = args.name if args.name is not None else \
        os.path.splitext(os.path.basename(args.model))[0]
    triton.check_name(name)
    cfg = triton.make_config(
        model, name, source=args.model,
        library_path=triton.library_path_in_server(args.repo, name, args.library_path,
                                                   args.server_repository),
        max_batch_size=args.max_batch_size, batch_dim=args.batch_dim, instances=args.instances,
        threads=args.threads, dynamic_batching=args.dynamic_batching)
    entry = triton.write_entry(args.model, args.repo, cfg, model, force=args.force)
    print(triton.summary(cfg, entry, args.repo, library_summary(model)))
    return 0


def _fuse(args) -> int:
    from .fuse import fuse_file

    _check_output_path(args.output)
    print(fuse_file(args.input, args.output, report=args.report))
    return 0


COMMANDS = {"demo": _demo, "compare": _compare, "fuse": _fuse, "info": _info, "doctor": _doctor,
            "optimize": _optimize, "attach": _attach, "triton": _triton}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except UsageError as exc:
        print(f"maskedmha: {exc}", file=sys.stderr)
        return 2
    except _RuntimeFailure as exc:
        print(f"maskedmha: {exc}", file=sys.stderr)
        return 1
    except (FileNotFoundError, RuntimeError) as exc:
        # LibraryNotFoundError (a FileNotFoundError) and LibraryLoadError (a RuntimeError):
        # the installation, not the user's input; `maskedmha doctor` says more.
        print(f"maskedmha: {' '.join(str(exc).split())} (`maskedmha doctor` checks the "
              "installation)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
