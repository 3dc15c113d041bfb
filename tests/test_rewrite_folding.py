"""Folding rules: each fires, declines with its reason where it must, and keeps outputs."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from autofuse.rewrite import rewrite
from autofuse.rewrite.folding import FOLDING
from test_rewrite_engine import assert_equivalent, ops, rng_array, tiny


def _bn_weights(c: int) -> dict:
    rng = np.random.default_rng(1)
    return {
        "scale": rng.uniform(0.5, 2, c).astype(np.float32), "bias": rng_array(c, seed=2),
        "mean": rng_array(c, seed=3), "var": rng.uniform(0.5, 2, c).astype(np.float32),
    }


def _bn(x: str, y: str):
    return helper.make_node("BatchNormalization", [x, "scale", "bias", "mean", "var"], [y], epsilon=1e-3)


def _conv_bn(extra_consumer: bool = False, group: int = 1):
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], group=group), _bn("c", "y")]
    outputs = ["y"]
    if extra_consumer:
        nodes.append(helper.make_node("Relu", ["c"], ["r"]))
        outputs.append("r")
    weights = {"w": rng_array(8, 4 // group, 3, 3), "b": rng_array(8, seed=5), **_bn_weights(8)}
    return tiny(nodes, {"x": [2, 4, 5, 5]}, outputs, weights)


@pytest.mark.parametrize("group", [1, 2])
def test_batchnorm_folds_into_conv(group):
    model = _conv_bn(group=group)
    result = rewrite(model, FOLDING)
    assert result.fired == {"fold_batchnorm_into_conv": 1}
    assert ops(result.model) == ["Conv"]
    assert_equivalent(model, result.model)


def test_batchnorm_declines_when_conv_output_has_another_consumer():
    result = rewrite(_conv_bn(extra_consumer=True), FOLDING)
    assert result.fired == {}
    assert result.declined["fold_batchnorm_into_conv"] == {"Conv output 'c' has another consumer": 1}


def test_batchnorm_folds_into_gemm_and_matmul():
    for producer in ("Gemm", "MatMul"):
        attrs = {"alpha": 0.5, "beta": 2.0, "transB": 1} if producer == "Gemm" else {}
        inputs = ["x", "w", "c"] if producer == "Gemm" else ["x", "w"]
        w = rng_array(6, 4) if producer == "Gemm" else rng_array(4, 6)
        model = tiny([helper.make_node(producer, inputs, ["g"], **attrs), _bn("g", "y")], {"x": [3, 4]}, ["y"],
                     {"w": w, "c": rng_array(6, seed=7), **_bn_weights(6)})
        result = rewrite(model, FOLDING)
        assert result.fired == {f"fold_batchnorm_into_{producer.lower()}": 1}
        assert ops(result.model) == ["Gemm"]
        assert_equivalent(model, result.model)


def test_batchnorm_declines_on_a_3d_matmul():
    model = tiny([helper.make_node("MatMul", ["x", "w"], ["g"]), _bn("g", "y")], {"x": [2, 6, 4]}, ["y"],
                 {"w": rng_array(4, 5), **_bn_weights(6)})
    result = rewrite(model, FOLDING)
    assert result.declined["fold_batchnorm_into_matmul"] == {
        "the constant varies along axis 1, not the MatMul output axis 2": 1}


@pytest.mark.parametrize("op", ["Mul", "Add", "Sub", "Div"])
def test_per_channel_constant_folds_into_conv(op):
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node(op, ["c", "k"], ["y"])]
    k = np.random.default_rng(0).uniform(0.5, 2, (8, 1, 1)).astype(np.float32)
    model = tiny(nodes, {"x": [1, 4, 3, 3]}, ["y"], {"w": rng_array(8, 4, 1, 1), "k": k})
    result = rewrite(model, FOLDING)
    assert result.fired == {f"fold_{op.lower()}_into_conv": 1}
    assert ops(result.model) == ["Conv"]
    assert_equivalent(model, result.model)


def test_constant_along_a_spatial_axis_does_not_fold():
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Mul", ["c", "k"], ["y"])]
    model = tiny(nodes, {"x": [1, 4, 3, 3]}, ["y"], {"w": rng_array(8, 4, 1, 1), "k": rng_array(3, 1)})
    result = rewrite(model, FOLDING)
    assert result.fired == {}
    assert result.declined["fold_mul_into_conv"] == {"the constant varies along axis 2, not the channel axis 1": 1}


@pytest.mark.parametrize("op", ["Mul", "Add"])
def test_per_channel_constant_folds_into_gemm(op):
    nodes = [helper.make_node("Gemm", ["x", "w", "c"], ["g"], alpha=2.0), helper.make_node(op, ["k", "g"], ["y"])]
    model = tiny(nodes, {"x": [3, 4]}, ["y"], {"w": rng_array(4, 5), "c": rng_array(5, seed=1), "k": rng_array(1, 5, seed=2)})
    result = rewrite(model, FOLDING)
    assert result.fired == {f"fold_{op.lower()}_into_gemm": 1}
    assert ops(result.model) == ["Gemm"]
    assert_equivalent(model, result.model)


def test_scale_folds_into_a_batched_matmul_but_bias_does_not():
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Mul", ["m", "s"], ["a"]),
             helper.make_node("MatMul", ["a", "w2"], ["m2"]), helper.make_node("Add", ["m2", "b"], ["y"])]
    model = tiny(nodes, {"x": [2, 3, 4]}, ["y"],
                 {"w": rng_array(4, 5), "s": rng_array(5, seed=1), "w2": rng_array(5, 6, seed=2), "b": rng_array(6, seed=3)})
    result = rewrite(model, FOLDING)
    assert result.fired == {"fold_mul_into_matmul": 1}
    assert result.declined["fold_add_into_matmul"] == {"a bias on a MatMul that is not 2-D would stay an Add": 1}
    assert ops(result.model) == ["MatMul", "MatMul", "Add"]
    assert_equivalent(model, result.model)


def test_identity_and_dropout_are_removed_unless_they_produce_a_graph_output():
    nodes = [helper.make_node("Identity", ["x"], ["a"]), helper.make_node("Dropout", ["a"], ["d"], ratio=0.3),
             helper.make_node("Relu", ["d"], ["r"]), helper.make_node("Identity", ["r"], ["y"])]
    model = tiny(nodes, {"x": [2, 3]}, ["y"])
    result = rewrite(model, FOLDING)
    assert result.fired == {"remove_identity": 1, "remove_dropout": 1}
    assert result.declined == {"remove_identity": {"output 'y' is a graph output": 1}}
    assert ops(result.model) == ["Relu", "Identity"]
    assert_equivalent(model, result.model)


def test_dropout_with_a_read_mask_stays():
    nodes = [helper.make_node("Dropout", ["x"], ["d", "mask"]), helper.make_node("Cast", ["mask"], ["m"], to=1),
             helper.make_node("Add", ["d", "m"], ["y"])]
    result = rewrite(tiny(nodes, {"x": [2, 3]}, ["y"]), FOLDING)
    assert result.declined["remove_dropout"] == {"the mask output is read": 1}


def test_weight_only_subgraph_folds_into_a_new_weight():
    nodes = [helper.make_node("Transpose", ["w"], ["wt"], perm=[1, 0]), helper.make_node("MatMul", ["x", "wt"], ["y"])]
    model = tiny(nodes, {"x": [3, 16]}, ["y"], {"w": rng_array(16, 16)})
    result = rewrite(model, FOLDING)
    assert result.fired == {"fold_weight_subgraph": 1}
    assert ops(result.model) == ["MatMul"]
    assert_equivalent(model, result.model)


def test_weight_subgraph_that_would_grow_the_weights_declines():
    nodes = [helper.make_node("Expand", ["w", "shape"], ["big"]), helper.make_node("Add", ["x", "big"], ["y"])]
    model = tiny(nodes, {"x": [64, 80]}, ["y"], {"w": rng_array(80), "shape": np.array([64, 80], np.int64)})
    result = rewrite(model, FOLDING)
    assert result.declined["fold_weight_subgraph"] == {"folding would grow 82 weight elements to 5120": 1}
