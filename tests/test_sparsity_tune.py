"""Sparsity as a decision of the tuner, only under an accuracy budget: never by default, offered and
measured through the sparse kernel when the budget allows it, refused (with the measured error) when not."""
from __future__ import annotations

import re

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import autofuse
from autofuse.artifact import load_artifact
from autofuse.cli import main
from autofuse.costmodel.base import AnalyticModel
from autofuse.database import open_database
from autofuse.datasets.digits import digits_model, digits_split
from autofuse.executable import Executable
from autofuse.runners.local import LocalRunner
from autofuse.search.scheduler import TaskState
from autofuse.search.space import Choices, apply_choices, candidate_key, task_space
from autofuse.search.task import extract_tasks
from autofuse.sparsity import native
from autofuse.sparsity.admission import DEFAULT_PATTERNS, Admission, Option, admit, calibration, enforce
from autofuse.sparsity.budget import AccuracyBudget, BudgetError, BudgetVerdict, parse_budget, relative_l2_error
from autofuse.sparsity.calib import run_batched
from autofuse.tuning import best_known, occurrence_pairs, tune
from conftest import make_model

WIDTH = 2048  # at batch 1 a 2048x2048 product (16 MB) is memory-bound: the sparse kernel wins clearly
GENEROUS = "rel:2"


def mlp(path, width: int = WIDTH, seed: int = 0):
    """x -> MatMul -> Relu -> MatMul -> Relu: one task (MatMul+Relu) occurring twice."""
    rng = np.random.default_rng(seed)
    weights = [numpy_helper.from_array((rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32),
                                       f"w{i}") for i in range(2)]
    nodes = [helper.make_node("MatMul", ["x", "w0"], ["h0"], name="mm0"), helper.make_node("Relu", ["h0"], ["r0"]),
             helper.make_node("MatMul", ["r0", "w1"], ["h1"], name="mm1"), helper.make_node("Relu", ["h1"], ["y"])]
    onnx.save(make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width])],
                         [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, width])], weights), path)
    return path


def _tune(model, db, trials, **kw):
    with LocalRunner(min_seconds=0.05) as runner:
        return tune(model, db=db, runner=runner, trials=trials, cost_model=AnalyticModel(), compare_seconds=0.2,
                    pipelines=[("folding",)], **kw)


def _sparse_records(db_path) -> list:
    db = open_database(db_path)
    try:
        return [r for r in db.records() if any(k.endswith("/sparsity") and v != "dense"
                                               for k, v in r.candidate.items())]
    finally:
        db.close()


def _ops(model) -> list[str]:
    return [n.op_type for n in model.graph.nodes]


@pytest.fixture(scope="module")
def generous(tmp_path_factory):
    """One tuning run under a generous budget, its model and database shared by the tests below."""
    folder = tmp_path_factory.mktemp("generous")
    model, db = mlp(folder / "mlp.onnx"), folder / "tune.db"
    return model, db, _tune(model, db, trials=30, accuracy_budget=GENEROUS)


def test_a_generous_budget_offers_the_levels_measures_them_and_keeps_the_model_inside_it(generous):
    model, db, result = generous
    raw = autofuse.import_onnx(model)
    space = task_space(extract_tasks(raw)[0], sparsity={"h0": DEFAULT_PATTERNS, "h1": DEFAULT_PATTERNS})
    assert dict(space.decisions)["node:0/sparsity"] == ("dense", *sorted(DEFAULT_PATTERNS))
    assert result.refusals == []  # every level of both layers fits rel:2 alone
    measured = {r.candidate["node:0/sparsity"] for r in _sparse_records(db) if r.ok}
    assert measured == set(DEFAULT_PATTERNS), "every admitted level compiled, ran and matched its masked reference"

    # 87.5% of a memory-bound product: the search keeps a sparse level and the whole model checks it.
    assert result.choices.sparsity and set(result.choices.sparsity) <= {"h0", "h1"}
    assert _ops(result.model).count("SparseMatMul") == len(result.choices.sparsity)
    if native.kernel_target() is not None:
        assert "autofuse_sparse_matmul" in Executable(result.model).optimized_hlo()
    assert result.decisions["sparsity"] == dict(result.choices.sparsity)
    assert result.median_ms["autofuse tuned"] <= result.median_ms["tuned, dense"]

    # The reported error is what the shipped model does on the check samples, and it is inside the budget.
    budget = parse_budget(GENEROUS)
    check = calibration(raw, budget, None).check
    ours = run_batched(result.model, check, executable=Executable(result.model, barriers=result.barriers).compile())
    error = relative_l2_error(run_batched(raw, check), ours)
    assert result.accuracy.ok and error == pytest.approx(result.accuracy.rel_error, rel=1e-5)
    assert 0 < error <= budget.max_rel_error


def test_without_a_budget_no_sparsity_appears_even_from_a_database_holding_sparse_records(generous):
    model, db, _ = generous
    before = len(_sparse_records(db))
    assert before > 0
    result = _tune(model, db, trials=3)
    assert result.choices.sparsity == {} and result.decisions["sparsity"] == {}
    assert "SparseMatMul" not in _ops(result.model) and result.budget is None and result.refusals == []
    assert all(not k.endswith("/sparsity") for t in result.tasks for k in t.best)
    assert len(_sparse_records(db)) == before, "a run without a budget measured a sparse candidate"
    assert all(not k.endswith("/sparsity") for task in extract_tasks(autofuse.import_onnx(model))
               for k, _ in task_space(task).decisions)
    compiled = best_known(model, db=db, pipelines=[("folding",)])
    assert compiled.choices.sparsity == {} and "SparseMatMul" not in _ops(compiled.model)


def test_a_tight_budget_refuses_every_level_with_its_error_and_the_model_stays_dense(tmp_path, capsys):
    model, db, out = mlp(tmp_path / "mlp.onnx"), tmp_path / "tight.db", tmp_path / "tight.afz"
    assert main(["tune", str(model), "--db", str(db), "--trials", "4", "--runner", "local", "--measure-seconds",
                 "0.05", "--accuracy-budget", "rel:0.0001", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "accuracy budget rel:0.0001: no sparse layer kept, the model stays dense" in printed
    refused = re.findall(r"refused (\S+) on node (\S+): relative output error (\S+) exceeds 0.0001", printed)
    assert {(p, n) for p, n, _ in refused} == {(p, n) for p in DEFAULT_PATTERNS for n in ("mm0", "mm1")}
    assert all(float(e) > 1e-4 for _, _, e in refused)
    assert _sparse_records(db) == []
    assert load_artifact(out).manifest["decisions"]["sparsity"] == {}


def _option(value: str, pattern: str, error: float) -> Option:
    return Option(value, f"mm{value[-1]}", pattern, f"w{value[-1]}", np.zeros(1), BudgetVerdict(True, error))


def test_each_occurrence_takes_only_the_levels_admitted_for_its_own_layer(tmp_path):
    raw = autofuse.import_onnx(mlp(tmp_path / "mlp.onnx", width=32))
    task = extract_tasks(raw)[0]
    assert [o.node_outputs[0] for o in task.occurrences] == ["h0", "h1"]
    admitted = {("h0", "balanced:4/16"): _option("h0", "balanced:4/16", 0.05)}
    admission = Admission(parse_budget("rel:0.1"), None, [], admitted)
    space = task_space(task, sparsity=admission.levels)
    default, sparse = space.default(), dict(space.default(), **{"node:0/sparsity": "balanced:4/16"})
    state = TaskState(task, {candidate_key(default): (default, 1.0), candidate_key(sparse): (sparse, 0.2)})
    (first, c0), (second, c1) = occurrence_pairs(state, space, admission.allows)
    assert first.occurrences[0].node_outputs[0] == "h0" and c0 == sparse
    assert second.occurrences[0].node_outputs[0] == "h1" and c1 == default
    assert [c for _, c in occurrence_pairs(state, space, lambda value, pattern: False)] == [default, default]
    # A sparse candidate inside the timing noise of the best dense one is not worth its error.
    blas = dict(default, **{"node:0/algorithm": next(c for c in dict(space.decisions)["node:0/algorithm"]
                                                      if c != "default")})
    state.measured[candidate_key(blas)] = (blas, 0.205)
    assert [c for _, c in occurrence_pairs(state, space, admission.allows)] == [blas, blas]


def test_the_assembled_model_is_checked_again_and_the_costliest_option_banned(tmp_path):
    raw = autofuse.import_onnx(mlp(tmp_path / "mlp.onnx", width=64))
    calib = calibration(raw, parse_budget("rel:10"), None)
    loose = admit(raw, parse_budget("rel:10"), calib, ["balanced:2/16"])
    alone = {value: option.verdict.rel_error for (value, _), option in loose.options.items()}
    assert set(alone) == {"h0", "h1"}

    def selector(admission):
        def select(banned):  # both layers sparse, less what is banned
            sparsity = {v: "balanced:2/16" for v in ("h0", "h1") if (v, "balanced:2/16") not in banned}
            return (sparsity, *apply_choices(admission.pruned(raw, sparsity), Choices(sparsity=sparsity)))
        return select

    banned, verdict, refusals = enforce(loose, selector(loose))
    assert banned == frozenset() and refusals == []
    together = verdict.rel_error
    assert together > max(alone.values())
    # A budget each layer meets alone but the two together do not.
    limit = (max(alone.values()) + together) / 2
    tight = admit(raw, AccuracyBudget(limit), calib, ["balanced:2/16"])
    assert tight.refusals == [] and set(tight.levels) == {"h0", "h1"}
    banned, verdict, refusals = enforce(tight, selector(tight))
    costliest = max(alone, key=alone.get)
    assert banned == {(costliest, "balanced:2/16")} and verdict.ok and verdict.rel_error <= limit
    assert verdict.rel_error == pytest.approx(min(alone.values()), rel=1e-3)  # the other layer alone, as admitted
    assert len(refusals) == 1 and refusals[0].together and refusals[0].node == f"mm{costliest[-1]}"
    assert refusals[0].verdict.rel_error == pytest.approx(together)
    assert "with the other chosen sparse layers: relative output error" in str(refusals[0])


def test_an_accuracy_budget_checks_labelled_data_held_out_from_the_correction():
    split = digits_split()
    model = autofuse.import_onnx(digits_model(), shapes={"x": (64, 64)})
    budget = parse_budget("acc:0.01")
    calib = calibration(model, budget, {"x": split.x_test, "labels": split.y_test})
    assert len(calib.check["x"]) == len(split.x_test) // 2 and np.array_equal(calib.labels, split.y_test[1::2])
    assert np.array_equal(calib.fit["x"], split.x_test[0::2])
    admission = admit(model, budget, calib)
    assert admission.options and admission.refusals
    # No credit for fixes: a level passes only if at most 1% of the check samples lose a correct answer.
    assert all(o.verdict.accuracy_drop <= o.verdict.broken + 1e-12 and o.verdict.broken <= 0.01
               for o in admission.options.values())
    assert all(r.verdict.broken > 0.01 and "lose a correct top-1 answer" in r.verdict.reason
               for r in admission.refusals)
    with pytest.raises(BudgetError, match="no 'labels' array"):
        calibration(model, budget, {"x": split.x_test})


@pytest.mark.parametrize("argv, message", [
    (["--accuracy-budget", "0.02"], "--accuracy-budget '0.02': expected rel:E"),
    (["--accuracy-budget", "rel:abc"], "--accuracy-budget 'rel:abc': expected rel:E"),
    (["--accuracy-budget", "rel:-1"], "--accuracy-budget 'rel:-1': the relative error limit must be positive"),
    (["--accuracy-budget", "acc:5"], "--accuracy-budget 'acc:5': the accuracy drop is a fraction"),
    (["--accuracy-budget", "acc:0.01"], "--accuracy-budget acc:0.01: a top-1 accuracy budget needs labelled data"),
    (["--calib", "c.npz"], "--calib is only used with --accuracy-budget"),
    (["--accuracy-budget", "rel:0.1", "--sparsity-patterns", "balanced:3"], "--sparsity-patterns 'balanced:3'"),
])
def test_bad_budget_arguments_are_one_line_errors_naming_the_flag(tmp_path, capsys, argv, message):
    assert main(["tune", "model.onnx", "--db", str(tmp_path / "x.db"), "--runner", "local", *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.db").exists()


def test_budget_specs():
    assert parse_budget("acc:0.01, rel:0.05") == AccuracyBudget(0.05, 0.01)
    assert str(parse_budget("REL:0.02")) == "rel:0.02"
    with pytest.raises(BudgetError, match="expected rel:E"):
        parse_budget("rel:0.1,rel:0.2")
