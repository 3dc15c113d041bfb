"""`autofuse sparsify`: prune a model's weights and write it back as ONNX (dense storage).

The written file is the input model with the pruned initializers replaced by
their masked (and, with --correct, refit) values, so any ONNX runtime runs it.
The report measures the sparse model as autofuse runs it (SparseMatMul kernels)
against the original on the calibration inputs, or on seeded random inputs.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from autofuse.api import example_inputs, import_onnx, resolve
from autofuse.errors import AutofuseError
from autofuse.ir import Model
from autofuse.sparsity.budget import relative_l2_error
from autofuse.sparsity.calib import load_npz, run_batched
from autofuse.sparsity.patterns import Pattern, parse_pattern
from autofuse.sparsity.prune import LayerReport, prune_model
from autofuse.sparsity.rewrite import to_sparse_ops
from autofuse.sparsity.targets import find_layers


@dataclass(frozen=True)
class SparsifyReport:
    """What `sparsify_file` did and measured."""

    output: Path
    pattern: Pattern
    layers: list[LayerReport]
    skipped: dict[str, str] = field(default_factory=dict)
    dense: dict[str, str] = field(default_factory=dict)  # pruned, but run with dense weights
    rel_error: float = 0.0  # relative L2 error of the sparse run vs the original
    checked_on: str = ""  # which inputs rel_error was measured on


def _initializer_layers(model: Model, path: Path, pattern: Pattern) -> tuple[dict[str, Pattern], dict[str, str]]:
    """Layers whose weight is an initializer of the file (so the pruned values can be written back)."""
    from autofuse.frontend.export import initializer_shapes

    initializers = initializer_shapes(path)
    layers, skipped = find_layers(model)
    chosen = {}
    for layer in layers:
        if initializers.get(layer.weight) == tuple(np.shape(model.weights[layer.weight])):
            chosen[layer.node] = pattern
        else:
            skipped[layer.node] = f"weight '{layer.weight}' is computed in the graph, not an initializer"
    return chosen, skipped


def sparsify_file(
    model_ref: str | os.PathLike,
    pattern: str | Pattern,
    *,
    output: str | os.PathLike,
    calib: str | os.PathLike | None = None,
    correct: bool = False,
    shapes: Mapping[str, Sequence[int]] | None = None,
    seed: int = 0,
) -> SparsifyReport:
    """Prunes `model_ref` with `pattern` and writes the pruned model to `output` as ONNX."""
    from autofuse.frontend.export import with_initializers

    pattern = parse_pattern(pattern) if isinstance(pattern, str) else pattern
    if correct and calib is None:
        raise AutofuseError("--correct needs calibration inputs: pass --calib DATA.npz")
    path = resolve(model_ref)
    model = import_onnx(path, shapes=shapes)
    inputs, _ = load_npz(calib, model) if calib is not None else (None, None)
    chosen, skipped = _initializer_layers(model, path, pattern)
    if not chosen:
        raise AutofuseError(f"{model_ref}: no MatMul, Gemm or Conv weight to prune "
                            f"({'; '.join(f'{k}: {v}' for k, v in list(skipped.items())[:3]) or 'none in the graph'})")
    result = prune_model(model, chosen, calib=inputs, correct=correct)
    skipped.update(result.skipped)
    written = with_initializers(path, {l.weight: result.model.weights[l.weight] for l in result.layers.values()},
                                output)
    check = inputs if inputs is not None else example_inputs(model, seed=seed)
    sparse = to_sparse_ops(result)
    error = relative_l2_error(run_batched(model, check), run_batched(sparse.model, check))
    return SparsifyReport(written, pattern, result.reports, skipped, sparse.dense, error,
                          f"--calib {calib}" if calib is not None else f"seeded random inputs (seed {seed})")
