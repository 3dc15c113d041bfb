"""The accuracy budget on real data: digits keeps its accuracy at 50%, too much sparsity is refused."""
from __future__ import annotations

import numpy as np
import pytest

import autofuse
from autofuse.datasets.digits import digits_model, digits_split
from autofuse.sparsity import check_budget, parse_pattern, prune_model, to_sparse_ops
from autofuse.sparsity.budget import BudgetError, relative_l2_error


@pytest.fixture(scope="module")
def digits():
    split = digits_split()
    return autofuse.import_onnx(digits_model(), shapes={"x": (128, 64)}), split


def test_digits_loses_at_most_one_point_at_50_percent_balanced_without_retraining(digits):
    model, split = digits
    sparse = to_sparse_ops(prune_model(model, parse_pattern("balanced:8/16"))).model
    verdict = check_budget(model, sparse, {"x": split.x_test}, max_accuracy_drop=0.01, labels=split.y_test)
    assert verdict.accuracy_original > 0.95
    assert verdict.ok and verdict.accuracy_drop <= 0.01, verdict


def test_a_too_lossy_level_is_refused_with_the_measured_figures(digits):
    model, split = digits
    sparse = to_sparse_ops(prune_model(model, parse_pattern("balanced:2/16"))).model
    verdict = check_budget(model, sparse, {"x": split.x_test}, max_accuracy_drop=0.01, max_rel_error=0.2,
                           labels=split.y_test)
    assert not verdict.ok and verdict.accuracy_drop > 0.01 and verdict.rel_error > 0.2
    assert "accuracy drops" in verdict.reason and "relative output error" in verdict.reason


def test_the_correction_brings_75_percent_inside_the_budget(digits):
    model, split = digits
    calib = {"x": split.x_train[:512]}
    pattern = parse_pattern("balanced:4/16")
    plain = to_sparse_ops(prune_model(model, pattern)).model
    corrected = to_sparse_ops(prune_model(model, pattern, calib=calib, correct=True)).model
    budget = dict(max_accuracy_drop=0.01, labels=split.y_test)
    assert not check_budget(model, plain, {"x": split.x_test}, **budget).ok
    assert check_budget(model, corrected, {"x": split.x_test}, **budget).ok


def test_rel_error_budget_alone_and_bad_budgets(digits):
    model, split = digits
    x = {"x": split.x_test[:200]}
    assert check_budget(model, model, x, max_rel_error=1e-6).rel_error == 0.0
    with pytest.raises(BudgetError, match="needs max_rel_error or max_accuracy_drop"):
        check_budget(model, model, x)
    with pytest.raises(BudgetError, match="needs labels"):
        check_budget(model, model, x, max_accuracy_drop=0.01)
    with pytest.raises(BudgetError, match="3 labels for 200"):
        check_budget(model, model, x, max_accuracy_drop=0.01, labels=np.zeros(3))


def test_relative_l2_error():
    assert relative_l2_error([np.array([3.0, 4.0])], [np.array([3.0, 4.5])]) == pytest.approx(0.1)
