"""Algebraic rules: each fires, declines with its reason where it must, and keeps outputs."""
from __future__ import annotations

import os

import numpy as np
import pytest
from onnx import TensorProto, helper

from autofuse.api import rule_families
from autofuse.frontend import import_model
from autofuse.rewrite import RuleSet, rewrite
from autofuse.rewrite import algebraic as al
from autofuse.settle import settle
from conftest import make_model
from test_rewrite_engine import assert_equivalent, ops, rng_array, tiny


def only(*rules) -> RuleSet:
    return RuleSet("t", tuple(rules))


def node(op, inputs, outputs, **attrs):
    return helper.make_node(op, inputs, outputs, **attrs)


def scalar(value: float) -> np.ndarray:
    return np.array(value, np.float32)


def fires(model, *rules, count: int = 1, equivalent: bool = True):
    """Rewrites with `rules`, asserts the first fired `count` times and the outputs match."""
    result = rewrite(model, only(*rules))
    assert result.fired.get(rules[0].name) == count, (result.fired, result.declined)
    if equivalent:
        assert_equivalent(model, result.model)
    return result


def declines(model, rule, reason: str) -> None:
    result = rewrite(model, only(rule))
    assert result.fired == {}
    assert reason in result.declined[rule.name], result.declined


# ---------------------------------------------------------------- identities

@pytest.mark.parametrize("op, const, first", [
    ("Mul", 1.0, False), ("Mul", 1.0, True), ("Add", 0.0, True), ("Sub", 0.0, False), ("Div", 1.0, False),
    ("Pow", 1.0, False),
])
def test_neutral_element_is_removed(op, const, first):
    inputs = ["k", "x"] if first else ["x", "k"]
    model = tiny([node(op, inputs, ["a"]), node("Relu", ["a"], ["y"])], {"x": [2, 3]}, ["y"],
                 {"k": np.full((3,), const, np.float32)})
    result = fires(model, al.REMOVE_NEUTRAL_ELEMENT)
    assert ops(result.model) == ["Relu"]


def test_neutral_element_declines_when_not_neutral_broadcasting_or_an_output():
    def model(op, inputs, k, out="a"):
        nodes = [node(op, inputs, [out])] + ([node("Relu", ["a"], ["y"])] if out == "a" else [])
        return tiny(nodes, {"x": [3]}, ["y"], {"k": k})
    declines(model("Sub", ["k", "x"], np.zeros(3, np.float32)), al.REMOVE_NEUTRAL_ELEMENT,
             "no operand is the neutral element")
    declines(model("Mul", ["x", "k"], np.ones((2, 3), np.float32)), al.REMOVE_NEUTRAL_ELEMENT,
             "the neutral operand broadcasts or casts the data")
    declines(model("Mul", ["x", "k"], np.ones(3, np.float32), out="y"), al.REMOVE_NEUTRAL_ELEMENT,
             "output 'y' is a graph output")


@pytest.mark.parametrize("op", ["Concat", "Sum", "Max", "Min", "Mean"])
def test_single_input_variadic_is_removed(op):
    attrs = {"axis": 0} if op == "Concat" else {}
    model = tiny([node(op, ["x"], ["a"], **attrs), node("Relu", ["a"], ["y"])], {"x": [2, 3]}, ["y"])
    assert ops(fires(model, al.REMOVE_SINGLE_INPUT_VARIADIC).model) == ["Relu"]


def test_two_input_concat_stays():
    model = tiny([node("Concat", ["x", "x"], ["a"], axis=0), node("Relu", ["a"], ["y"])], {"x": [2]}, ["y"])
    declines(model, al.REMOVE_SINGLE_INPUT_VARIADIC, "Concat has 2 inputs")


def test_cast_to_the_same_dtype_is_removed_other_casts_stay():
    nodes = [node("Cast", ["x"], ["a"], to=TensorProto.FLOAT), node("Relu", ["a"], ["y"])]
    assert ops(fires(tiny(nodes, {"x": [2, 3]}, ["y"]), al.REMOVE_NOOP_CAST).model) == ["Relu"]
    nodes = [node("Cast", ["x"], ["a"], to=TensorProto.DOUBLE), node("Relu", ["a"], ["y"])]
    declines(tiny(nodes, {"x": [2, 3]}, ["y"]), al.REMOVE_NOOP_CAST, "casts float32 to float64")


def test_reshape_to_the_same_shape_is_removed():
    nodes = [node("Reshape", ["x", "s"], ["a"]), node("Relu", ["a"], ["y"])]
    same = tiny(nodes, {"x": [2, 3]}, ["y"], {"s": np.array([2, -1], np.int64)})
    assert ops(fires(same, al.REMOVE_NOOP_RESHAPE).model) == ["Relu"]
    other = tiny(nodes, {"x": [2, 3]}, ["y"], {"s": np.array([3, 2], np.int64)})
    declines(other, al.REMOVE_NOOP_RESHAPE, "changes the shape (2, 3) to (3, 2)")


def _shape_chain(extra_consumer: bool):
    nodes = [node("Reshape", ["x", "s"], ["a"]), node("Unsqueeze", ["a", "ax"], ["b"]),
             node("Flatten", ["b"], ["c"], axis=2), node("Relu", ["c"], ["y"])]
    outputs = ["y"]
    if extra_consumer:
        nodes.append(node("Neg", ["b"], ["z"]))
        outputs.append("z")
    return tiny(nodes, {"x": [2, 3, 4]}, outputs, {"s": np.array([6, 4], np.int64), "ax": np.array([0], np.int64)})


def test_shape_chains_collapse_to_one_reshape():
    result = fires(_shape_chain(False), al.COLLAPSE_SHAPE_CHAIN, count=2)
    assert ops(result.model) == ["Reshape", "Relu"]
    assert result.model.graph.type_of(result.model.graph.nodes[0].outputs[0]).shape == (6, 4)


def test_shape_chain_with_a_shared_middle_declines():
    result = rewrite(_shape_chain(True), only(al.COLLAPSE_SHAPE_CHAIN))
    assert result.fired == {"collapse_shape_chain": 1}  # Unsqueeze(Reshape) still collapses
    assert result.declined["collapse_shape_chain"]["'b' has another consumer"] == 1


@pytest.mark.parametrize("op, rule", [("Neg", al.DOUBLE_NEGATION), ("Reciprocal", al.DOUBLE_RECIPROCAL)])
def test_involutions_cancel(op, rule):
    nodes = [node(op, ["x"], ["a"]), node(op, ["a"], ["b"]), node("Relu", ["b"], ["y"])]
    assert ops(fires(tiny(nodes, {"x": [2, 3]}, ["y"]), rule).model) == ["Relu"]
    declines(tiny([node(op, ["x"], ["b"]), node("Relu", ["b"], ["y"])], {"x": [2]}, ["y"]), rule,
             f"the input is not a {op}")


@pytest.mark.parametrize("op, negated, expected", [
    ("Add", [1], ["Sub"]), ("Add", [0], ["Sub"]), ("Sub", [1], ["Add"]), ("Mul", [0, 1], ["Mul"]),
    ("Div", [0, 1], ["Div"]),
])
def test_negations_are_absorbed(op, negated, expected):
    names = ["p", "q"]
    nodes = [node("Neg", [names[i]], [f"n{i}"]) for i in negated]
    operands = [f"n{i}" if i in negated else names[i] for i in range(2)]
    model = tiny(nodes + [node(op, operands, ["y"])], {"p": [2, 3], "q": [3]}, ["y"])
    assert ops(fires(model, al.ABSORB_NEGATION).model) == expected


def test_negation_read_elsewhere_is_not_absorbed():
    nodes = [node("Neg", ["q"], ["n"]), node("Add", ["p", "n"], ["y"]), node("Relu", ["n"], ["z"])]
    declines(tiny(nodes, {"p": [3], "q": [3]}, ["y", "z"]), al.ABSORB_NEGATION,
             "no operand is a negation read only here")


# ---------------------------------------------------------------- constant chains

def test_division_by_a_constant_becomes_a_product():
    model = tiny([node("Div", ["x", "k"], ["y"])], {"x": [2, 4]}, ["y"], {"k": np.float32([1.5, -2, 3, 0.25])})
    assert ops(fires(model, al.DIV_BY_CONSTANT_TO_MUL).model) == ["Mul"]
    zero = tiny([node("Div", ["x", "k"], ["y"])], {"x": [2]}, ["y"], {"k": np.float32([1, 0])})
    declines(zero, al.DIV_BY_CONSTANT_TO_MUL, "the divisor has zeros or non-finite values")


def _int_model(nodes, inputs, outputs, initializers=()):
    proto = make_model(nodes, [helper.make_tensor_value_info(n, TensorProto.INT64, s) for n, s in inputs.items()],
                       [helper.make_tensor_value_info(n, TensorProto.INT64, None) for n in outputs],
                       [helper.make_tensor(n, TensorProto.INT64, a.shape, a.reshape(-1)) for n, a in initializers])
    return settle(import_model(proto, source="int"))


def test_integer_division_stays_a_division():
    model = _int_model([node("Div", ["x", "k"], ["y"])], {"x": [3]}, ["y"], [("k", np.array([2], np.int64))])
    declines(model, al.DIV_BY_CONSTANT_TO_MUL, "Div output is int64, not floating point")


def test_integer_constant_adds_combine_exactly():
    big = np.array([2 ** 60 + 1], np.int64)
    nodes = [node("Add", ["x", "a"], ["s"]), node("Sub", ["s", "b"], ["y"])]
    model = _int_model(nodes, {"x": [3]}, ["y"], [("a", big), ("b", np.array([2 ** 60], np.int64))])
    result = rewrite(model, only(al.COMBINE_CONSTANT_ADDS))
    assert result.fired == {"combine_constant_adds": 1}
    offset = result.model.graph.constant_map[result.model.graph.nodes[0].inputs[1]]
    assert offset.dtype == np.int64 and offset.tolist() == [1]


def test_constant_products_combine():
    nodes = [node("Mul", ["x", "a"], ["m"]), node("Mul", ["b", "m"], ["y"])]
    model = tiny(nodes, {"x": [2, 4, 3]}, ["y"], {"a": rng_array(4, 1), "b": scalar(0.5)})
    assert ops(fires(model, al.COMBINE_CONSTANT_MULS).model) == ["Mul"]
    grow = tiny(nodes, {"x": [2, 4, 3]}, ["y"], {"a": rng_array(4, 1), "b": rng_array(1, 3)})
    declines(grow, al.COMBINE_CONSTANT_MULS, "combining [4, 1] and [1, 3] constants would grow them to [4, 3]")


@pytest.mark.parametrize("inner, outer", [
    (["x", "a"], ("Add", ["s", "b"])), (["a", "x"], ("Sub", ["s", "b"])), (["x", "a"], ("Sub", ["b", "s"])),
])
@pytest.mark.parametrize("inner_op", ["Add", "Sub"])
def test_constant_sums_combine(inner, outer, inner_op):
    nodes = [node(inner_op, inner, ["s"]), node(outer[0], outer[1], ["y"])]
    model = tiny(nodes, {"x": [2, 3]}, ["y"], {"a": rng_array(3), "b": rng_array(1, 3, seed=1)})
    assert len(ops(fires(model, al.COMBINE_CONSTANT_ADDS).model)) == 1


def test_constant_sum_read_elsewhere_stays():
    nodes = [node("Add", ["x", "a"], ["s"]), node("Add", ["s", "b"], ["y"]), node("Relu", ["s"], ["z"])]
    model = tiny(nodes, {"x": [3]}, ["y", "z"], {"a": rng_array(3), "b": rng_array(3, seed=1)})
    declines(model, al.COMBINE_CONSTANT_ADDS, "the other operand is not a sum with a constant read only here")


def _bn_model(follower_nodes, consts):
    rng = np.random.default_rng(3)
    weights = {"scale": rng.uniform(0.5, 2, 4).astype(np.float32), "bias": rng_array(4, seed=4),
               "mean": rng_array(4, seed=5), "var": rng.uniform(0.5, 2, 4).astype(np.float32), **consts}
    nodes = [node("BatchNormalization", ["x", "scale", "bias", "mean", "var"], ["n"])] + follower_nodes
    return tiny(nodes, {"x": [2, 4, 3, 3]}, ["y"], weights)


def test_per_channel_mul_and_add_join_batchnorm():
    nodes = [node("Mul", ["n", "k"], ["m"]), node("Add", ["c", "m"], ["a"]), node("Div", ["a", "d"], ["y"])]
    model = _bn_model(nodes, {"k": rng_array(4, 1, 1), "c": rng_array(1, 4, 1, 1, seed=1), "d": scalar(3.0)})
    result = fires(model, al.AFFINE_INTO_BATCHNORM, count=3)
    assert ops(result.model) == ["BatchNormalization"]


def test_spatially_varying_constant_does_not_join_batchnorm():
    model = _bn_model([node("Mul", ["n", "k"], ["y"])], {"k": rng_array(3, 1)})
    declines(model, al.AFFINE_INTO_BATCHNORM, "the constant [3, 1] varies along an axis other than the channels")


# ---------------------------------------------------------------- scalar scales

def _attention(bias: bool = True, shared_weight: bool = False):
    """q = x @ wq (+ bq) -> heads; scores = q @ k^T * 0.125 -> Softmax."""
    nodes = [node("MatMul", ["x", "wq"], ["q0"])]
    if bias:
        nodes.append(node("Add", ["q0", "bq"], ["q1"]))
    q = "q1" if bias else "q0"
    nodes += [node("Reshape", [q, "heads"], ["q2"]), node("Transpose", ["q2"], ["q3"], perm=[0, 2, 1, 3]),
              node("Reshape", ["k", "heads"], ["k2"]), node("Transpose", ["k2"], ["k3"], perm=[0, 2, 3, 1]),
              node("MatMul", ["q3", "k3"], ["s"]), node("Mul", ["s", "scale"], ["t"]),
              node("Softmax", ["t"], ["y"], axis=-1)]
    outputs = ["y"]
    if shared_weight:
        nodes.append(node("MatMul", ["x", "wq"], ["z"]))
        outputs.append("z")
    weights = {"wq": rng_array(8, 8), "bq": rng_array(8, seed=1), "heads": np.array([1, 6, 2, 4], np.int64),
               "scale": scalar(0.125)}
    return tiny(nodes, {"x": [1, 6, 8], "k": [1, 6, 8]}, outputs, weights)


@pytest.mark.parametrize("bias", [True, False])
def test_attention_scale_folds_into_the_query_weight(bias):
    model = _attention(bias)
    result = fires(model, al.FOLD_SCALE_INTO_WEIGHT)
    assert "Mul" not in ops(result.model)


def test_scale_does_not_fold_into_a_shared_weight():
    declines(_attention(shared_weight=True), al.FOLD_SCALE_INTO_WEIGHT,
             "producer: MatMul A: tensor 'wq' is shared with another node; MatMul B: 'k' is an input or a weight; "
             "consumer: Softmax does not take the scale into a weight")


def test_scale_folds_into_the_split_columns_of_a_fused_projection():
    """GPT-2's c_attn: one Gemm makes q, k and v; only q's columns take the scale."""
    nodes = [node("Gemm", ["x", "w", "b"], ["g"]), node("Reshape", ["g", "s3"], ["g3"]),
             node("Split", ["g3", "sizes"], ["q", "k", "v"], axis=2),
             node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]), node("MatMul", ["q", "kt"], ["s"]),
             node("Mul", ["s", "scale"], ["t"]), node("Softmax", ["t"], ["p"], axis=-1),
             node("MatMul", ["p", "v"], ["y"])]
    model = tiny(nodes, {"x": [6, 8]}, ["y"], {
        "w": rng_array(8, 12), "b": rng_array(12, seed=1), "s3": np.array([1, 6, 12], np.int64),
        "sizes": np.array([4, 4, 4], np.int64), "scale": scalar(0.3)})
    result = fires(model, al.FOLD_SCALE_INTO_WEIGHT)
    assert "Mul" not in ops(result.model)


def test_split_along_another_axis_declines():
    nodes = [node("MatMul", ["x", "w"], ["g"]), node("Split", ["g", "sizes"], ["a", "b"], axis=0),
             node("Mul", ["a", "scale"], ["m"]), node("Add", ["m", "b"], ["y"])]
    model = tiny(nodes, {"x": [4, 3]}, ["y"], {"w": rng_array(3, 5), "sizes": np.array([2, 2], np.int64),
                                                "scale": scalar(2.0)})
    declines(model, al.FOLD_SCALE_INTO_WEIGHT,
             "producer: Split is not along the last axis; consumer: Add does not take the scale into a weight")


@pytest.mark.parametrize("consumer", ["MatMul", "Gemm", "Conv"])
def test_scale_folds_into_the_consumer_weight(consumer):
    """GELU's 0.5: x * 0.5 * gelu_part -> Reshape -> the next layer's weight."""
    if consumer == "Conv":
        shapes, w, reshape = {"x": [1, 4, 5, 5], "g": [1, 4, 5, 5]}, rng_array(3, 4, 3, 3), [1, 4, 5, 5]
    else:
        shapes, w, reshape = {"x": [2, 3, 4], "g": [2, 3, 4]}, rng_array(4, 5), [6, 4]
    inputs = ["r", "w", "b"] if consumer == "Gemm" else ["r", "w"]
    attrs = {"pads": [1, 1, 1, 1]} if consumer == "Conv" else {}
    nodes = [node("Mul", ["x", "half"], ["h"]), node("Mul", ["h", "g"], ["p"]),
             node("Reshape", ["p", "shape"], ["r"]), node(consumer, inputs, ["y"], **attrs)]
    model = tiny(nodes, shapes, ["y"], {"half": scalar(0.5), "w": w, "b": rng_array(5, seed=2),
                                        "shape": np.array(reshape, np.int64)})
    result = fires(model, al.FOLD_SCALE_INTO_WEIGHT)
    assert ops(result.model) == ["Mul", "Reshape", consumer]


def test_scale_through_a_nonlinear_op_declines():
    nodes = [node("MatMul", ["x", "w"], ["m"]), node("Tanh", ["m"], ["t"]), node("Mul", ["t", "s"], ["u"]),
             node("Tanh", ["u"], ["y"])]
    model = tiny(nodes, {"x": [2, 3]}, ["y"], {"w": rng_array(3, 3), "s": scalar(2.0)})
    declines(model, al.FOLD_SCALE_INTO_WEIGHT,
             "producer: Tanh is not linear in its input; consumer: Tanh does not take the scale into a weight")


def test_scale_moves_to_the_smaller_matmul_operand():
    nodes = [node("MatMul", ["a", "b"], ["m"]), node("Mul", ["m", "s"], ["y"])]
    model = tiny(nodes, {"a": [2, 16, 4], "b": [2, 4, 16]}, ["y"], {"s": scalar(0.125)})
    result = fires(model, al.SCALE_THROUGH_MATMUL)
    assert ops(result.model) == ["Mul", "MatMul"]
    assert result.model.graph.type_of(result.model.graph.nodes[0].outputs[0]).shape == (2, 16, 4)
    wide = tiny(nodes, {"a": [4, 16], "b": [16, 4]}, ["y"], {"s": scalar(0.125)})
    declines(wide, al.SCALE_THROUGH_MATMUL, "no MatMul operand is smaller than the product (16 elements)")


@pytest.mark.parametrize("op, s, expected", [
    ("ReduceSum", 0.5, "ReduceSum"), ("ReduceMean", -2.0, "ReduceMean"), ("ReduceMax", -2.0, "ReduceMin"),
    ("ReduceMin", 3.0, "ReduceMin"), ("ReduceSumSquare", -1.5, "ReduceSumSquare"), ("ReduceL2", -1.5, "ReduceL2"),
    ("ReduceL1", -0.5, "ReduceL1"),
])
def test_scale_moves_after_a_reduction(op, s, expected):
    axes = {"inputs": ["m", "axes"]} if op == "ReduceSum" else {"inputs": ["m"], "axes": [1]}  # opset 17
    nodes = [node("Mul", ["x", "s"], ["m"]), node(op, axes.pop("inputs"), ["y"], keepdims=0, **axes)]
    model = tiny(nodes, {"x": [3, 8, 2]}, ["y"], {"s": scalar(s), "axes": np.array([1], np.int64)})
    result = fires(model, al.SCALE_AFTER_REDUCTION)
    assert ops(result.model) == [expected, "Mul"]


def test_reduction_that_keeps_every_element_declines():
    nodes = [node("Mul", ["x", "s"], ["m"]), node("ReduceSum", ["m", "axes"], ["y"])]
    declines(tiny(nodes, {"x": [3, 1]}, ["y"], {"s": scalar(2.0), "axes": np.array([1], np.int64)}),
             al.SCALE_AFTER_REDUCTION,
             "the reduction keeps every element")


# ---------------------------------------------------------------- distributive, powers, roots

@pytest.mark.parametrize("op, left, right", [
    ("Add", ["a", "b"], ["a", "c"]), ("Sub", ["b", "a"], ["c", "a"]), ("Add", ["a", "b"], ["c", "a"]),
])
def test_common_factor_is_pulled_out(op, left, right):
    nodes = [node("Mul", left, ["l"]), node("Mul", right, ["r"]), node(op, ["l", "r"], ["y"])]
    model = tiny(nodes, {"a": [2, 3], "b": [3], "c": [2, 1]}, ["y"])
    assert ops(fires(model, al.DISTRIBUTE_COMMON_FACTOR).model) == [op, "Mul"]


def test_common_factor_with_a_shared_product_declines():
    nodes = [node("Mul", ["a", "b"], ["l"]), node("Mul", ["a", "c"], ["r"]), node("Add", ["l", "r"], ["y"]),
             node("Relu", ["l"], ["z"])]
    declines(tiny(nodes, {"a": [3], "b": [3], "c": [3]}, ["y", "z"]), al.DISTRIBUTE_COMMON_FACTOR,
             "not both operands are products read only here")


@pytest.mark.parametrize("e, muls", [(2.0, 1), (3.0, 2), (4.0, 2)])
def test_small_integer_powers_become_products(e, muls):
    model = tiny([node("Pow", ["x", "e"], ["y"])], {"x": [2, 5]}, ["y"], {"e": scalar(e)})
    assert ops(fires(model, al.POW_TO_MUL).model) == ["Mul"] * muls
    odd = tiny([node("Pow", ["x", "e"], ["y"])], {"x": [2, 5]}, ["y"], {"e": scalar(5.0)})
    declines(odd, al.POW_TO_MUL, "exponent 5 is not one of 2, 3, 4")


def test_integer_square_becomes_a_product():
    model = _int_model([node("Pow", ["x", "e"], ["y"])], {"x": [4]}, ["y"], [("e", np.array(2, np.int64))])
    result = rewrite(model, only(al.POW_TO_MUL))
    assert ops(result.model) == ["Mul"]


@pytest.mark.parametrize("e, expected", [
    (0.5, ["Sqrt"]), (-0.5, ["Sqrt", "Reciprocal"]), (-1.0, ["Reciprocal"]), (-2.0, ["Mul", "Reciprocal"]),
])
def test_fractional_and_negative_powers_become_roots_and_reciprocals(e, expected):
    nodes = [node("Abs", ["x"], ["a"]), node("Pow", ["a", "e"], ["y"])]
    model = tiny(nodes, {"x": [2, 5]}, ["y"], {"e": scalar(e)})
    assert ops(fires(model, al.POW_TO_SQRT_OR_RECIPROCAL).model) == ["Abs"] + expected
    broadcast = tiny([node("Pow", ["x", "e"], ["y"])], {"x": [5]}, ["y"], {"e": np.full((2, 1), e, np.float32)})
    declines(broadcast, al.POW_TO_SQRT_OR_RECIPROCAL,
             "the exponent is not a scalar constant (or it broadcasts the base)")


def test_square_roots_of_a_non_negative_value_merge():
    """(A * sqrt(B)) * (sqrt(B) * C) -> A * C * B, with B = Relu(x) >= 0."""
    nodes = [node("Relu", ["x"], ["b"]), node("Sqrt", ["b"], ["r"]), node("Mul", ["a", "r"], ["l"]),
             node("Mul", ["r", "c"], ["m"]), node("Mul", ["l", "m"], ["y"])]
    model = tiny(nodes, {"x": [2, 3], "a": [3], "c": [2, 1]}, ["y"])
    assert ops(fires(model, al.MERGE_SQRT_PAIR).model) == ["Relu", "Mul", "Mul"]
    squared = tiny([node("Exp", ["x"], ["b"]), node("Sqrt", ["b"], ["r"]), node("Mul", ["r", "r"], ["s"]),
                    node("Neg", ["s"], ["y"])], {"x": [4]}, ["y"])
    assert ops(fires(squared, al.MERGE_SQRT_PAIR).model) == ["Exp", "Neg"]


def test_square_roots_of_a_possibly_negative_value_stay():
    nodes = [node("Sqrt", ["x"], ["r"]), node("Mul", ["r", "r"], ["s"]), node("Neg", ["s"], ["y"])]
    declines(tiny(nodes, {"x": [4]}, ["y"]), al.MERGE_SQRT_PAIR, "'x' is not provably non-negative")


def test_reciprocals_share_one_division():
    """Recip(A) * Recip(A * B) -> Recip(A * (A * B)): one reciprocal instead of two."""
    nodes = [node("Mul", ["a", "b"], ["ab"]), node("Reciprocal", ["a"], ["ra"]), node("Reciprocal", ["ab"], ["rab"]),
             node("Mul", ["ra", "rab"], ["y"])]
    model = tiny(nodes, {"a": [2, 3], "b": [3]}, ["y"])
    assert ops(fires(model, al.RECIPROCAL_PRODUCT).model) == ["Mul", "Mul", "Reciprocal"]
    nodes.append(node("Neg", ["ra"], ["z"]))
    declines(tiny(nodes, {"a": [2, 3], "b": [3]}, ["y", "z"]), al.RECIPROCAL_PRODUCT,
             "not both operands are Reciprocal read only here")


@pytest.mark.parametrize("numerator", [True, False])
def test_division_chains_need_one_division(numerator):
    inner = node("Div", ["a", "b"], ["q"])
    outer = node("Div", ["q", "c"] if numerator else ["c", "q"], ["y"])
    model = tiny([inner, outer], {"a": [2, 3], "b": [3], "c": [2, 1]}, ["y"])
    assert sorted(ops(fires(model, al.DIV_CHAIN).model)) == ["Div", "Mul"]
    shared = tiny([inner, outer, node("Neg", ["q"], ["z"])], {"a": [3], "b": [3], "c": [3]}, ["y", "z"])
    declines(shared, al.DIV_CHAIN, "no operand is a division read only here")


def test_product_of_exponentials_is_one_exponential():
    nodes = [node("Exp", ["a"], ["ea"]), node("Exp", ["b"], ["eb"]), node("Mul", ["ea", "eb"], ["y"])]
    model = tiny(nodes, {"a": [2, 3], "b": [3]}, ["y"])
    assert ops(fires(model, al.EXP_PRODUCT).model) == ["Add", "Exp"]
    square = tiny([node("Exp", ["a"], ["ea"]), node("Mul", ["ea", "ea"], ["y"])], {"a": [3]}, ["y"])
    declines(square, al.EXP_PRODUCT, "not two distinct operands")


@pytest.mark.parametrize("opset", [11, 17, 18])
@pytest.mark.parametrize("keepdims", [0, 1])
def test_product_of_exponentials_reduces_as_a_sum(opset, keepdims):
    axes = {"axes": [1]} if opset < 18 else {}
    inputs = ["e"] if opset < 18 else ["e", "axes"]
    nodes = [node("Exp", ["x"], ["e"]), node("ReduceProd", inputs, ["y"], keepdims=keepdims, **axes)]
    model = tiny(nodes, {"x": [2, 6, 3]}, ["y"], {"axes": np.array([1], np.int64)} if opset >= 18 else {},
                 opset=opset)
    assert ops(fires(model, al.REDUCE_PROD_OF_EXP).model) == ["ReduceSum", "Exp"]
    nodes.append(node("Neg", ["e"], ["z"]))
    shared = tiny(nodes, {"x": [2, 6, 3]}, ["y", "z"], {"axes": np.array([1], np.int64)} if opset >= 18 else {},
                  opset=opset)
    declines(shared, al.REDUCE_PROD_OF_EXP, "the input is not an Exp read only here")


# ---------------------------------------------------------------- the family

def test_algebraic_runs_between_folding_and_layout():
    families = list(rule_families())
    assert families.index("folding") < families.index("algebraic") < families.index("layout")
    assert len({rule.name for rule in al.ALGEBRAIC}) == len(al.ALGEBRAIC) >= 12


def test_gelu_and_layernorm_shapes_simplify_together():
    """GPT-2's tanh GELU and a hand-written LayerNorm: every rule of the set competes."""
    nodes = [node("Mul", ["x", "half"], ["h"]), node("Pow", ["x", "three"], ["cube"]),
             node("Mul", ["cube", "c"], ["cc"]), node("Add", ["x", "cc"], ["inner"]),
             node("Mul", ["inner", "k"], ["ik"]), node("Tanh", ["ik"], ["t"]), node("Add", ["t", "one"], ["t1"]),
             node("Mul", ["h", "t1"], ["g"]), node("ReduceMean", ["g"], ["mu"], axes=[-1]),
             node("Sub", ["g", "mu"], ["d"]), node("Pow", ["d", "two"], ["d2"]),
             node("ReduceMean", ["d2"], ["var"], axes=[-1]), node("Add", ["var", "eps"], ["ve"]),
             node("Sqrt", ["ve"], ["sd"]), node("Div", ["d", "sd"], ["n"]), node("MatMul", ["n", "w"], ["y"])]
    model = tiny(nodes, {"x": [4, 8]}, ["y"], {
        "half": scalar(0.5), "three": scalar(3.0), "c": scalar(0.044715), "k": scalar(0.7978845608),
        "one": scalar(1.0), "two": scalar(2.0), "eps": scalar(1e-5), "w": rng_array(8, 8)})
    result = rewrite(model, al.ALGEBRAIC)
    assert result.fired == {"pow_to_mul": 2}
    assert "Pow" not in ops(result.model)
    assert_equivalent(model, result.model)


@pytest.mark.slow
@pytest.mark.parametrize("name, expected", [
    ("zoo:bert_base", {"fold_scale_into_weight": 24, "div_by_constant_to_mul": 12}),
    ("zoo:gpt2", {"pow_to_mul": 12, "remove_single_input_variadic": 24, "remove_noop_cast": 12}),
])
def test_transformers_keep_their_outputs(name, expected):
    from autofuse.api import compile_model, example_inputs, import_onnx, rewrite_model
    from autofuse.errors import ModelLoadError

    try:
        model = import_onnx(name)
    except ModelLoadError as error:
        if os.environ.get("CI"):
            raise
        pytest.skip(str(error))
    result = rewrite_model(model, ["folding", "algebraic"])
    assert expected.items() <= result.fired.items()
    inputs = example_inputs(model)
    for want, got in zip(compile_model(model)(inputs), compile_model(result.model)(inputs)):
        assert float(np.abs(got - want).max()) <= 1e-5 * float(np.abs(want).max())
