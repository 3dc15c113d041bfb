"""Channels-last rules: each fires, declines with a reason where it must, keeps outputs."""
from __future__ import annotations

import pytest
from onnx import helper

from autofuse.rewrite import RuleSet, rewrite
from autofuse.rewrite import transpose as tr
from autofuse.rewrite.folding import FOLDING
from autofuse.rewrite.layout import LAYOUT
from test_rewrite_engine import assert_equivalent, ops, rng_array, tiny

NHWC, NCHW = [0, 2, 3, 1], [0, 3, 1, 2]


def only(rule) -> RuleSet:
    return RuleSet(rule.name, (rule,))


def node(op, inputs, outputs, **attrs):
    return helper.make_node(op, inputs, outputs, **attrs)


def to_nchw(x="x", out="t"):
    """x is NHWC; t = Transpose(x) is NCHW."""
    return node("Transpose", [x], [out], perm=NCHW)


@pytest.mark.parametrize("attrs, w_shape", [
    ({}, (6, 4, 3, 3)),
    ({"strides": [2, 1], "pads": [1, 0, 2, 1], "dilations": [1, 2]}, (6, 4, 3, 2)),
    ({"group": 2, "auto_pad": "SAME_UPPER"}, (6, 2, 3, 3)),
    ({"group": 4, "pads": [1, 1, 1, 1]}, (4, 1, 3, 3)),
])
@pytest.mark.parametrize("bias", [True, False])
def test_conv_becomes_nhwc_with_an_hwio_weight(attrs, w_shape, bias):
    inputs = ["x", "w", "b"] if bias else ["x", "w"]
    model = tiny([node("Conv", inputs, ["y"], **attrs)], {"x": [2, 4, 7, 8]}, ["y"],
                 {"w": rng_array(*w_shape), "b": rng_array(w_shape[0], seed=1)})
    result = rewrite(model, only(tr.CONV_TO_NHWC))
    assert result.fired == {"conv_to_nhwc": 1}
    assert ops(result.model) == ["Transpose", "ConvNHWC", "Transpose"]
    weight = result.model.graph.nodes[1].inputs[1]
    assert result.model.graph.type_of(weight).shape == w_shape[2:] + (w_shape[1], w_shape[0])
    assert_equivalent(model, result.model)


def test_conv_declines_other_ranks_and_runtime_weights():
    one_d = tiny([node("Conv", ["x", "w"], ["y"])], {"x": [1, 4, 9]}, ["y"], {"w": rng_array(2, 4, 3)})
    assert rewrite(one_d, only(tr.CONV_TO_NHWC)).declined == {"conv_to_nhwc": {"1-D convolution, not 2-D": 1}}
    runtime = tiny([node("Conv", ["x", "w"], ["y"])], {"x": [1, 4, 5, 5], "w": [2, 4, 3, 3]}, ["y"])
    assert rewrite(runtime, only(tr.CONV_TO_NHWC)).declined == {"conv_to_nhwc": {"Conv weights are not constant": 1}}


@pytest.mark.parametrize("bias", [True, False])
def test_pointwise_nhwc_conv_is_a_plain_matmul(bias):
    inputs = ["x", "w", "b"] if bias else ["x", "w"]
    model = tiny([node("Conv", inputs, ["y"])], {"x": [2, 8, 5, 6]}, ["y"],
                 {"w": rng_array(16, 8, 1, 1), "b": rng_array(16, seed=1)})
    result = rewrite(model, RuleSet("t", (tr.CONV_TO_NHWC, tr.NHWC_CONV1X1_TO_MATMUL)))
    assert result.fired == {"conv_to_nhwc": 1, "nhwc_conv1x1_to_matmul": 1}
    assert ops(result.model) == ["Transpose", "MatMul"] + (["Add"] if bias else []) + ["Transpose"]
    assert_equivalent(model, result.model)


def test_strided_pointwise_nhwc_conv_stays():
    model = tiny([node("Conv", ["x", "w"], ["y"], strides=[2, 2])], {"x": [1, 8, 6, 6]}, ["y"],
                 {"w": rng_array(4, 8, 1, 1)})
    result = rewrite(model, RuleSet("t", (tr.CONV_TO_NHWC, tr.NHWC_CONV1X1_TO_MATMUL)))
    assert result.declined == {"nhwc_conv1x1_to_matmul": {"stride is not 1": 1}}
    assert_equivalent(model, result.model)


def test_transposes_that_cancel_disappear_and_others_compose():
    nodes = [node("Transpose", ["x"], ["a"], perm=NHWC), node("Transpose", ["a"], ["b"], perm=NCHW),
             node("Relu", ["b"], ["r"]), node("Transpose", ["r"], ["c"], perm=[1, 0, 2, 3]),
             node("Transpose", ["c"], ["y"], perm=[0, 2, 1, 3])]
    model = tiny(nodes, {"x": [2, 3, 4, 5]}, ["y"])
    result = rewrite(model, only(tr.COMPOSE_TRANSPOSES))
    assert result.fired == {"compose_transposes": 2}
    assert ops(result.model) == ["Relu", "Transpose"]
    assert result.model.graph.nodes[1].attr("perm") == (1, 2, 0, 3)
    assert_equivalent(model, result.model)


def test_a_cancelling_pair_that_writes_a_graph_output_leaves_an_identity():
    nodes = [node("Transpose", ["x"], ["a"], perm=NHWC), node("Transpose", ["a"], ["y"], perm=NCHW)]
    model = tiny(nodes, {"x": [2, 3, 4, 5]}, ["y"])
    result = rewrite(model, only(tr.COMPOSE_TRANSPOSES))
    assert result.fired == {"compose_transposes": 1}
    assert ops(result.model) == ["Identity"]
    assert_equivalent(model, result.model)


def test_identity_perm_is_removed_unless_it_writes_an_output():
    nodes = [node("Transpose", ["x"], ["a"], perm=[0, 1, 2]), node("Relu", ["a"], ["r"]),
             node("Transpose", ["r"], ["y"], perm=[0, 1, 2])]
    model = tiny(nodes, {"x": [2, 3, 4]}, ["y"])
    result = rewrite(model, only(tr.REMOVE_IDENTITY_TRANSPOSE))
    assert result.fired == {"remove_identity_transpose": 1}
    assert result.declined == {"remove_identity_transpose": {"the output is a graph output": 1}}
    assert ops(result.model) == ["Relu", "Transpose"]
    assert_equivalent(model, result.model)


def test_transpose_of_size_one_dims_is_a_reshape():
    nodes = [node("Transpose", ["x"], ["y"], perm=NCHW), node("Transpose", ["x2"], ["z"], perm=NCHW)]
    model = tiny(nodes, {"x": [2, 1, 1, 5], "x2": [2, 3, 1, 5]}, ["y", "z"])
    result = rewrite(model, only(tr.TRANSPOSE_AS_RESHAPE))
    assert result.fired == {"transpose_as_reshape": 1}
    assert result.declined == {"transpose_as_reshape": {"the transpose reorders dims larger than 1": 1}}
    assert ops(result.model) == ["Reshape", "Transpose"]
    assert_equivalent(model, result.model)


def test_a_conv_on_a_1x1_image_goes_nhwc_through_a_reshape():
    # conv_to_nhwc's new Transpose has no output type until the pass ends; DenseNet-121's classifier.
    model = tiny([node("Conv", ["x", "w"], ["y"])], {"x": [1, 8, 1, 1]}, ["y"], {"w": rng_array(4, 8, 1, 1)})
    result = rewrite(model, LAYOUT)
    assert result.fired["conv_to_nhwc"] == 1 and result.fired["transpose_as_reshape"] >= 1
    assert "Transpose" not in ops(result.model)
    assert_equivalent(model, result.model)


@pytest.mark.parametrize("op, extra, weights", [
    ("Relu", [], {}), ("Sigmoid", [], {}), ("Clip", ["lo", "hi"], {"lo": rng_array(), "hi": rng_array() + 2}),
    ("LeakyRelu", [], {}),
])
def test_unary_ops_move_below_the_transpose(op, extra, weights):
    model = tiny([to_nchw(), node(op, ["t"] + extra, ["y"])], {"x": [2, 4, 5, 3]}, ["y"], weights)
    result = rewrite(model, only(tr.UNARY_THROUGH_TRANSPOSE))
    assert result.fired == {"unary_through_transpose": 1}
    assert ops(result.model) == [op, "Transpose"]
    assert_equivalent(model, result.model)


def test_unary_declines_without_a_transpose_or_with_a_tensor_operand():
    model = tiny([node("Relu", ["x"], ["y"])], {"x": [2, 3]}, ["y"])
    assert rewrite(model, only(tr.UNARY_THROUGH_TRANSPOSE)).declined == {
        "unary_through_transpose": {"the input is not a Transpose": 1}}
    model = tiny([to_nchw(), node("Clip", ["t", "lo"], ["y"])], {"x": [2, 4, 5, 3], "lo": [1]}, ["y"])
    assert rewrite(model, only(tr.UNARY_THROUGH_TRANSPOSE)).declined == {
        "unary_through_transpose": {"an extra input is not a scalar constant": 1}}


@pytest.mark.parametrize("op, c_shape, constant_first", [
    ("Add", (3, 1, 1), False), ("Mul", (1, 3, 1, 1), True), ("Sub", (), True),
    ("Div", (5,), False), ("Add", (4, 5), False), ("PRelu", (3, 1, 1), False),
])
def test_constant_operands_are_transposed_at_rewrite_time(op, c_shape, constant_first):
    c = rng_array(*c_shape, seed=3) + 3.0
    inputs = ["c", "t"] if constant_first else ["t", "c"]
    model = tiny([to_nchw(), node(op, inputs, ["y"])], {"x": [2, 4, 5, 3]}, ["y"], {"c": c})
    result = rewrite(model, only(tr.CONSTANT_THROUGH_TRANSPOSE))
    assert result.fired == {"constant_operand_through_transpose": 1}
    assert ops(result.model) == [op, "Transpose"]
    assert_equivalent(model, result.model)


def test_a_constant_that_grows_the_output_declines():
    model = tiny([to_nchw(), node("Add", ["t", "c"], ["y"])], {"x": [2, 4, 5, 1]}, ["y"],
                 {"c": rng_array(3, 1, 1)})
    assert rewrite(model, only(tr.CONSTANT_THROUGH_TRANSPOSE)).declined == {
        "constant_operand_through_transpose": {"the constant broadcasts the output to another shape": 1}}


@pytest.mark.parametrize("op", ["Add", "Sum", "Max"])
def test_operands_with_one_perm_move_below_it(op):
    nodes = [to_nchw("a", "ta"), to_nchw("b", "tb"), node(op, ["ta", "tb"], ["y"])]
    model = tiny(nodes, {"a": [2, 4, 5, 3], "b": [2, 4, 5, 3]}, ["y"])
    result = rewrite(model, only(tr.OPERANDS_THROUGH_TRANSPOSE))
    assert result.fired == {"operands_through_transpose": 1}
    assert ops(result.model) == [op, "Transpose"]
    assert_equivalent(model, result.model)


def test_operands_with_different_perms_decline():
    nodes = [to_nchw("a", "ta"), node("Transpose", ["b"], ["tb"], perm=[0, 1, 3, 2]),
             node("Add", ["ta", "tb"], ["y"])]
    model = tiny(nodes, {"a": [2, 4, 4, 3], "b": [2, 3, 4, 4]}, ["y"])
    assert rewrite(model, only(tr.OPERANDS_THROUGH_TRANSPOSE)).declined == {
        "operands_through_transpose": {"the operands are transposed by different perms": 1}}


@pytest.mark.parametrize("axis", [1, -3])
def test_concat_along_channels_moves_below_the_transpose(axis):
    nodes = [to_nchw("a", "ta"), to_nchw("b", "tb"), node("Concat", ["ta", "tb"], ["y"], axis=axis)]
    model = tiny(nodes, {"a": [2, 4, 5, 3], "b": [2, 4, 5, 6]}, ["y"])
    result = rewrite(model, only(tr.CONCAT_THROUGH_TRANSPOSE))
    assert result.fired == {"concat_through_transpose": 1}
    assert result.model.graph.nodes[0].attr("axis") == 3
    assert_equivalent(model, result.model)


def test_concat_with_an_untransposed_operand_declines():
    nodes = [to_nchw("a", "ta"), node("Concat", ["ta", "b"], ["y"], axis=1)]
    model = tiny(nodes, {"a": [2, 4, 5, 3], "b": [2, 6, 4, 5]}, ["y"])
    assert rewrite(model, only(tr.CONCAT_THROUGH_TRANSPOSE)).declined == {
        "concat_through_transpose": {"not every operand is a Transpose": 1}}


@pytest.mark.parametrize("op, attrs", [
    ("MaxPool", {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    ("MaxPool", {"kernel_shape": [2, 3], "ceil_mode": 1, "strides": [2, 2]}),
    ("AveragePool", {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    ("AveragePool", {"kernel_shape": [3, 2], "pads": [1, 0, 1, 1], "count_include_pad": 1}),
    ("GlobalAveragePool", {}), ("GlobalMaxPool", {}),
])
def test_pooling_becomes_channels_last(op, attrs):
    model = tiny([to_nchw(), node(op, ["t"], ["y"], **attrs)], {"x": [2, 7, 8, 3]}, ["y"])
    result = rewrite(model, only(tr.POOL_THROUGH_TRANSPOSE))
    assert result.fired == {"pool_through_transpose": 1}
    assert ops(result.model) == [op + "NHWC", "Transpose"]
    assert_equivalent(model, result.model)


def test_pooling_declines_other_perms_and_indices():
    model = tiny([node("Transpose", ["x"], ["t"], perm=[0, 1, 3, 2]),
                  node("MaxPool", ["t"], ["y"], kernel_shape=[2, 2])], {"x": [2, 3, 7, 8]}, ["y"])
    assert rewrite(model, only(tr.POOL_THROUGH_TRANSPOSE)).declined == {
        "pool_through_transpose": {"the input transpose [0, 1, 3, 2] is not NHWC -> NCHW": 1}}
    model = tiny([to_nchw(), node("MaxPool", ["t"], ["y", "i"], kernel_shape=[2, 2])], {"x": [2, 7, 8, 3]},
                 ["y", "i"])
    assert rewrite(model, only(tr.POOL_THROUGH_TRANSPOSE)).declined == {
        "pool_through_transpose": {"MaxPool has more than one output": 1}}


def test_batchnorm_becomes_a_channels_last_affine():
    weights = {"s": rng_array(3, seed=1), "b": rng_array(3, seed=2), "m": rng_array(3, seed=3),
               "v": rng_array(3, seed=4) ** 2 + 0.5}
    model = tiny([to_nchw(), node("BatchNormalization", ["t", "s", "b", "m", "v"], ["y"])],
                 {"x": [2, 4, 5, 3]}, ["y"], weights)
    result = rewrite(model, only(tr.BATCHNORM_THROUGH_TRANSPOSE))
    assert result.fired == {"batchnorm_through_transpose": 1}
    assert ops(result.model) == ["Mul", "Add", "Transpose"]
    assert_equivalent(model, result.model)
    runtime = tiny([to_nchw(), node("BatchNormalization", ["t", "s", "b", "m", "v"], ["y"])],
                   {"x": [2, 4, 5, 3], "s": [3]}, ["y"], {k: v for k, v in weights.items() if k != "s"})
    assert rewrite(runtime, only(tr.BATCHNORM_THROUGH_TRANSPOSE)).declined == {
        "batchnorm_through_transpose": {"the statistics are not constant": 1}}


def test_a_residual_block_keeps_transposes_only_at_its_edges():
    """Conv-BN-Relu-Conv + skip, Relu, MaxPool, Concat, GlobalAveragePool: two transposes remain."""
    nodes = [
        node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        node("BatchNormalization", ["c1", "s", "b", "m", "v"], ["n1"]),
        node("Relu", ["n1"], ["r1"]),
        node("Conv", ["r1", "w2", "b2"], ["c2"]),
        node("Add", ["c2", "r1"], ["sum"]),
        node("Relu", ["sum"], ["r2"]),
        node("MaxPool", ["r2"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        node("Mul", ["p", "k"], ["pk"]),
        node("Conv", ["p", "w3"], ["c3"], pads=[1, 1, 1, 1]),
        node("Concat", ["pk", "c3"], ["cat"], axis=1),
        node("BatchNormalization", ["cat", "s2", "b2b", "m2", "v2"], ["n2"]),
        node("Clip", ["n2", "lo", "hi"], ["r3"]),
        node("GlobalAveragePool", ["r3"], ["g"]),
        node("Flatten", ["g"], ["y"]),
    ]
    weights = {"w1": rng_array(6, 6, 3, 3), "s": rng_array(6, seed=1), "b": rng_array(6, seed=2),
               "m": rng_array(6, seed=3), "v": rng_array(6, seed=4) ** 2 + 0.5, "w2": rng_array(6, 6, 1, 1, seed=5),
               "b2": rng_array(6, seed=6), "k": rng_array(6, 1, 1, seed=7), "w3": rng_array(4, 6, 3, 3, seed=8),
               "s2": rng_array(10, seed=9), "b2b": rng_array(10, seed=10), "m2": rng_array(10, seed=11),
               "v2": rng_array(10, seed=12) ** 2 + 0.5, "lo": rng_array() * 0, "hi": rng_array() * 0 + 6}
    model = tiny(nodes, {"x": [2, 6, 8, 8]}, ["y"], weights)
    result = rewrite(model, [FOLDING, LAYOUT])
    remaining = ops(result.model)
    assert remaining.count("Transpose") == 1 and "BatchNormalization" not in remaining
    assert "Conv" not in remaining and "MatMul" in remaining
    assert_equivalent(model, result.model)


@pytest.mark.parametrize("opset", [9, 17])
def test_pad_moves_below_the_transpose_with_permuted_pads(opset):
    pads = [0, 1, 2, 0, 0, 2, 1, 1]
    pad = (node("Pad", ["t"], ["y"], pads=pads, mode="constant", value=0.5) if opset < 11
           else node("Pad", ["t", "p", "v"], ["y"], mode="constant"))
    weights = {} if opset < 11 else {"p": __import__("numpy").array(pads, "int64"), "v": rng_array() * 0 + 0.5}
    model = tiny([to_nchw(), pad], {"x": [2, 4, 5, 3]}, ["y"], weights, opset=opset)
    result = rewrite(model, only(tr.PAD_THROUGH_TRANSPOSE))
    assert result.fired == {"pad_through_transpose": 1}
    assert ops(result.model) == ["Pad", "Transpose"]
    assert_equivalent(model, result.model)


def test_pad_declines_without_a_transpose():
    model = tiny([node("Pad", ["x"], ["y"], pads=[0, 1, 0, 1], mode="constant")], {"x": [2, 3]}, ["y"], opset=9)
    assert rewrite(model, only(tr.PAD_THROUGH_TRANSPOSE)).declined == {
        "pad_through_transpose": {"the input is not a Transpose": 1}}
