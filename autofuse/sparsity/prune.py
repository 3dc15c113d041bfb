"""One-shot pruning: magnitude masks, and a calibration-based correction without training.

Without calibration data every layer keeps the largest-magnitude weights of each
bank. With calibration inputs and `correct=True`, each MatMul/Gemm layer is
treated as a least-squares problem on the activations X it actually sees (in the
spirit of OBS / SparseGPT, but exact for a fixed mask because rows are
independent): the mask keeps, per bank, the weights with the largest OBS
saliency w_k^2 / [H^-1]_kk, and the kept weights of each row are then refit to
minimise ||X w_kept - X w||^2, with H = X^T X / n (plus 1% damping). Conv layers
are pruned by magnitude only.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from autofuse.errors import AutofuseError
from autofuse.ir import Model
from autofuse.sparsity.calib import run_batched
from autofuse.sparsity.patterns import Pattern, bank_mask, fits
from autofuse.sparsity.targets import Layer, find_layers

# Damping added to the Gram matrix, relative to its mean diagonal (as SparseGPT).
DAMPING = 0.01
# Bytes of float64 Gram sub-blocks solved at once (rows x kept x kept).
SOLVE_CHUNK_BYTES = 1 << 27


@dataclass(frozen=True)
class LayerReport:
    """What pruning did to one layer; errors are relative output errors on calibration data."""

    node: str
    weight: str
    pattern: Pattern
    corrected: bool
    error_magnitude: float | None = None  # the magnitude mask, no refit
    error_final: float | None = None  # what the model now holds


@dataclass(frozen=True)
class PruneResult:
    """The pruned model (dense storage: masked weights) and, per layer node, its mask and pattern."""

    model: Model
    layers: dict[str, Layer]
    patterns: dict[str, Pattern]
    masks: dict[str, np.ndarray]  # (outputs, reduction) keep-masks
    reports: list[LayerReport] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


def gram(activations: np.ndarray, length: int) -> np.ndarray:
    """H = X^T X / n of a layer's input, rows of X being vectors of the reduction length."""
    x = np.asarray(activations, np.float64).reshape(-1, length)
    return x.T @ x / max(len(x), 1)


def _damped(h: np.ndarray, damping: float) -> np.ndarray:
    return h + damping * float(np.mean(np.diag(h)) or 1.0) * np.eye(len(h))


def obs_mask(rows: np.ndarray, h: np.ndarray, pattern: Pattern, damping: float = DAMPING) -> np.ndarray:
    """Keeps, per bank, the weights whose removal costs most: w_k^2 / [H^-1]_kk."""
    inverse_diag = np.diag(np.linalg.inv(_damped(h, damping)))
    return bank_mask(np.asarray(rows, np.float64) ** 2 / inverse_diag[None, :], pattern)


def least_squares(rows: np.ndarray, mask: np.ndarray, h: np.ndarray, damping: float = DAMPING) -> np.ndarray:
    """Rows refit on their masks: argmin over w_S of (w_S - w)^T H (w_S - w), zero off the mask.

    Every row keeps the same count (balanced), so the per-row systems
    H[S, S] w_S = (H w)[S] stack into one batched solve.
    """
    rows64 = np.asarray(rows, np.float64)
    hd = _damped(h, damping)
    target = rows64 @ h  # (H w)^T per row: the damping regularises the fit, not the target
    kept = int(mask[0].sum()) if len(mask) else 0
    support = np.nonzero(mask)[1].reshape(len(mask), kept)
    out = np.zeros_like(rows64)
    chunk = max(1, SOLVE_CHUNK_BYTES // max(8 * kept * kept, 1))
    for start in range(0, len(rows64), chunk):
        s = support[start:start + chunk]
        blocks = hd[s[:, :, None], s[:, None, :]]
        rhs = np.take_along_axis(target[start:start + chunk], s, axis=1)
        solved = np.linalg.solve(blocks, rhs[..., None])[..., 0]
        np.put_along_axis(out[start:start + chunk], s, solved, axis=1)
    return out.astype(rows.dtype)


def reconstruction_error(new_rows: np.ndarray, rows: np.ndarray, h: np.ndarray) -> float:
    """||X (W_new - W)|| / ||X W|| from the Gram matrix alone."""
    d = np.asarray(new_rows, np.float64) - np.asarray(rows, np.float64)
    w = np.asarray(rows, np.float64)
    num = float(np.einsum("rk,kl,rl->", d, h, d))
    den = float(np.einsum("rk,kl,rl->", w, h, w)) or 1.0
    return float(np.sqrt(max(num, 0.0) / den))


def _patterns_for(layers: list[Layer], pattern: Pattern | Mapping[str, Pattern],
                  skipped: dict[str, str]) -> dict[str, Pattern]:
    by_node = {layer.node: layer for layer in layers}
    if isinstance(pattern, Pattern):
        return {name: pattern for name in by_node}
    unknown = sorted(set(pattern) - set(by_node))
    if unknown:
        reasons = "; ".join(f"'{n}': {skipped.get(n, 'no such MatMul/Gemm/Conv node')}" for n in unknown[:5])
        raise AutofuseError(f"cannot prune {reasons}")
    return dict(pattern)


def prune_model(
    model: Model,
    pattern: Pattern | Mapping[str, Pattern],
    *,
    calib: Mapping[str, np.ndarray] | None = None,
    correct: bool = False,
    damping: float = DAMPING,
) -> PruneResult:
    """Prunes every prunable layer with `pattern` (or the layers named in a {node: pattern} map).

    `calib` (model inputs, any number of samples) measures each layer's
    reconstruction error; with `correct=True` it also drives the OBS mask and
    the least-squares refit. Layers whose rows do not split into whole banks
    are left dense and listed in `skipped` with the reason.
    """
    if correct and calib is None:
        raise AutofuseError("the pruning correction needs calibration inputs (--calib)")
    layers, skipped = find_layers(model)
    chosen = _patterns_for(layers, pattern, skipped)
    selected = []
    for layer in layers:
        if layer.node not in chosen:
            continue
        reason = fits(chosen[layer.node], layer.rows(np.asarray(model.weights[layer.weight])).shape[1])
        if reason:
            skipped[layer.node] = reason
        else:
            selected.append(layer)
    grams = {}
    if calib is not None:
        matmuls = [layer for layer in selected if layer.op_type != "Conv"]
        captured = run_batched(model, calib, [layer.activation for layer in matmuls])
        for layer, value in zip(matmuls, captured):
            grams[layer.node] = gram(value, np.shape(model.weights[layer.weight])[1 if layer.transposed else 0])
    weights = dict(model.weights)
    masks, reports = {}, []
    for layer in selected:
        p = chosen[layer.node]
        original = np.asarray(model.weights[layer.weight])
        rows = layer.rows(original)
        magnitude = bank_mask(np.abs(rows), p)
        h = grams.get(layer.node)
        pruned = rows * magnitude
        mask = magnitude
        if correct and h is not None:
            mask = obs_mask(rows, h, p, damping)
            pruned = least_squares(rows, mask, h, damping)
        masks[layer.node] = mask
        weights[layer.weight] = layer.from_rows(pruned, original)
        reports.append(LayerReport(
            layer.node, layer.weight, p, corrected=correct and h is not None,
            error_magnitude=None if h is None else reconstruction_error(rows * magnitude, rows, h),
            error_final=None if h is None else reconstruction_error(pruned, rows, h),
        ))
    pruned_model = Model(model.graph, weights, model.source)
    return PruneResult(pruned_model, {l.node: l for l in selected}, {l.node: chosen[l.node] for l in selected},
                       masks, reports, skipped)
