"""`autofuse` on the command line: a thin shell over `autofuse.api`.

Errors autofuse raises on purpose print as one line (`autofuse: error: ...`) and
exit with status 2; `--debug` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Sequence

import numpy as np

EPILOG = """examples:
  autofuse run zoo:resnet50
  autofuse run model.onnx --inputs x.npz --output y.npz
  autofuse bench zoo:resnet50 zoo:bert_base --compare ort
  autofuse conformance

models: a path to an .onnx file, or a zoo name (autofuse zoo lists them)."""


def _parse_shapes(items: Sequence[str]) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for item in items or ():
        name, sep, dims = item.rpartition("=")
        try:
            if not sep or not name:
                raise ValueError
            shapes[name] = tuple(int(d) for d in dims.lower().split("x"))
        except ValueError:
            raise SystemExit(f"autofuse: error: --shape {item!r}: expected NAME=DxDx... (e.g. input_ids=1x128)")
    return shapes


def _parse_rewrites(value: str | None) -> tuple[str, ...]:
    return tuple(f.strip() for f in value.split(",") if f.strip()) if value else ()


def _load_inputs(path: str | None, model: Any, seed: int) -> dict[str, np.ndarray]:
    from autofuse.api import example_inputs
    from autofuse.errors import AutofuseError

    if path is None:
        return example_inputs(model, seed=seed)
    try:
        with np.load(path, allow_pickle=False) as data:
            inputs = {k: data[k] for k in data.files}
    except Exception as error:
        raise AutofuseError(f"--inputs {path}: cannot read it as .npz: {error}") from None
    missing = set(model.graph.inputs) - set(inputs)
    if missing:
        raise AutofuseError(f"--inputs {path}: no array for model input(s) {sorted(missing)}")
    return inputs


def cmd_run(args: argparse.Namespace) -> int:
    from autofuse.api import compile_model, import_onnx

    model = import_onnx(args.model, shapes=_parse_shapes(args.shape))
    executable = compile_model(model, rewrites=_parse_rewrites(args.rewrite))
    inputs = _load_inputs(args.inputs, model, args.seed)
    outputs = executable(inputs)
    print(f"{args.model}: compiled in {executable.compile_seconds:.2f} s")
    for name, value in zip(model.graph.outputs, outputs):
        value = np.asarray(value)
        stats = ""
        if value.size and value.dtype.kind in "fiu":
            stats = f"  min {value.min():.4g}  max {value.max():.4g}  mean {value.astype(np.float64).mean():.4g}"
        print(f"  {name}: {value.dtype} {list(value.shape)}{stats}")
    if args.output:
        np.savez(args.output, **dict(zip(model.graph.outputs, outputs)))
        print(f"outputs written to {args.output}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from autofuse.bench import bench_model

    rows = []
    for name in args.models:
        row = bench_model(name, shapes=_parse_shapes(args.shape), compare=args.compare,
                          plans=args.plans, rewrites=_parse_rewrites(args.rewrite),
                          seconds=args.seconds, seed=args.seed,
                          progress=lambda msg: print(msg, file=sys.stderr, flush=True))
        rows.append(row)
        if not args.json:
            print(format_table([row]), flush=True)
    if args.json:
        print(json.dumps([r.as_dict() for r in rows], indent=2))
    elif len(rows) > 1:
        print("\nsummary")
        print(format_table(rows))
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from autofuse.api import read_onnx, rewrite_model
    from autofuse.fusion.summary import summarize
    from autofuse.settle import settle

    raw = read_onnx(args.model)
    model = settle(raw, _parse_shapes(args.shape))
    if args.rewrite:
        model = rewrite_model(model, _parse_rewrites(args.rewrite)).model
    summary, _ = summarize(model, len(raw.graph.nodes), count_kernels=not args.no_compile)
    if args.json:
        print(json.dumps(summary.as_dict(), indent=2))
        return 0
    print(f"{args.model}: {summary.onnx_ops} ONNX ops, {summary.compute_ops} compute ops after folding constants" + (" and rewrites" if args.rewrite else ""))
    print("ops per mapping type: " + ", ".join(f"{k} {v}" for k, v in summary.ops_per_mapping.items()))
    print(f"fused groups: {len(summary.groups)}  (fusion rate {summary.fusion_rate:.2f} ONNX ops per group)")
    for k, (group, kind) in enumerate(zip(summary.groups, summary.group_types)):
        print(f"  [{k}] {kind:<13} " + " + ".join(group))
    if summary.kernels_plan is not None:
        print(f"compiled kernels: plan {summary.kernels_plan}, XLA's own fusion {summary.kernels_xla}, "
              f"op by op {summary.kernels_op_by_op}")
    print(f"yellow decisions ({len(summary.yellow_decisions)}, left to the search; default shown):")
    for d in summary.yellow_decisions:
        print(f"  {d['key']}  {d['edge']}  {'fuse' if d['fuse'] else 'split'}")
    return 0


def cmd_conformance(args: argparse.Namespace) -> int:
    from autofuse.conformance import main

    return main(["--show-failures"] if args.show_failures else [])


def cmd_zoo(args: argparse.Namespace) -> int:
    from autofuse.datasets.zoo import list_models

    for name in list_models():
        print(name)
    return 0


def format_table(rows: Sequence[Any]) -> str:
    """Bench rows as an aligned text table: one line per model and contender."""
    lines = [f"{'model':<20} {'contender':<28} {'median':>11} {'spread':>7} {'vs ort':>7} {'kernels':>8} {'max rel diff':>13}"]
    for r in rows:
        for k, name in enumerate(r.median_ms):
            ratio = r.ratio_of(name)
            diff = r.max_rel_diff.get(name)
            lines.append(
                f"{r.model if k == 0 else '':<20} {name:<28} {r.median_ms[name]:>8.2f} ms {r.spread_pct[name]:>6.1f}%"
                f" {f'{ratio:.2f}' if ratio else '-':>7} {r.kernels.get(name, '-'):>8}"
                f" {f'{diff:.1e}' if diff is not None else '-':>13}"
            )
        lines.append(f"{'':<20} compile {r.compile_s:.1f} s (XLA default), {r.threads} threads")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autofuse",
        description="Make ONNX models run faster through XLA: import, rewrite, fuse, tune, measure.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add_model_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--rewrite", metavar="FAMILIES",
                       help="apply rewrite families first, comma-separated: folding,layout")
        p.add_argument("--shape", action="append", metavar="NAME=DxD...",
                       help="bind an input's dynamic dimensions (repeatable)")
        p.add_argument("--seed", type=int, default=0, help="seed for random inputs (default 0)")

    run = sub.add_parser("run", help="compile a model with XLA and run it once")
    run.add_argument("model", help="an .onnx file or a zoo name such as zoo:resnet50")
    run.add_argument("--inputs", metavar="X.npz", help="inputs by name (default: seeded random)")
    run.add_argument("--output", "-o", metavar="Y.npz", help="write the outputs here")
    add_model_options(run)
    run.set_defaults(func=cmd_run)

    bench = sub.add_parser("bench", help="time autofuse against onnxruntime side by side")
    bench.add_argument("models", nargs="+", help=".onnx files or zoo names")
    bench.add_argument("--compare", choices=["ort", "none"], default="ort",
                       help="baseline to run in the same process (default: ort, ORT_ENABLE_ALL)")
    bench.add_argument("--seconds", type=float, default=5.0, help="timing budget per contender (default 5)")
    bench.add_argument("--plans", action="store_true",
                       help="also time the DNNFusion plan and op by op (kernel counts included)")
    bench.add_argument("--json", action="store_true", help="print results as JSON")
    add_model_options(bench)
    bench.set_defaults(func=cmd_bench)

    analyze = sub.add_parser("analyze", help="DNNFusion analysis: mapping types, fusion plan, kernel counts")
    analyze.add_argument("model", help="an .onnx file or a zoo name")
    analyze.add_argument("--json", action="store_true", help="print the analysis as JSON")
    analyze.add_argument("--no-compile", action="store_true", help="skip compiling (no kernel counts)")
    add_model_options(analyze)
    analyze.set_defaults(func=cmd_analyze)

    conf = sub.add_parser("conformance", help="run the onnx package's node test cases and print the count")
    conf.add_argument("--show-failures", action="store_true")
    conf.set_defaults(func=cmd_conformance)

    zoo = sub.add_parser("zoo", help="list the built-in zoo models")
    zoo.set_defaults(func=cmd_zoo)

    from autofuse.database.commands import add_db_parser

    add_db_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `autofuse` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from autofuse.errors import AutofuseError

    try:
        return args.func(args)
    except AutofuseError as error:
        if args.debug:
            raise
        print(f"autofuse: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("autofuse: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
