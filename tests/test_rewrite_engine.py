"""The rewrite engine: rule sets, the fixed-point driver, budgets, declines; shared helpers."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from autofuse.executable import Executable
from autofuse.frontend import import_model
from autofuse.ir import Model
from autofuse.rewrite import Replacement, Rule, RuleSet, rewrite
from autofuse.rewrite.engine import RewriteError, apply
from autofuse.settle import settle
from conftest import make_model

FLOAT = TensorProto.FLOAT


def tiny(nodes, inputs, outputs, weights=None, opset=17) -> Model:
    """A settled model from onnx.helper nodes; inputs/outputs are {name: shape}; weights {name: array}."""
    proto = make_model(
        nodes,
        [helper.make_tensor_value_info(n, FLOAT, s) for n, s in inputs.items()],
        [helper.make_tensor_value_info(n, FLOAT, None) for n in outputs],
        [numpy_helper.from_array(np.asarray(a), n) for n, a in (weights or {}).items()],
        opset=opset,
    )
    return settle(import_model(proto, source="tiny"))


def ops(model: Model) -> list[str]:
    return [n.op_type for n in model.graph.nodes]


def assert_equivalent(before: Model, after: Model, seed: int = 0) -> None:
    """Same outputs on random inputs (rtol 1e-5)."""
    rng = np.random.default_rng(seed)
    inputs = {n: rng.standard_normal(before.graph.type_of(n).shape).astype(np.float32) for n in before.graph.inputs}
    expected = Executable(before).compile()(inputs)
    got = Executable(after).compile()(inputs)
    for e, g in zip(expected, got):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5 * max(1.0, float(np.abs(e).max())))


def rng_array(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _relu_to_abs() -> Rule:
    """A toy rule: Relu(Neg(x)) is left alone, any other Relu becomes Abs."""
    def match(node, view):
        return (node,)

    def check(match, view):
        return "input is a Neg" if view.producer(match[0].inputs[0], "Neg") else None

    def rewrite_fn(match, view):
        return Replacement(nodes=(match[0].replace(op_type="Abs"),))

    return Rule("relu_to_abs", "toy", frozenset({"Relu"}), match, check, rewrite_fn)


def _two_relus() -> Model:
    return tiny(
        [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Neg", ["a"], ["b"]),
         helper.make_node("Relu", ["b"], ["y"])],
        {"x": [2, 3]}, ["y"],
    )


def test_driver_fires_declines_with_reason_and_counts():
    result = rewrite(_two_relus(), RuleSet("toy", (_relu_to_abs(),)))
    assert ops(result.model) == ["Abs", "Neg", "Relu"]
    assert result.fired == {"relu_to_abs": 1}
    assert result.declined == {"relu_to_abs": {"input is a Neg": 1}}


def test_budget_limits_fires():
    model = tiny([helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Relu", ["a"], ["y"])], {"x": [2]}, ["y"])
    result = rewrite(model, RuleSet("toy", (_relu_to_abs(),)), budget=1)
    assert result.fired == {"relu_to_abs": 1}
    assert ops(result.model) == ["Abs", "Relu"]


def test_rule_sets_combine_in_order():
    a, b = RuleSet("a", (_relu_to_abs(),)), RuleSet("b", ())
    combined = a + b
    assert combined.name == "a+b" and list(combined) == [a.rules[0]]


def test_apply_rejects_a_replacement_that_reads_undefined_values():
    model = _two_relus()
    relu = model.graph.nodes[0]
    with pytest.raises(RewriteError, match="undefined"):
        apply(model, (relu,), Replacement(nodes=(relu.replace(inputs=("nowhere",)),)))


def test_new_tensors_become_weights_or_constants_by_size():
    model = _two_relus()
    neg = model.graph.nodes[1]
    big, small = np.ones(100, np.float32), np.ones(3, np.float32)
    replacement = Replacement(
        nodes=(neg.replace(op_type="Add", inputs=(neg.inputs[0], "s")),), tensors={"s": small, "unused": big})
    new = apply(model, (neg,), replacement)
    assert "s" in new.graph.constant_map and "unused" not in new.weights


def test_where_limits_a_rule_to_the_chosen_matches():
    model = tiny([helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Relu", ["a"], ["y"])],
                 {"x": [4]}, ["y"])
    only_second = rewrite(model, RuleSet("toy", (_relu_to_abs(),)),
                          where=lambda rule, match: match[-1].outputs[0] == "y")
    assert ops(only_second.model) == ["Relu", "Abs"]
    assert only_second.fired == {"relu_to_abs": 1}
    assert ops(rewrite(model, RuleSet("toy", (_relu_to_abs(),))).model) == ["Abs", "Abs"]
