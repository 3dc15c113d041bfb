"""The accuracy budget: may a sparse model replace the original? Measured, never assumed.

`check_budget` runs both models on the same calibration inputs and compares
them. Two limits, either or both:

* `max_rel_error`: the relative L2 error of the outputs, ||sparse - original|| /
  ||original|| over all outputs and samples;
* `max_accuracy_drop`: the fall in top-1 accuracy against `labels` (argmax of
  the first output over its last axis), as a fraction: 0.01 is one point.
  With `credit_fixes=False` (the tuner's gate) the limit applies to the share of
  samples that lose a correct answer, which bounds the drop from above: on a
  small calibration set, samples the sparse model happens to fix cannot pay for
  the ones it breaks.

The verdict carries every figure it measured, so a tuner can log why it refused.
`AccuracyBudget` is the same pair of limits as a value (`parse_budget("acc:0.01")`),
the form `autofuse tune --accuracy-budget` takes.
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
class AccuracyBudget:
    """How much accuracy sparsity may cost: a relative output error, a top-1 drop (a fraction), or both."""

    max_rel_error: float | None = None
    max_accuracy_drop: float | None = None

    def __post_init__(self) -> None:
        if self.max_rel_error is None and self.max_accuracy_drop is None:
            raise BudgetError("an accuracy budget needs max_rel_error or max_accuracy_drop")

    @property
    def needs_labels(self) -> bool:
        return self.max_accuracy_drop is not None

    def __str__(self) -> str:
        parts = [f"rel:{self.max_rel_error:g}"] if self.max_rel_error is not None else []
        parts += [f"acc:{self.max_accuracy_drop:g}"] if self.max_accuracy_drop is not None else []
        return ",".join(parts)


BUDGET_SYNTAX = ("expected rel:E (largest relative output error, e.g. rel:0.02), acc:D (largest top-1 "
                 "accuracy drop as a fraction, e.g. acc:0.01 for one point), or both: acc:0.01,rel:0.05")


def parse_budget(text: str, flag: str = "--accuracy-budget") -> AccuracyBudget:
    """'rel:0.02', 'acc:0.01' or 'acc:0.01,rel:0.05' as an AccuracyBudget; errors name `flag`."""
    limits: dict[str, float] = {}
    for part in str(text).lower().replace(" ", "").split(","):
        kind, sep, value = part.partition(":")
        try:
            number = float(value)
        except ValueError:
            number = float("nan")
        if not sep or kind not in ("rel", "acc") or kind in limits or not np.isfinite(number):
            raise BudgetError(f"{flag} {text!r}: {BUDGET_SYNTAX}")
        if kind == "rel" and number <= 0:
            raise BudgetError(f"{flag} {text!r}: the relative error limit must be positive")
        if kind == "acc" and not 0 <= number < 1:
            raise BudgetError(f"{flag} {text!r}: the accuracy drop is a fraction in [0, 1) (0.01 is one point)")
        limits[kind] = number
    return AccuracyBudget(limits.get("rel"), limits.get("acc"))


@dataclass(frozen=True)
class BudgetVerdict:
    """Whether the sparse model stays inside the budget, with what was measured."""

    ok: bool
    rel_error: float
    accuracy_original: float | None = None
    accuracy_sparse: float | None = None
    reason: str = ""
    broken: float | None = None  # share of samples right before and wrong after (>= the accuracy drop)

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
    return judge(run_batched(original, calib_inputs), run_batched(sparse, calib_inputs),
                 max_rel_error=max_rel_error, max_accuracy_drop=max_accuracy_drop, labels=labels)


def judge(
    expected: list[np.ndarray],
    actual: list[np.ndarray],
    *,
    max_rel_error: float | None = None,
    max_accuracy_drop: float | None = None,
    labels: np.ndarray | None = None,
    credit_fixes: bool = True,
) -> BudgetVerdict:
    """The verdict on outputs already computed (original, then sparse), e.g. many sparse
    variants against one run of the original. `credit_fixes=False` holds the samples
    that lose a correct answer to `max_accuracy_drop`, not the net drop."""
    if max_accuracy_drop is not None and labels is None:
        raise BudgetError("max_accuracy_drop needs labels for the calibration inputs")
    error = relative_l2_error(expected, actual)
    acc_original = acc_sparse = broken = None
    if labels is not None:
        right_before = np.argmax(expected[0], axis=-1) == np.asarray(labels)
        right_after = np.argmax(actual[0], axis=-1) == np.asarray(labels)
        acc_original, acc_sparse = float(np.mean(right_before)), float(np.mean(right_after))
        broken = float(np.mean(right_before & ~right_after))
    reasons = []
    if max_rel_error is not None and error > max_rel_error:
        reasons.append(f"relative output error {error:.3g} exceeds {max_rel_error:.3g}")
    accuracy = f"{100 * acc_original:.2f}% -> {100 * acc_sparse:.2f}%" if labels is not None else ""
    if max_accuracy_drop is not None and credit_fixes and acc_original - acc_sparse > max_accuracy_drop:
        reasons.append(f"accuracy drops {100 * (acc_original - acc_sparse):.2f} points ({accuracy}), more than "
                       f"{100 * max_accuracy_drop:.2f}")
    if max_accuracy_drop is not None and not credit_fixes and broken > max_accuracy_drop:
        lost = int(round(broken * len(right_before)))
        reasons.append(f"{lost} of {len(right_before)} samples ({100 * broken:.2f}%) lose a correct top-1 answer, "
                       f"more than {100 * max_accuracy_drop:.2f}% (accuracy {accuracy})")
    return BudgetVerdict(not reasons, error, acc_original, acc_sparse, "; ".join(reasons), broken)
