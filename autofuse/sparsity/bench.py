"""Sparsity benchmarks: `python -m autofuse.sparsity.bench [--kernels] [--models] [--accuracy]`.

* kernels: BERT-base's weight shapes at batch 1/8/32; the dense XLA matmul, the
  native kernel at 50/75/87.5% balanced sparsity and the pure-XLA gather form
  at 75%, timed side by side (interleaved, medians); ratios are dense / sparse.
* models: BERT-base and GPT-2 at batch 1, dense XLA vs the same model with
  every MatMul/Gemm pruned and run as SparseMatMul, and onnxruntime on the
  dense model.
* accuracy: the digits MLP at 50/75/87.5% for balanced (bank 16) and N:M
  patterns, magnitude pruning with and without the least-squares correction.
* tuned: artifacts tuned from the digits MLP (`autofuse tune ... -o`), their
  top-1 on digits test images against onnxruntime on the dense model, and the
  artifacts and onnxruntime timed side by side at the artifacts' batch size.

Prints markdown tables. Timings are not tests: they depend on the machine.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from autofuse.runners.protocol import compare
from autofuse.sparsity.compressed import compress_magnitude
from autofuse.sparsity.matmul import sparse_matmul
from autofuse.sparsity.patterns import parse_pattern

SHAPES = ((768, 768), (768, 3072), (3072, 768))
BATCHES = (1, 8, 32)
KERNEL_PATTERNS = ("balanced:8/16", "balanced:4/16", "balanced:2/16")
GATHER_PATTERN = "balanced:4/16"
MODEL_PATTERNS = ("balanced:8/16", "balanced:4/16")
ACCURACY_PATTERNS = (("balanced:8/16", "nm:2:4"), ("balanced:4/16", "nm:1:4"), ("balanced:2/16", "nm:1:8"))


def _blocking(fn: Callable, *args) -> Callable[[], object]:
    return lambda: jax.block_until_ready(fn(*args))


def kernel_table(seconds: float) -> list[str]:
    """Dense XLA vs sparse kernel (and the pure-XLA gather form) per weight shape and batch."""
    rng = np.random.default_rng(0)
    lines = ["| weight (K x N) | batch | dense XLA | " + " | ".join(
        f"kernel {100 * parse_pattern(p).sparsity:.1f}%" for p in KERNEL_PATTERNS)
        + f" | XLA gather {100 * parse_pattern(GATHER_PATTERN).sparsity:.0f}% |",
        "| --- | --- | --- |" + " --- |" * (len(KERNEL_PATTERNS) + 1)]
    dense_fn = jax.jit(lambda x, w: x @ w)
    for k, n in SHAPES:
        weight = rng.standard_normal((k, n)).astype(np.float32)
        packed = {p: compress_magnitude(weight.T, parse_pattern(p)) for p in KERNEL_PATTERNS}
        for batch in BATCHES:
            x = jnp.asarray(rng.standard_normal((batch, k)).astype(np.float32))
            runs = {"dense": _blocking(dense_fn, x, jnp.asarray(weight))}
            for p, c in packed.items():
                fn = jax.jit(lambda a, v, o, c=c: sparse_matmul(a, v, o, outputs=c.outputs, window=c.window,
                                                                impl="kernel"))
                runs[p] = _blocking(fn, x, jnp.asarray(c.values), jnp.asarray(c.offsets))
            c = packed[GATHER_PATTERN]
            fallback = jax.jit(lambda a, v, o: sparse_matmul(a, v, o, outputs=c.outputs, window=c.window, impl="xla"))
            runs["xla"] = _blocking(fallback, x, jnp.asarray(c.values), jnp.asarray(c.offsets))
            t = compare(runs, rounds=5, warmup=3, min_repeats=5, min_seconds=seconds)
            dense_us = t["dense"].median_s * 1e6
            cells = [f"{t[p].median_s * 1e6:.0f} us ({dense_us / (t[p].median_s * 1e6):.2f}x)"
                     for p in (*KERNEL_PATTERNS, "xla")]
            lines.append(f"| {k} x {n} | {batch} | {dense_us:.0f} us | " + " | ".join(cells) + " |")
            print(lines[-1], file=sys.stderr, flush=True)
    return lines


def model_table(models: Sequence[str], seconds: float) -> list[str]:
    """End to end at batch 1: dense XLA, sparse (every MatMul/Gemm pruned) and onnxruntime (dense)."""
    from autofuse.api import compile_model, example_inputs, import_onnx, resolve
    from autofuse.runners.onnxruntime import baseline_session, run_session
    from autofuse.sparsity.budget import relative_l2_error
    from autofuse.sparsity.prune import prune_model
    from autofuse.sparsity.rewrite import to_sparse_ops

    lines = ["| model | dense XLA | onnxruntime | " + " | ".join(
        f"sparse {100 * parse_pattern(p).sparsity:.0f}% ({p})" for p in MODEL_PATTERNS) + " |",
        "| --- | --- | --- |" + " --- |" * len(MODEL_PATTERNS)]
    for name in models:
        model = import_onnx(name)
        inputs = example_inputs(model)
        dense = compile_model(model)
        runs = {"dense": lambda: [v.block_until_ready() for v in dense.run_device(inputs)]}
        session = baseline_session(resolve(name), threads=os.cpu_count() or 1)
        runs["ort"] = lambda: run_session(session, inputs)
        errors = {}
        for p in MODEL_PATTERNS:
            result = prune_model(model, parse_pattern(p))
            sparse = compile_model(to_sparse_ops(result).model)
            pruned_dense = compile_model(result.model)
            errors[p] = relative_l2_error(pruned_dense(inputs), sparse(inputs))
            runs[p] = lambda s=sparse: [v.block_until_ready() for v in s.run_device(inputs)]
        t = compare(runs, rounds=5, warmup=2, min_repeats=3, min_seconds=seconds)
        ms = {k: v.median_s * 1e3 for k, v in t.items()}
        cells = [f"{ms[p]:.1f} ms ({ms['dense'] / ms[p]:.2f}x XLA, {ms['ort'] / ms[p]:.2f}x ort; "
                 f"err {errors[p]:.0e})" for p in MODEL_PATTERNS]
        shape = "x".join(str(d) for d in model.graph.type_of(model.graph.inputs[0]).shape)
        lines.append(f"| {name} ({shape}) | {ms['dense']:.1f} ms | {ms['ort']:.1f} ms | " + " | ".join(cells) + " |")
        print(lines[-1], file=sys.stderr, flush=True)
    return lines


def accuracy_table(calib_samples: int = 512) -> list[str]:
    """Digits test accuracy after pruning, with and without the correction."""
    from autofuse.api import import_onnx
    from autofuse.datasets.digits import digits_model, digits_split
    from autofuse.sparsity.budget import top1_accuracy
    from autofuse.sparsity.calib import run_batched
    from autofuse.sparsity.prune import prune_model

    split = digits_split()
    model = import_onnx(digits_model(), shapes={"x": (128, 64)})
    test, calib = {"x": split.x_test}, {"x": split.x_train[:calib_samples]}
    dense = top1_accuracy(run_batched(model, test)[0], split.y_test)
    lines = [f"dense: {100 * dense:.2f}% on {len(split.y_test)} test images; correction calibrated on "
             f"{calib_samples} training images", "",
             "| sparsity | pattern | magnitude | + correction | pattern | magnitude | + correction |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for pair in ACCURACY_PATTERNS:
        cells = []
        for p in pair:
            pattern = parse_pattern(p)
            plain = prune_model(model, pattern)
            fixed = prune_model(model, pattern, calib=calib, correct=True)
            acc = [top1_accuracy(run_batched(r.model, test)[0], split.y_test) for r in (plain, fixed)]
            cells.append(f"{p} | {100 * acc[0]:.2f}% | {100 * acc[1]:.2f}%")
        lines.append(f"| {100 * parse_pattern(pair[0]).sparsity:.1f}% | " + " | ".join(cells) + " |")
    return lines


def tuned_table(paths: Sequence[str], images: str, seconds: float) -> list[str]:
    """Digits artifacts: sparsity kept, top-1 on test images (`odd`: those a calib.npz of the even
    ones never showed the tuner; `all`), time per batch beside onnxruntime on the dense model."""
    from autofuse.artifact import load_artifact
    from autofuse.datasets.digits import digits_model, digits_split
    from autofuse.runners.onnxruntime import baseline_session, run_session
    from autofuse.sparsity.budget import top1_accuracy

    split = digits_split()
    x, y = (split.x_test[1::2], split.y_test[1::2]) if images == "odd" else (split.x_test, split.y_test)
    tuned = {path: load_artifact(path) for path in paths}
    batch = next(iter(tuned.values())).manifest["inputs"][0]["shape"][0]
    padded = np.concatenate([x, np.repeat(x[-1:], -len(x) % batch, axis=0)])
    session = baseline_session(digits_model())
    runs = {"onnxruntime (dense)": lambda b: run_session(session, {"x": b})[0]}
    runs.update({path: (lambda b, t=t: t(b)[0]) for path, t in tuned.items()})
    one = padded[:batch]
    timings = compare({name: (lambda run=run: run(one)) for name, run in runs.items()},
                      rounds=7, warmup=3, min_repeats=20, min_seconds=seconds)
    lines = [f"{len(y)} test images ({images}), batch {batch}", "",
             "| model | sparse layers | top-1 | time per batch |", "| --- | --- | --- | --- |"]
    for name, run in runs.items():
        out = np.concatenate([run(padded[i:i + batch]) for i in range(0, len(padded), batch)])[:len(x)]
        sparse = tuned[name].manifest["decisions"].get("sparsity", {}) if name in tuned else {}
        layers = ", ".join(f"{v}={p}" for v, p in sorted(sparse.items())) or "none"
        lines.append(f"| {name} | {layers} | {100 * top1_accuracy(out, y):.2f}% | "
                     f"{timings[name].median_s * 1e6:.1f} us |")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m autofuse.sparsity.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--kernels", action="store_true", help="kernel vs dense per shape and batch")
    parser.add_argument("--models", nargs="*", metavar="MODEL", help="end to end (default zoo:bert_base zoo:gpt2)")
    parser.add_argument("--accuracy", action="store_true", help="digits accuracy table")
    parser.add_argument("--tuned", nargs="+", metavar="AFZ", help="digits artifacts: top-1 and time")
    parser.add_argument("--images", choices=["odd", "all"], default="odd", help="test images for --tuned")
    parser.add_argument("--seconds", type=float, default=0.5, help="timing budget per contender and table row")
    args = parser.parse_args(argv)
    if args.tuned:
        print("\n".join(tuned_table(args.tuned, args.images, 2 * args.seconds)), flush=True)
        return 0
    everything = not (args.kernels or args.models is not None or args.accuracy)
    if args.accuracy or everything:
        print("\n".join(accuracy_table()) + "\n", flush=True)
    if args.kernels or everything:
        print("\n".join(kernel_table(args.seconds)) + "\n", flush=True)
    if args.models is not None or everything:
        print("\n".join(model_table(args.models or ["zoo:bert_base", "zoo:gpt2"], 4 * args.seconds)),
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
