"""Layout rules: 1x1 Conv as a MatMul fires, declines where it must, keeps outputs.

The channels-last rules that LAYOUT also holds are tested in test_rewrite_transpose.py."""
from __future__ import annotations

import pytest
from onnx import helper

from autofuse.rewrite import rewrite
from autofuse.rewrite.folding import FOLDING
from autofuse.rewrite.layout import CONV1X1, LAYOUT
from test_rewrite_engine import assert_equivalent, ops, rng_array, tiny


@pytest.mark.parametrize("bias", [True, False])
def test_pointwise_conv_becomes_a_matmul(bias):
    inputs = ["x", "w", "b"] if bias else ["x", "w"]
    model = tiny([helper.make_node("Conv", inputs, ["y"])], {"x": [2, 8, 5, 6]}, ["y"],
                 {"w": rng_array(16, 8, 1, 1), "b": rng_array(16, seed=1)})
    result = rewrite(model, CONV1X1)
    assert result.fired == {"conv1x1_to_matmul": 1}
    assert ops(result.model) == ["Reshape", "MatMul"] + (["Add"] if bias else []) + ["Reshape"]
    assert_equivalent(model, result.model)


@pytest.mark.parametrize("attrs, shape, reason", [
    ({"strides": [2, 2]}, (16, 8, 1, 1), "stride is not 1"),
    ({"group": 2}, (16, 4, 1, 1), "grouped convolution"),
    ({"pads": [1, 1, 1, 1]}, (16, 8, 1, 1), "padded convolution"),
    ({}, (16, 8, 3, 3), "kernel [3, 3] is not 1x1"),
])
def test_other_convolutions_stay(attrs, shape, reason):
    model = tiny([helper.make_node("Conv", ["x", "w"], ["y"], **attrs)], {"x": [1, 8, 6, 6]}, ["y"],
                 {"w": rng_array(*shape)})
    result = rewrite(model, CONV1X1)
    assert result.fired == {}
    assert result.declined == {"conv1x1_to_matmul": {reason: 1}}


def test_pipeline_folds_batchnorm_before_changing_the_conv():
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]),
             helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["y"])]
    weights = {"w": rng_array(4, 3, 1, 1), "s": rng_array(4, seed=1) ** 2 + 0.5, "b": rng_array(4, seed=2),
               "m": rng_array(4, seed=3), "v": rng_array(4, seed=4) ** 2 + 0.5}
    model = tiny(nodes, {"x": [1, 3, 4, 4]}, ["y"], weights)
    result = rewrite(model, [FOLDING, LAYOUT])
    assert result.fired == {"fold_batchnorm_into_conv": 1, "conv_to_nhwc": 1, "nhwc_conv1x1_to_matmul": 1}
    assert ops(result.model) == ["Transpose", "MatMul", "Add", "Transpose"]
    assert_equivalent(model, result.model)


def test_convolutions_that_are_not_2d_still_take_the_nchw_matmul():
    model = tiny([helper.make_node("Conv", ["x", "w"], ["y"])], {"x": [2, 8, 9]}, ["y"], {"w": rng_array(4, 8, 1)})
    result = rewrite(model, LAYOUT)
    assert result.fired == {"conv1x1_to_matmul": 1}
    assert_equivalent(model, result.model)
