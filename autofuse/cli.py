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
  autofuse tune zoo:resnet50 --time-budget 10m -o resnet50.afz
  autofuse run resnet50.afz
  autofuse compile model.onnx --db autofuse.db -o model.afz
  autofuse run zoo:resnet50
  autofuse run model.onnx --inputs x.npz --output y.npz
  autofuse bench zoo:resnet50 zoo:bert_base --compare ort
  autofuse bench zoo:resnet50 --families
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

    if str(args.model).endswith(".afz"):
        return _run_artifact(args)

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


def _run_artifact(args: argparse.Namespace) -> int:
    import time

    from autofuse.artifact import load_artifact
    from autofuse.errors import AutofuseError

    tuned = load_artifact(args.model)
    if args.inputs:
        try:
            with np.load(args.inputs, allow_pickle=False) as data:
                inputs = {k: data[k] for k in data.files}
        except Exception as error:
            raise AutofuseError(f"--inputs {args.inputs}: cannot read it as .npz: {error}") from None
    else:
        rng = np.random.default_rng(args.seed)
        inputs = {i["name"]: (rng.standard_normal(i["shape"]) if np.dtype(i["dtype"]).kind == "f"
                              else rng.integers(0, 2, i["shape"])).astype(i["dtype"])
                  for i in tuned.manifest["inputs"]}
    start = time.perf_counter()
    outputs = tuned(inputs)
    print(f"{args.model}: tuned from {tuned.manifest['source']}, ran in {time.perf_counter() - start:.2f} s (incl. compile)")
    for name, value in zip(tuned.output_names, outputs):
        print(f"  {name}: {value.dtype} {list(value.shape)}")
    if args.output:
        np.savez(args.output, **dict(zip(tuned.output_names, outputs)))
        print(f"outputs written to {args.output}")
    return 0


def _parse_duration(value: str) -> float:
    """'90', '90s', '10m', '1h' -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600}
    text = value.strip().lower()
    try:
        if text and text[-1] in units:
            seconds = float(text[:-1]) * units[text[-1]]
        else:
            seconds = float(text)
    except ValueError:
        raise SystemExit(f"autofuse: error: --time-budget {value!r}: expected e.g. 90s, 10m or 1h") from None
    if seconds <= 0:
        raise SystemExit(f"autofuse: error: --time-budget {value!r}: must be positive")
    return seconds


class ProgressLine:
    """One self-rewriting status line on stderr (plain lines when stderr is not a terminal)."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()

    def __call__(self, p: Any) -> None:
        parts = [f"[{p.phase}]"]
        if p.trials_total:
            parts.append(f"trials {p.trials}/{p.trials_total}")
        else:
            parts.append(f"trials {p.trials}")
        if p.best_task_speedup:
            parts.append(f"best task speedup {p.best_task_speedup:.2f}x")
        parts.append(f"{p.elapsed_s:.0f}s elapsed" + (f", {p.time_left_s:.0f}s left" if p.time_left_s is not None else ""))
        line = " | ".join(parts) + (f" | {p.message}" if p.message else "")
        if self.tty:
            print("\r\033[K" + line[:160], end="", file=sys.stderr, flush=True)
        else:
            print(line, file=sys.stderr, flush=True)

    def done(self) -> None:
        if self.tty:
            print(file=sys.stderr)


def format_tune_result(result: Any) -> str:
    """The closing tables: per task, then the whole model against XLA's default and onnxruntime."""
    lines = [f"{result.source}: pipeline {','.join(result.pipeline) or 'none'}; "
             f"{result.measurements} measurements, {result.reused} records reused from the database"]
    lines.append(f"{'task':<10} {'ops':<34} {'x':>3} {'default':>10} {'best':>10} {'speedup':>8} {'meas':>5} {'reused':>6}  best decisions")
    for t in result.tasks:
        speedup = f"{t.default_ms / t.best_ms:.2f}x" if t.default_ms and t.best_ms else "-"
        changed = ", ".join(f"{k}={v}" for k, v in t.best.items() if v not in ("default", "fuse", "dense")) or "defaults"
        lines.append(f"{t.key[:8]:<10} {t.ops[:34]:<34} {t.occurrences:>3} "
                     f"{f'{t.default_ms:.3f}' if t.default_ms else '-':>10} {f'{t.best_ms:.3f}' if t.best_ms else '-':>10} "
                     f"{speedup:>8} {t.measured:>5} {t.reused:>6}  {changed[:60]}")
    if result.median_ms:
        lines.append("")
        lines.append(f"{'whole model':<20} {'median':>11} {'vs XLA default':>15} {'vs onnxruntime':>15}")
        xla = result.median_ms.get("XLA default")
        ort = result.median_ms.get("onnxruntime")
        for name, ms in result.median_ms.items():
            lines.append(f"{name:<20} {ms:>8.3f} ms {f'{xla / ms:.2f}x faster' if xla else '-':>15} "
                         f"{f'{ms / ort:.2f} (ratio)' if ort else '-':>15}")
        if result.max_rel_diff is not None:
            against = "the pruned model run densely" if result.choices.sparsity else "onnxruntime"
            lines.append(f"max relative difference to {against}: {result.max_rel_diff:.1e}")
    lines.extend(f"note: {n}" for n in result.notes)
    if result.budget is not None:
        lines.extend(format_budget(result))
    return "\n".join(lines)


def format_budget(result: Any, shown: int = 20) -> list[str]:
    """What the accuracy budget allowed: the kept sparse layers with their measured cost, the refusals."""
    lines = [""]
    v = result.accuracy
    if result.choices.sparsity and v is not None:
        names = {n.outputs[0]: n.name or n.outputs[0] for n in result.model.graph.nodes if n.outputs}
        levels = ", ".join(f"{names.get(value, value)}={p}" for value, p in sorted(result.choices.sparsity.items()))
        cost = f"relative output error {v.rel_error:.3g}"
        if v.accuracy_drop is not None:
            cost += (f", top-1 {100 * v.accuracy_original:.2f}% -> {100 * v.accuracy_sparse:.2f}% "
                     f"(drop {100 * v.accuracy_drop:.2f} points; {100 * v.broken:.2f}% of samples lose a "
                     "correct answer)")
        lines.append(f"accuracy budget {result.budget}: {len(result.choices.sparsity)} sparse layers ({levels}); "
                     f"{cost} on {result.accuracy_on}")
    else:
        lines.append(f"accuracy budget {result.budget}: no sparse layer kept, the model stays dense")
    lines.extend(f"  {r}" for r in result.refusals[:shown])
    if len(result.refusals) > shown:
        lines.append(f"  ... and {len(result.refusals) - shown} more refusals")
    return lines


def _runner_for(args: argparse.Namespace) -> Any:
    if args.runner == "local":
        from autofuse.runners.local import LocalRunner

        return LocalRunner(min_seconds=args.measure_seconds)
    from autofuse.runners.ray import RayRunner

    return RayRunner(address=args.address, num_cpus=args.workers, min_seconds=args.measure_seconds)


def _save_result(result: Any, path: str, target_kind: str) -> None:
    import dataclasses

    from autofuse.artifact import save_artifact
    from autofuse.database import current_target
    from autofuse.executable import Executable

    exe = Executable(result.model, barriers=result.barriers)
    platforms = ("cuda",) if target_kind == "gpu" else ("cpu",)
    save_artifact(path, exe, source=result.source, decisions=result.decisions,
                  target=dataclasses.asdict(current_target(target_kind)), median_ms=result.median_ms,
                  platforms=platforms)
    print(f"tuned artifact written to {path}  (run it: autofuse run {path})")


def cmd_tune(args: argparse.Namespace) -> int:
    from autofuse.sparsity.admission import DEFAULT_PATTERNS, budget_arguments
    from autofuse.tuning import tune

    if args.trials is None and args.time_budget is None:
        args.time_budget = "10m"
    if args.sparsity_patterns and not args.accuracy_budget:
        raise SystemExit("autofuse: error: --sparsity-patterns is only used with --accuracy-budget")
    patterns = _parse_rewrites(args.sparsity_patterns) or DEFAULT_PATTERNS
    budget_arguments(args.accuracy_budget, args.calib, patterns)  # a bad spec fails before a runner starts
    progress = ProgressLine()
    try:
        result = tune(args.model, db=args.db, runner=_runner_for(args), target=args.target,
                      trials=args.trials,
                      time_budget_s=_parse_duration(args.time_budget) if args.time_budget else None,
                      shapes=_parse_shapes(args.shape), seed=args.seed, progress=progress,
                      accuracy_budget=args.accuracy_budget, calib=args.calib, sparsity_patterns=patterns)
    finally:
        progress.done()
    print(format_tune_result(result))
    if args.output:
        _save_result(result, args.output, args.target)
    return 0


def cmd_compile(args: argparse.Namespace) -> int:
    from autofuse.tuning import best_known

    result = best_known(args.model, db=args.db, target=args.target, shapes=_parse_shapes(args.shape))
    applied = sum(1 for t in result.tasks if t.best_ms is not None)
    print(f"{args.model}: pipeline {','.join(result.pipeline) or 'none'}; best records applied to "
          f"{applied} of {len(result.tasks)} tasks (nothing measured)")
    _save_result(result, args.output, args.target)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from autofuse.bench import bench_families, bench_model

    if args.families and (args.plans or args.db):
        raise SystemExit("autofuse: error: --families cannot be combined with --plans or --db")

    def progress(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    seconds = args.seconds if args.seconds is not None else 1.0 if args.families else 5.0
    rows = []
    for name in args.models:
        if args.families:
            row = bench_families(name, shapes=_parse_shapes(args.shape), compare=args.compare,
                                 families=_parse_rewrites(args.rewrite), seconds=seconds, seed=args.seed,
                                 progress=progress)
        else:
            row = bench_model(name, shapes=_parse_shapes(args.shape), compare=args.compare,
                              plans=args.plans, rewrites=_parse_rewrites(args.rewrite),
                              seconds=seconds, seed=args.seed, tuned_db=args.db, progress=progress)
        rows.append(row)
        if not args.json:
            print((format_families_table if args.families else format_table)([row]), flush=True)
    if args.json:
        print(json.dumps([r.as_dict() for r in rows], indent=2))
    elif len(rows) > 1 and not args.families:
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


def cmd_rewrites(args: argparse.Namespace) -> int:
    from autofuse.api import import_onnx, rule_families
    from autofuse.errors import AutofuseError
    from autofuse.rewrite.accounting import account

    known = rule_families()
    names = _parse_rewrites(args.rewrite) or tuple(known)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise AutofuseError(f"--rewrite: unknown families {unknown}; known: {', '.join(known)}")
    model = import_onnx(args.model, shapes=_parse_shapes(args.shape))
    lines = account(model, [(n, known[n]) for n in known if n in names])
    if args.json:
        print(json.dumps([{"scope": a.scope, "name": a.name, "fires": a.fires,
                           "flops_before": a.before.flops, "flops_after": a.after.flops,
                           "bytes_before": a.before.bytes, "bytes_after": a.after.bytes,
                           "nodes_before": a.before.nodes, "nodes_after": a.after.nodes} for a in lines], indent=2))
        return 0
    print(f"{'scope':<7} {'rule / family':<44} {'fires':>6} {'GFLOPs before':>14} {'removed':>9} "
          f"{'MB moved before':>16} {'removed':>9} {'nodes':>11}")
    for a in lines:
        flops = 100 * a.flops_removed / a.before.flops if a.before.flops else 0.0
        moved = 100 * a.bytes_removed / a.before.bytes if a.before.bytes else 0.0
        print(f"{a.scope:<7} {a.name[:44]:<44} {a.fires:>6} {a.before.flops / 1e9:>14.3f} {flops:>8.1f}% "
              f"{a.before.bytes / 1e6:>16.1f} {moved:>8.1f}% {a.before.nodes:>5}->{a.after.nodes:<5}")
    return 0


def cmd_conformance(args: argparse.Namespace) -> int:
    from autofuse.conformance import main

    return main(["--show-failures"] if args.show_failures else [])


def cmd_zoo(args: argparse.Namespace) -> int:
    from autofuse.datasets.zoo import list_models

    for name in list_models():
        print(name)
    return 0


def cmd_sparsify(args: argparse.Namespace) -> int:
    from autofuse.sparsity.command import sparsify_file

    r = sparsify_file(args.model, args.pattern, output=args.output, calib=args.calib, correct=args.correct,
                      shapes=_parse_shapes(args.shape), seed=args.seed)
    print(f"{args.model}: {len(r.layers)} layers pruned to {r.pattern} ({100 * r.pattern.sparsity:.1f}% sparse)"
          + (" with least-squares correction" if args.correct else ""))
    for node, reason in {**r.skipped, **r.dense}.items():
        print(f"  {node}: {'left dense' if node in r.skipped else 'pruned, runs dense'}: {reason}")
    print(f"relative output error of the sparse run: {r.rel_error:.3g} on {r.checked_on}")
    print(f"wrote {r.output} (ONNX, dense storage)")
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


def format_families_table(rows: Sequence[Any]) -> str:
    """`bench --families` rows: per contender its fires, static work removed, time and ratios."""
    from autofuse.bench import ORT, XLA, fewer_fires_together

    lines = [f"{'model':<20} {'contender':<24} {'fires':>6} {'GFLOPs removed':>18} {'MB removed':>18} "
             f"{'median':>11} {'spread':>7} {'vs XLA':>7} {'vs ort':>7} {'max rel diff':>13}"]
    for r in rows:
        for k, name in enumerate([XLA, *r.rewrites, ORT]):
            work = r.rewrites.get(name)
            head = f"{r.model if k == 0 else '':<20} {name:<24}"
            if work is not None:
                flops = 100 * work.flops_removed / work.before.flops if work.before.flops else 0.0
                moved = 100 * work.bytes_removed / work.before.bytes if work.before.bytes else 0.0
                head += (f" {work.fires:>6} {work.flops_removed / 1e9:>8.3f} ({flops:6.1f}%)"
                         f" {work.bytes_removed / 1e6:>8.1f} ({moved:6.1f}%)")
            else:
                head += f" {'-':>6} {'-':>18} {'-':>18}"
            if work is not None and work.same_as:
                lines.append(f"{head} {'same model as ' + work.same_as + ', not timed again':>49}")
                continue
            if name not in r.median_ms:
                continue
            vs_xla, vs_ort, diff = r.ratio_of(name, XLA), r.ratio_of(name), r.max_rel_diff.get(name)
            lines.append(f"{head} {r.median_ms[name]:>8.2f} ms {r.spread_pct[name]:>6.1f}%"
                         f" {f'{vs_xla:.2f}' if vs_xla else '-':>7} {f'{vs_ort:.2f}' if vs_ort else '-':>7}"
                         f" {f'{diff:.1e}' if diff is not None else '-':>13}")
        for rule, (alone, together) in fewer_fires_together(r).items():
            lines.append(f"{'':<20} {rule} fired {alone} alone, {together} in all "
                         "(an earlier family rewrote those nodes first)")
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

    run = sub.add_parser("run", help="run a tuned .afz artifact, or compile a model with XLA and run it once")
    run.add_argument("model", help="a tuned .afz, an .onnx file or a zoo name such as zoo:resnet50")
    run.add_argument("--inputs", metavar="X.npz", help="inputs by name (default: seeded random)")
    run.add_argument("--output", "-o", metavar="Y.npz", help="write the outputs here")
    add_model_options(run)
    run.set_defaults(func=cmd_run)

    bench = sub.add_parser("bench", help="time autofuse against onnxruntime side by side")
    bench.add_argument("models", nargs="+", help=".onnx files or zoo names")
    bench.add_argument("--compare", choices=["ort", "none"], default="ort",
                       help="baseline to run in the same process (default: ort, ORT_ENABLE_ALL)")
    bench.add_argument("--seconds", type=float, default=None,
                       help="timing budget per contender (default 5, or 1 with --families)")
    bench.add_argument("--plans", action="store_true",
                       help="also time the DNNFusion plan and op by op (kernel counts included)")
    bench.add_argument("--families", action="store_true",
                       help="time each rewrite family alone and all together (--rewrite picks families), "
                            "with the FLOPs and bytes each removes")
    bench.add_argument("--json", action="store_true", help="print results as JSON")
    bench.add_argument("--db", metavar="PATH", help="also time the model as tuned by this database's best records")
    add_model_options(bench)
    bench.set_defaults(func=cmd_bench)

    analyze = sub.add_parser("analyze", help="DNNFusion analysis: mapping types, fusion plan, kernel counts")
    analyze.add_argument("model", help="an .onnx file or a zoo name")
    analyze.add_argument("--json", action="store_true", help="print the analysis as JSON")
    analyze.add_argument("--no-compile", action="store_true", help="skip compiling (no kernel counts)")
    add_model_options(analyze)
    analyze.set_defaults(func=cmd_analyze)

    rw = sub.add_parser("rewrites", help="what each rewrite rule fires on a model, and the FLOPs and bytes it removes")
    rw.add_argument("model", help="an .onnx file or a zoo name")
    rw.add_argument("--json", action="store_true", help="print the accounting as JSON")
    add_model_options(rw)
    rw.set_defaults(func=cmd_rewrites)

    conf = sub.add_parser("conformance", help="run the onnx package's node test cases and print the count")
    conf.add_argument("--show-failures", action="store_true")
    conf.set_defaults(func=cmd_conformance)

    tune = sub.add_parser("tune", help="tune a model: search rewrites x fusion x lowering, measure for real")
    tune.add_argument("model", help="an .onnx file or a zoo name")
    budget = tune.add_mutually_exclusive_group()
    budget.add_argument("--time-budget", metavar="T", help="stop searching after T (e.g. 90s, 10m; default 10m)")
    budget.add_argument("--trials", type=int, metavar="N", help="stop after N measurements")
    tune.add_argument("--db", default="autofuse.db", metavar="PATH",
                      help="tuning database, created if missing (default autofuse.db)")
    tune.add_argument("--workers", type=int, metavar="N", help="local Ray CPUs to use (default: all)")
    tune.add_argument("--address", metavar="ADDR", help="join a Ray cluster (ray start --head ...) instead")
    tune.add_argument("--runner", choices=["ray", "local"], default="ray",
                      help="ray (default: local Ray, or --address) or local (one subprocess)")
    tune.add_argument("--target", choices=["cpu", "gpu"], default="cpu", help="device to tune for")
    tune.add_argument("--measure-seconds", type=float, default=0.3, metavar="S",
                      help="minimum timing per candidate, after warm-up (default 0.3)")
    tune.add_argument("-o", "--output", metavar="TUNED.afz", help="write the tuned artifact here")
    tune.add_argument("--shape", action="append", metavar="NAME=DxD...", help="bind dynamic input dims")
    tune.add_argument("--seed", type=int, default=0, help="seed for inputs and the search (default 0)")
    tune.add_argument("--accuracy-budget", metavar="SPEC",
                      help="allow balanced sparsity within this budget: rel:E (relative output error) or acc:D "
                           "(top-1 drop, a fraction; needs --calib with labels). Without it nothing is pruned")
    tune.add_argument("--calib", metavar="DATA.npz",
                      help="calibration inputs by name, plus 'labels' for acc: (default for rel: seeded random)")
    tune.add_argument("--sparsity-patterns", metavar="LIST",
                      help="levels to try, comma-separated (default balanced:8/16,balanced:4/16,balanced:2/16)")
    tune.set_defaults(func=cmd_tune)

    comp = sub.add_parser("compile", help="apply the best known records from a database, measuring nothing")
    comp.add_argument("model", help="an .onnx file or a zoo name")
    comp.add_argument("--db", required=True, metavar="PATH", help="tuning database")
    comp.add_argument("-o", "--output", required=True, metavar="TUNED.afz", help="artifact to write")
    comp.add_argument("--target", choices=["cpu", "gpu"], default="cpu")
    comp.add_argument("--shape", action="append", metavar="NAME=DxD...", help="bind dynamic input dims")
    comp.set_defaults(func=cmd_compile)

    zoo = sub.add_parser("zoo", help="list the built-in zoo models")
    zoo.set_defaults(func=cmd_zoo)

    sparsify = sub.add_parser("sparsify", help="prune weights to balanced or N:M sparsity, write ONNX")
    sparsify.add_argument("model", help="an .onnx file or a zoo name")
    sparsify.add_argument("--pattern", required=True, help="balanced:K/B (keep K of every B) or nm:N:M (e.g. nm:2:4)")
    sparsify.add_argument("--calib", metavar="DATA.npz", help="calibration inputs by name (default: seeded random)")
    sparsify.add_argument("--correct", action="store_true", help="refit kept weights on --calib (least squares)")
    sparsify.add_argument("--output", "-o", required=True, metavar="SPARSE.onnx", help="pruned model to write")
    sparsify.add_argument("--shape", action="append", metavar="NAME=DxD...", help="bind dynamic input dims")
    sparsify.add_argument("--seed", type=int, default=0, help="seed for random inputs (default 0)")
    sparsify.set_defaults(func=cmd_sparsify)

    from autofuse.database.commands import add_db_parser

    add_db_parser(sub)

    from autofuse.costmodel.commands import add_parsers as add_costmodel_parsers

    add_costmodel_parsers(sub)
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
