"""The accuracy budget: may a sparse model replace the original? Measured, never assumed.

`check_budget` runs both models on the same calibration inputs and compares
them. Two limits, either or both:

* `max_rel_error`: the relative L2 error of the outputs, ||sparse - original|| /
  ||original|| over all outputs and samples;
* `max_accuracy_drop`: the fall in top-1 accuracy against `labels` (argmax of
  the first output over its last axis), as a fraction: 0.01 is one point.

The verdict carries every figure it measured, so a tuner can log why it refused.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from autofuse.errors import AutofuseError
from autofuse.ir import Model
from autofuse.sparsity.calib import run_batched, sample_count


class BudgetError(AutofuseError):
    """A budget that cannot be checked as asked (no limit, labels missing or mismatched)."""


@dataclass(frozen=True)
class BudgetVerdict:
    """Whether the sparse model stays inside the budget, with what was measured."""

    ok: bool
    rel_error: float
    accuracy_original: float | None = None
    accuracy_sparse: float | None = None
    reason: str = ""

    @property
    def accuracy_drop(self) -> float | None:
        if self.accuracy_original is None or self.accuracy_sparse is None:
            return None
        return self.accuracy_original - self.accuracy_sparse


def relative_l2_error(expected: list[np.ndarray], actual: list[np.ndarray]) -> float:
    """||actual - expected|| / ||expected|| over all outputs together."""
    num = sum(float(np.sum((np.asarray(a, np.float64) - np.asarray(e, np.float64)) ** 2))
              for e, a in zip(expected, actual))
    den = sum(float(np.sum(np.asarray(e, np.float64) ** 2)) for e in expected)
    return float(np.sqrt(num / den)) if den else float(np.sqrt(num))


def top1_accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """The fraction of samples whose largest score (last axis) is the label."""
    return float(np.mean(np.argmax(logits, axis=-1) == np.asarray(labels)))


def check_budget(
    original: Model,
    sparse: Model,
    calib_inputs: Mapping[str, np.ndarray],
    *,
    max_rel_error: float | None = None,
    max_accuracy_drop: float | None = None,
    labels: np.ndarray | None = None,
) -> BudgetVerdict:
    """Runs both (settled) models on `calib_inputs` and checks the limits given."""
    if max_rel_error is None and max_accuracy_drop is None:
        raise BudgetError("an accuracy budget needs max_rel_error or max_accuracy_drop")
    if max_accuracy_drop is not None and labels is None:
        raise BudgetError("max_accuracy_drop needs labels for the calibration inputs")
    samples = sample_count(calib_inputs)
    if labels is not None and len(labels) != samples:
        raise BudgetError(f"{len(labels)} labels for {samples} calibration samples")
    expected = run_batched(original, calib_inputs)
    actual = run_batched(sparse, calib_inputs)
    error = relative_l2_error(expected, actual)
    acc_original = acc_sparse = None
    if labels is not None:
        acc_original = top1_accuracy(expected[0], labels)
        acc_sparse = top1_accuracy(actual[0], labels)
    reasons = []
    if max_rel_error is not None and error > max_rel_error:
        reasons.append(f"relative output error {error:.3g} exceeds {max_rel_error:.3g}")
    if max_accuracy_drop is not None and acc_original - acc_sparse > max_accuracy_drop:
        reasons.append(f"accuracy drops {100 * (acc_original - acc_sparse):.2f} points "
                       f"({100 * acc_original:.2f}% -> {100 * acc_sparse:.2f}%), more than "
                       f"{100 * max_accuracy_drop:.2f}")
    return BudgetVerdict(not reasons, error, acc_original, acc_sparse, "; ".join(reasons))
