"""BLAS rules: each fires, declines with its reason where it must, and keeps the outputs."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from autofuse.rewrite import View, rewrite
from autofuse.rewrite.blas import BLAS, BLAS_ALTERNATIVES, BLAS_EPILOGUE, BLAS_RULES
from autofuse.rewrite.engine import RuleSet
from autofuse.rewrite.folding import FOLDING
from autofuse.rewrite.layout import LAYOUT
from test_rewrite_engine import assert_equivalent, ops, rng_array, tiny


def only(name, model):
    return rewrite(model, RuleSet(name, (BLAS_RULES[name],)))


def blas_nodes(model):
    return [n for n in model.graph.nodes if n.op_type == "BlasMatMul"]


# ---------------------------------------------------------------- MatMul

@pytest.mark.parametrize("x_shape", [[5, 8], [2, 3, 8], [8]])
def test_matmul_with_a_constant_weight_runs_through_blas(x_shape):
    model = tiny([helper.make_node("MatMul", ["x", "w"], ["y"])], {"x": x_shape}, ["y"], {"w": rng_array(8, 6)})
    result = only("matmul_blas", model)
    assert result.fired == {"matmul_blas": 1}
    assert ops(result.model) == ["BlasMatMul"]
    assert_equivalent(model, result.model)


def test_matmul_declines_runtime_and_batched_weights():
    runtime = tiny([helper.make_node("MatMul", ["x", "v"], ["y"])], {"x": [2, 4], "v": [4, 3]}, ["y"])
    batched = tiny([helper.make_node("MatMul", ["x", "w"], ["y"])], {"x": [2, 3, 4]}, ["y"], {"w": rng_array(2, 4, 3)})
    assert only("matmul_blas", runtime).declined == {"matmul_blas": {"B is not constant": 1}}
    assert only("matmul_blas", batched).declined == {"matmul_blas": {"B is 3-D, not a 2-D weight": 1}}


def test_matmul_declines_float64():
    nodes = [helper.make_node("Cast", ["x"], ["xd"], to=TensorProto.DOUBLE), helper.make_node("MatMul", ["xd", "w"], ["y"])]
    model = tiny(nodes, {"x": [2, 4]}, ["y"], {"w": rng_array(4, 3).astype(np.float64)})
    assert only("matmul_blas", model).declined == {"matmul_blas": {"B is float64, not float32": 1}}


# ---------------------------------------------------------------- Gemm

@pytest.mark.parametrize("attrs", [{}, {"transB": 1}, {"alpha": 0.5, "beta": 2.0}, {"transB": 1, "alpha": -1.5}])
@pytest.mark.parametrize("c_shape", [None, (6,), (1, 6)])
def test_gemm_with_a_constant_weight_runs_through_blas(attrs, c_shape):
    w = rng_array(6, 8) if attrs.get("transB") else rng_array(8, 6)
    weights = {"w": w} if c_shape is None else {"w": w, "c": rng_array(*c_shape, seed=2)}
    model = tiny([helper.make_node("Gemm", ["x", *weights], ["y"], **attrs)], {"x": [5, 8]}, ["y"], weights)
    result = only("gemm_blas", model)
    assert result.fired == {"gemm_blas": 1}
    assert ops(result.model) == ["BlasMatMul"]
    assert_equivalent(model, result.model)


@pytest.mark.parametrize("attrs, c, reason", [
    ({"transA": 1}, None, "transA=1: A would need a transpose at run time"),
    ({}, "runtime", "the bias is not constant"),
    ({}, (5, 6), "the bias of shape [5, 6] is not one value per output column (6)"),
])
def test_gemm_declines(attrs, c, reason):
    inputs, weights = {"x": [8, 5] if attrs.get("transA") else [5, 8]}, {"w": rng_array(8, 6)}
    if c == "runtime":
        inputs["c"] = [6]
    elif c is not None:
        weights["c"] = rng_array(*c)
    names = ["x", "w"] + (["c"] if c else [])
    model = tiny([helper.make_node("Gemm", names, ["y"], **attrs)], inputs, ["y"], weights)
    assert only("gemm_blas", model).declined == {"gemm_blas": {reason: 1}}


# ---------------------------------------------------------------- ConvNHWC

def conv_nhwc(w_shape, bias=False, x_shape=(2, 4, 9, 10), **attrs):
    inputs = ["x", "w", "b"] if bias else ["x", "w"]
    weights = {"w": rng_array(*w_shape) / np.float32(np.sqrt(np.prod(w_shape[1:]))), "b": rng_array(w_shape[0], seed=1)}
    model = tiny([helper.make_node("Conv", inputs, ["y"], **attrs)], {"x": list(x_shape)}, ["y"],
                 {k: v for k, v in weights.items() if k in inputs})
    return model, rewrite(model, LAYOUT).model


@pytest.mark.parametrize("w_shape, attrs", [
    ((6, 4, 3, 3), {"pads": [1, 1, 1, 1]}), ((6, 4, 3, 3), {"strides": [2, 2]}),
    ((6, 4, 3, 2), {"dilations": [2, 1], "pads": [0, 1, 2, 0]}), ((6, 4, 1, 1), {"strides": [2, 2]}),
    ((6, 4, 5, 5), {"auto_pad": "SAME_LOWER"}), ((6, 4, 7, 7), {"strides": [2, 2], "pads": [3, 3, 3, 3]}),
])
@pytest.mark.parametrize("bias", [True, False])
def test_conv_nhwc_becomes_patches_and_blas(w_shape, attrs, bias):
    model, nhwc = conv_nhwc(w_shape, bias=bias, **attrs)
    result = only("conv_nhwc_blas", nhwc)
    assert result.fired == {"conv_nhwc_blas": 1}
    assert "ConvNHWC" not in ops(result.model) and ops(result.model).count("BlasMatMul") == 1
    assert "PatchesNHWC" in ops(result.model)
    assert_equivalent(model, result.model)


def test_pointwise_conv_nhwc_skips_the_patches():
    model, nhwc = conv_nhwc((6, 4, 1, 1), bias=True)
    nhwc = rewrite(model, RuleSet("nhwc", tuple(r for r in LAYOUT if r.name != "nhwc_conv1x1_to_matmul"))).model
    assert "ConvNHWC" in ops(nhwc)
    result = only("conv_nhwc_blas", nhwc)
    assert "PatchesNHWC" not in ops(result.model) and "BlasMatMul" in ops(result.model)
    assert_equivalent(model, result.model)


def test_conv_nhwc_declines_grouped_and_nchw_convolutions():
    model, nhwc = conv_nhwc((6, 2, 3, 3), group=2)
    assert only("conv_nhwc_blas", nhwc).declined == {"conv_nhwc_blas": {"grouped convolution": 1}}
    assert only("conv_nhwc_blas", model).fired == {}  # an ONNX Conv is not a ConvNHWC root


# ---------------------------------------------------------------- epilogues

def linear(bias_shape=(6,), relu=True, extra_reader=False, x_shape=(3, 5, 8)):
    nodes = [helper.make_node("MatMul", ["x", "w"], ["mm"]), helper.make_node("Add", ["mm", "b"], ["s"])]
    nodes.append(helper.make_node("Relu", ["s"], ["y"]) if relu else helper.make_node("Identity", ["s"], ["y"]))
    outputs = ["y"]
    if extra_reader:
        nodes.append(helper.make_node("Neg", ["mm"], ["z"]))
        outputs.append("z")
    return tiny(nodes, {"x": list(x_shape)}, outputs, {"w": rng_array(8, 6), "b": rng_array(*bias_shape, seed=1)})


@pytest.mark.parametrize("bias_shape", [(6,), (1, 6), (1, 1, 6)])
def test_bias_and_relu_fold_into_one_blas_call(bias_shape):
    model = linear(bias_shape)
    result = rewrite(model, BLAS)
    assert result.fired == {"matmul_blas": 1, "blas_bias": 1, "blas_relu": 1}
    (node,) = result.model.graph.nodes
    assert node.op_type == "BlasMatMul" and len(node.inputs) == 3 and node.attr("relu") == 1
    assert_equivalent(model, result.model)


def test_epilogues_decline_with_reasons():
    shared = rewrite(linear(extra_reader=True), BLAS)
    assert shared.fired == {"matmul_blas": 1}
    assert shared.declined["blas_bias"] == {"BlasMatMul output 'mm' has another consumer": 1}
    wide = rewrite(linear(bias_shape=(5, 6), relu=False), BLAS)
    assert wide.declined["blas_bias"] == {"the bias of shape [5, 6] is not one value per output column (6)": 1}
    wider = linear(bias_shape=(2, 1, 6), relu=False, x_shape=(1, 5, 8))
    broadcast = rewrite(wider, BLAS)
    assert broadcast.declined["blas_bias"] == {"the Add broadcasts beyond the product's shape": 1}
    assert_equivalent(wider, broadcast.model)


def test_relu_folds_once():
    nodes = [helper.make_node("MatMul", ["x", "w"], ["mm"]), helper.make_node("Relu", ["mm"], ["r"]),
             helper.make_node("Relu", ["r"], ["y"])]
    model = tiny(nodes, {"x": [4, 8]}, ["y"], {"w": rng_array(8, 6)})
    result = rewrite(model, BLAS)
    assert result.fired == {"matmul_blas": 1, "blas_relu": 1}
    assert result.declined["blas_relu"] == {"the BlasMatMul already applies ReLU": 1}
    assert_equivalent(model, result.model)


# ---------------------------------------------------------------- sets, alternatives, a small CNN

def test_alternatives_are_single_node_choices_the_search_can_place():
    assert {n for names in BLAS_ALTERNATIVES.values() for n in names} == set(BLAS_RULES)
    model = linear(relu=False)
    view = View(model)
    for node in model.graph.nodes:
        for name in BLAS_ALTERNATIVES.get(node.op_type, ()):
            match = BLAS_RULES[name].match(node, view)
            assert match[-1] is node and BLAS_RULES[name].check(match, view) is None
    assert {r.name for r in BLAS} == {n for n in BLAS_RULES if not n.endswith("_1t")} | {r.name for r in BLAS_EPILOGUE}


@pytest.mark.parametrize("name", ["matmul_blas_1t", "gemm_blas_1t"])
def test_one_thread_variants_run_whole(name):
    op = "MatMul" if name.startswith("matmul") else "Gemm"
    model = tiny([helper.make_node(op, ["x", "w"], ["y"])], {"x": [70, 80]}, ["y"], {"w": rng_array(80, 90)})
    result = only(name, model)
    assert result.fired == {name: 1}
    (node,) = result.model.graph.nodes
    assert node.attr("split") == 0
    assert only(name[:-3], model).model.graph.nodes[0].attr("split") == 1
    assert_equivalent(model, result.model)


def test_small_cnn_with_folding_layout_and_blas():
    c = 4
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "g", "be", "mu", "var"], ["n1"]),
        helper.make_node("Relu", ["n1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("Conv", ["r2", "w3"], ["c3"], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["c3"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "fc", "fb"], ["y"], transB=1),
    ]
    weights = {"w1": rng_array(c, 3, 3, 3) / 5, "b1": rng_array(c, seed=1), "g": rng_array(c, seed=2),
               "be": rng_array(c, seed=3), "mu": rng_array(c, seed=4), "var": np.abs(rng_array(c, seed=5)) + 0.5,
               "w2": rng_array(8, c, 1, 1, seed=6) / 2, "w3": rng_array(8, 8, 3, 3, seed=7) / 8,
               "fc": rng_array(10, 8, seed=8), "fb": rng_array(10, seed=9)}
    model = tiny(nodes, {"x": [2, 3, 12, 12]}, ["y"], weights)
    result = rewrite(model, [FOLDING, LAYOUT, BLAS])
    assert result.fired["conv_nhwc_blas"] == 2 and result.fired["matmul_blas"] == 1 and result.fired["gemm_blas"] == 1
    assert "ConvNHWC" not in ops(result.model) and ops(result.model).count("BlasMatMul") == 4
    assert_equivalent(model, result.model)
