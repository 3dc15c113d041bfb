"""Sparsity as a tuning decision under an accuracy budget: which layers, which levels.

The tuner never prunes on its own; with an `AccuracyBudget` it goes through:

1. `calibration`: the inputs the budget is checked on. With the user's data
   (`--calib`, labels needed for an accuracy budget) the pruning correction (OBS
   selection, least-squares refit) is fitted on the even samples and the budget
   checked on the odd ones, so the check never grades what was fitted. Without
   data (relative-error budgets only) the check runs on seeded random inputs and
   layers are pruned by magnitude.
2. `admit`: each prunable MatMul/Gemm layer at each candidate level is pruned
   *alone* and the whole model checked against the budget; the levels inside it
   are the layer's search options, the rest are refusals with what they cost.
   An accuracy budget gives no credit for fixes: it limits the share of check
   samples that lose a correct top-1 answer, an upper bound of the drop that a
   small calibration set cannot satisfy by luck.
   One compiled executable serves every variant (the weights are its arguments).
3. The search measures the admitted levels as `node:<i>/sparsity` decisions.
4. `enforce`: the assembled model, every chosen sparse layer together and run as
   it will ship (SparseMatMul kernels, the other decisions applied), is checked
   once more; while it breaks the budget, the chosen option that cost most alone
   is banned (a refusal too) and the selection made again without it, so that
   layer takes its next best measured candidate (another level, or dense).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import jax
import numpy as np

from autofuse.errors import AutofuseError
from autofuse.executable import Executable
from autofuse.ir import Model
from autofuse.lowering import evaluate
from autofuse.sparsity.budget import AccuracyBudget, BudgetError, BudgetVerdict, judge, parse_budget
from autofuse.sparsity.calib import LABELS_KEY, load_npz, run_batched, sample_count
from autofuse.sparsity.patterns import parse_pattern
from autofuse.sparsity.prune import prune_model
from autofuse.sparsity.rewrite import to_sparse_ops
from autofuse.sparsity.targets import find_layers, node_key

# The levels the tuner tries by default. N:M patterns are left out: on the CPU kernel
# nm:2:4 does the work of balanced:8/16 (same kept count per 16-wide window), and every
# 2:4 mask is also an 8/16 mask, so the balanced level keeps at least as much.
DEFAULT_PATTERNS = ("balanced:8/16", "balanced:4/16", "balanced:2/16")
# Samples of seeded random inputs a relative-error budget is checked on without --calib.
RANDOM_SAMPLES = 16

CalibSource = str | os.PathLike | Mapping[str, np.ndarray]
# The tuner's selection with some (layer value, pattern) options banned: the sparse layers it
# chose (value -> pattern) and the model as it would ship with them, with its barriers.
Select = Callable[[frozenset[tuple[str, str]]], tuple[Mapping[str, str], Model, frozenset[str]]]
Report = Callable[[str], None]


def budget_arguments(accuracy_budget: str | AccuracyBudget | None, calib: CalibSource | None,
                     patterns: Sequence[str] = DEFAULT_PATTERNS) -> AccuracyBudget | None:
    """The parsed budget (None: no sparsity at all), once the arguments are known to fit together."""
    if accuracy_budget is None:
        if calib is not None:
            raise BudgetError("--calib is only used with --accuracy-budget: without a budget no sparsity is tried")
        return None
    budget = parse_budget(accuracy_budget) if isinstance(accuracy_budget, str) else accuracy_budget
    if budget.needs_labels and calib is None:
        raise BudgetError(f"--accuracy-budget {budget}: a top-1 accuracy budget needs labelled data: "
                          f"pass --calib DATA.npz with the model's inputs and a '{LABELS_KEY}' array")
    if not patterns:
        raise BudgetError("--sparsity-patterns: no pattern given")
    for text in patterns:
        parse_pattern(text, flag="--sparsity-patterns")
    return budget


@dataclass(frozen=True)
class Calibration:
    """Where the budget is checked (`check`, `labels`) and what the correction is fitted on (`fit`)."""

    check: dict[str, np.ndarray]
    labels: np.ndarray | None
    fit: dict[str, np.ndarray] | None  # None: magnitude pruning
    origin: str


def calibration(model: Model, budget: AccuracyBudget, calib: CalibSource | None, seed: int = 0) -> Calibration:
    """The calibration data for `budget`: --calib split into fit and check halves, or random inputs."""
    if calib is None:
        if budget.needs_labels:
            raise BudgetError(f"--accuracy-budget {budget}: a top-1 accuracy budget needs labelled data: "
                              f"pass --calib DATA.npz with the model's inputs and a '{LABELS_KEY}' array")
        return _random_calibration(model, seed)
    if isinstance(calib, Mapping):
        arrays = dict(calib)
        labels = arrays.pop(LABELS_KEY, None)
        missing = set(model.graph.inputs) - set(arrays)
        if missing:
            raise AutofuseError(f"calib: no array for model input(s) {sorted(missing)}; it holds {sorted(arrays)}")
        inputs, origin = {k: np.asarray(arrays[k]) for k in model.graph.inputs}, "the calibration arrays"
    else:
        inputs, labels = load_npz(calib, model)
        origin = f"--calib {calib}"
    samples = sample_count(inputs, f"{origin}")
    if budget.needs_labels and labels is None:
        raise BudgetError(f"--accuracy-budget {budget}: {origin} has no '{LABELS_KEY}' array to measure "
                          "top-1 accuracy on")
    if labels is not None and len(labels) != samples:
        raise BudgetError(f"{origin}: {len(labels)} labels for {samples} samples")
    if samples < 2:
        raise BudgetError(f"{origin}: {samples} sample(s); the correction is fitted on half and the budget "
                          "checked on the other half, so at least 2 are needed")
    return Calibration({k: v[1::2] for k, v in inputs.items()}, None if labels is None else np.asarray(labels)[1::2],
                       {k: v[0::2] for k, v in inputs.items()},
                       f"{origin} (correction fitted on {(samples + 1) // 2} samples, budget checked on "
                       f"the other {samples // 2})")


def _random_calibration(model: Model, seed: int) -> Calibration:
    from autofuse.api import example_inputs

    first = example_inputs(model, seed=seed)
    count = -(-RANDOM_SAMPLES // sample_count(first, "example inputs"))
    batches = [first] + [example_inputs(model, seed=seed + k) for k in range(1, count)]
    check = {name: np.concatenate([b[name] for b in batches]) for name in model.graph.inputs}
    return Calibration(check, None, None, f"{sample_count(check)} seeded random samples (seed {seed}); "
                                          "magnitude pruning")


class _Reweighted:
    """One compiled model, run with other values of the same weights: no recompiling per variant."""

    def __init__(self, model: Model) -> None:
        graph, source = model.graph, model.source
        self._fn = jax.jit(lambda weights, inputs: evaluate(graph, inputs, weights, source=source))
        self._dtypes = {name: np.dtype(graph.type_of(name).dtype) for name in graph.inputs}

    def bind(self, weights: Mapping[str, np.ndarray]) -> Callable[[Mapping[str, np.ndarray]], list]:
        placed = {k: jax.device_put(v) for k, v in weights.items()}

        def run(inputs: Mapping[str, np.ndarray]) -> list:
            args = {k: np.asarray(inputs[k]).astype(dt, copy=False) for k, dt in self._dtypes.items()}
            return [jax.tree_util.tree_map(np.asarray, v) for v in self._fn(placed, args)]

        return run


@dataclass(frozen=True, eq=False)
class Option:
    """One layer at one level inside the budget: its pruned weight and what it cost alone."""

    value: str  # the layer's output value (how Choices name a layer)
    node: str
    pattern: str
    weight: str
    pruned: np.ndarray  # the pruned (and refit) weight, dense storage
    verdict: BudgetVerdict  # the whole model with only this layer pruned


@dataclass(frozen=True)
class Refusal:
    """A level the budget did not allow on a layer, with what was measured."""

    node: str
    pattern: str
    verdict: BudgetVerdict
    together: bool = False  # refused in the assembled model (with the other chosen layers), not alone

    def __str__(self) -> str:
        where = " with the other chosen sparse layers" if self.together else ""
        return f"refused {self.pattern} on node {self.node}{where}: {self.verdict.reason}"


def _cost(verdict: BudgetVerdict) -> tuple[float, float]:
    return (verdict.broken or 0.0, verdict.rel_error)


@dataclass
class Admission:
    """What the budget allows before the search: options per (layer value, pattern), and refusals."""

    budget: AccuracyBudget
    calibration: Calibration
    expected: list[np.ndarray]  # the dense model's outputs on the check samples
    options: dict[tuple[str, str], Option] = field(default_factory=dict)
    refusals: list[Refusal] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # layer node -> why it stays dense

    @property
    def levels(self) -> dict[str, tuple[str, ...]]:
        """Layer output value -> admitted patterns: the sparsity options of the task spaces."""
        levels: dict[str, tuple[str, ...]] = {}
        for value, pattern in self.options:
            levels[value] = levels.get(value, ()) + (pattern,)
        return levels

    def allows(self, value: str, pattern: str) -> bool:
        return (value, pattern) in self.options

    def pruned(self, model: Model, sparsity: Mapping[str, str]) -> Model:
        """`model` with the chosen layers' weights replaced by their admitted pruned weights."""
        weights = dict(model.weights)
        for value, pattern in sparsity.items():
            option = self.options[(value, pattern)]
            weights[option.weight] = option.pruned
        return Model(model.graph, weights, model.source)

    def judge(self, actual: list[np.ndarray]) -> BudgetVerdict:
        """The budget's verdict on outputs computed on the check samples (no credit for fixes)."""
        return judge(self.expected, actual, max_rel_error=self.budget.max_rel_error,
                     max_accuracy_drop=self.budget.max_accuracy_drop, labels=self.calibration.labels,
                     credit_fixes=False)


def admit(model: Model, budget: AccuracyBudget, calib: Calibration, patterns: Sequence[str] = DEFAULT_PATTERNS,
          report: Report | None = None) -> Admission:
    """Checks every prunable MatMul/Gemm layer of `model` alone at every level in `patterns`."""
    levels = [parse_pattern(p) for p in patterns]
    runner = _Reweighted(model)
    admission = Admission(budget, calib, run_batched(model, calib.check, executable=runner.bind(model.weights)))
    layers = [layer for layer in find_layers(model)[0] if layer.op_type != "Conv"]
    values = {node_key(n): n.outputs[0] for n in model.graph.nodes if n.outputs}
    if report:
        report(f"checking {len(layers)} layers x {len(levels)} sparsity levels against the accuracy budget "
               f"{budget} on {calib.origin}")
    for pattern in levels:
        result = prune_model(model, {layer.node: pattern for layer in layers}, calib=calib.fit,
                             correct=calib.fit is not None)
        admission.skipped.update(result.skipped)
        dense = to_sparse_ops(result).dense
        for node, layer in result.layers.items():
            if node in dense:
                admission.skipped[node] = dense[node]
                continue
            weights = dict(model.weights)
            weights[layer.weight] = result.model.weights[layer.weight]
            verdict = admission.judge(run_batched(model, calib.check, executable=runner.bind(weights)))
            if verdict.ok:
                admission.options[(values[node], str(pattern))] = Option(
                    values[node], node, str(pattern), layer.weight, weights[layer.weight], verdict)
            else:
                admission.refusals.append(Refusal(node, str(pattern), verdict))
                if report:
                    report(str(admission.refusals[-1]))
    if report and admission.skipped:
        report(f"{len(admission.skipped)} layer(s) cannot take every level: " + "; ".join(
            f"{node}: {reason}" for node, reason in list(admission.skipped.items())[:3]))
    return admission


def enforce(admission: Admission, select: Select, report: Report | None = None
            ) -> tuple[frozenset[tuple[str, str]], BudgetVerdict | None, list[Refusal]]:
    """Bans options until the selection, assembled as it ships, fits the budget: while it
    does not, the chosen option that cost most alone is banned and the selection made again.

    Returns the banned (value, pattern) options, the verdict on the final selection (None
    when it has no sparse layer left) and a refusal per banned option.
    """
    banned: set[tuple[str, str]] = set()
    refusals: list[Refusal] = []
    while True:
        sparsity, model, barriers = select(frozenset(banned))
        if not sparsity:
            return frozenset(banned), None, refusals
        unknown = [item for item in sparsity.items() if item not in admission.options]
        if unknown:
            raise AutofuseError(f"sparsity {unknown[0][1]} on {unknown[0][0]} was never admitted by the budget")
        executable = Executable(model, barriers=barriers).compile()
        verdict = admission.judge(run_batched(model, admission.calibration.check, executable=executable))
        if verdict.ok:
            return frozenset(banned), verdict, refusals
        worst = max(sparsity.items(), key=lambda item: _cost(admission.options[item].verdict))
        option = admission.options[worst]
        banned.add(worst)
        refusals.append(Refusal(option.node, option.pattern, verdict, together=True))
        if report:
            report(str(refusals[-1]))
