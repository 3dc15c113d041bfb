"""Packed-GEMM rules: each fires, declines with its reason where it must, and keeps the outputs."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from autofuse.rewrite import View, rewrite
from autofuse.rewrite.engine import RuleSet
from autofuse.rewrite.folding import FOLDING
from autofuse.rewrite.layout import LAYOUT
from autofuse.rewrite.packed import PACKED, PACKED_ALTERNATIVES, PACKED_EPILOGUE, PACKED_RULES
from test_rewrite_engine import assert_equivalent, ops, rng_array, tiny


def only(name, model):
    return rewrite(model, RuleSet(name, (PACKED_RULES[name],)))


# ---------------------------------------------------------------- MatMul and Gemm

@pytest.mark.parametrize("x_shape", [[5, 8], [2, 3, 8], [8]])
def test_matmul_with_a_constant_weight_is_packed(x_shape):
    model = tiny([helper.make_node("MatMul", ["x", "w"], ["y"])], {"x": x_shape}, ["y"], {"w": rng_array(8, 40)})
    result = only("matmul_packed", model)
    assert result.fired == {"matmul_packed": 1}
    (node,) = result.model.graph.nodes
    assert node.op_type == "PackedMatMul" and node.attr("n") == 40
    assert result.model.weights[node.inputs[1]].shape == (8 * 2 * 32,)
    assert_equivalent(model, result.model)


def test_matmul_declines_runtime_batched_and_float64_weights():
    runtime = tiny([helper.make_node("MatMul", ["x", "v"], ["y"])], {"x": [2, 4], "v": [4, 3]}, ["y"])
    batched = tiny([helper.make_node("MatMul", ["x", "w"], ["y"])], {"x": [2, 3, 4]}, ["y"], {"w": rng_array(2, 4, 3)})
    nodes = [helper.make_node("Cast", ["x"], ["xd"], to=TensorProto.DOUBLE), helper.make_node("MatMul", ["xd", "w"], ["y"])]
    double = tiny(nodes, {"x": [2, 4]}, ["y"], {"w": rng_array(4, 3).astype(np.float64)})
    assert only("matmul_packed", runtime).declined == {"matmul_packed": {"B is not constant": 1}}
    assert only("matmul_packed", batched).declined == {"matmul_packed": {"B is 3-D, not a 2-D weight": 1}}
    assert only("matmul_packed", double).declined == {"matmul_packed": {"B is float64, not float32": 1}}


@pytest.mark.parametrize("attrs", [{}, {"transB": 1}, {"alpha": 0.5, "beta": 2.0}, {"transB": 1, "alpha": -1.5}])
@pytest.mark.parametrize("c_shape", [None, (6,), (1, 6)])
def test_gemm_with_a_constant_weight_is_packed(attrs, c_shape):
    w = rng_array(6, 8) if attrs.get("transB") else rng_array(8, 6)
    weights = {"w": w} if c_shape is None else {"w": w, "c": rng_array(*c_shape, seed=2)}
    model = tiny([helper.make_node("Gemm", ["x", *weights], ["y"], **attrs)], {"x": [5, 8]}, ["y"], weights)
    result = only("gemm_packed", model)
    assert result.fired == {"gemm_packed": 1}
    assert ops(result.model) == ["PackedMatMul"]
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
    assert only("gemm_packed", model).declined == {"gemm_packed": {reason: 1}}


# ---------------------------------------------------------------- ConvNHWC

def conv_nhwc(w_shape, bias=False, x_shape=(2, 4, 9, 10), **attrs):
    inputs = ["x", "w", "b"] if bias else ["x", "w"]
    weights = {"w": rng_array(*w_shape) / np.float32(np.sqrt(np.prod(w_shape[1:]))), "b": rng_array(w_shape[0], seed=1)}
    model = tiny([helper.make_node("Conv", inputs, ["y"], **attrs)], {"x": list(x_shape)}, ["y"],
                 {k: v for k, v in weights.items() if k in inputs})
    layout = RuleSet("nhwc", tuple(r for r in LAYOUT if r.name != "nhwc_conv1x1_to_matmul"))
    return model, rewrite(model, layout).model


@pytest.mark.parametrize("w_shape, attrs", [
    ((6, 4, 3, 3), {"pads": [1, 1, 1, 1]}), ((6, 4, 3, 3), {"strides": [2, 2]}),
    ((6, 4, 3, 2), {"dilations": [2, 1], "pads": [0, 1, 2, 0]}), ((6, 4, 1, 1), {"strides": [2, 2]}),
    ((6, 4, 1, 1), {}), ((40, 4, 7, 7), {"strides": [2, 2], "pads": [3, 3, 3, 3]}),
])
@pytest.mark.parametrize("bias", [True, False])
def test_conv_nhwc_is_packed(w_shape, attrs, bias):
    model, nhwc = conv_nhwc(w_shape, bias=bias, **attrs)
    result = only("conv_packed", nhwc)
    assert result.fired == {"conv_packed": 1}
    assert "ConvNHWC" not in ops(result.model) and ops(result.model).count("PackedConvNHWC") == 1
    assert_equivalent(model, result.model)


def test_conv_nhwc_declines_grouped_implicit_pads_and_nchw():
    _, grouped = conv_nhwc((6, 2, 3, 3), group=2)
    assert only("conv_packed", grouped).declined == {"conv_packed": {"grouped convolution": 1}}
    _, same = conv_nhwc((6, 4, 3, 3), auto_pad="SAME_UPPER")
    assert only("conv_packed", same).declined == {"conv_packed": {"auto_pad=SAME_UPPER: the pads are not explicit": 1}}
    model, _ = conv_nhwc((6, 4, 3, 3))
    assert only("conv_packed", model).fired == {}  # an ONNX Conv is not a ConvNHWC root


@pytest.mark.parametrize("x_shape, pads", [((1, 16, 12, 12), (1, 1, 1, 1)), ((2, 16, 7, 9), (0, 1, 2, 0))])
def test_3x3_convolution_runs_as_winograd(x_shape, pads):
    model, nhwc = conv_nhwc((6, 16, 3, 3), x_shape=x_shape, pads=list(pads))
    result = only("conv_winograd_packed", nhwc)
    assert result.fired == {"conv_winograd_packed": 1}
    assert ops(result.model).count("PackedWinogradNHWC") == 1 and "ConvNHWC" not in ops(result.model)
    assert_equivalent(model, result.model)


def test_winograd_declines_with_reasons():
    _, strided = conv_nhwc((6, 4, 3, 3), strides=[2, 2])
    assert only("conv_winograd_packed", strided).declined == {"conv_winograd_packed": {"strided or dilated": 1}}
    _, pointwise = conv_nhwc((6, 4, 1, 1))
    assert only("conv_winograd_packed", pointwise).declined == {"conv_winograd_packed": {"not a 3x3 kernel": 1}}
    _, narrow = conv_nhwc((6, 3, 3, 3), x_shape=(1, 3, 40, 40), pads=[1, 1, 1, 1])
    assert only("conv_winograd_packed", narrow).declined == {"conv_winograd_packed": {
        "3 input channels (fewer than 16): the direct form is faster": 1}}


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
def test_bias_and_relu_fold_into_one_call(bias_shape):
    model = linear(bias_shape)
    result = rewrite(model, PACKED)
    assert result.fired == {"matmul_packed": 1, "packed_bias": 1, "packed_relu": 1}
    (node,) = result.model.graph.nodes
    assert node.op_type == "PackedMatMul" and len(node.inputs) == 3 and node.attr("lo") == 0.0
    assert_equivalent(model, result.model)


def residual_block(join="Add"):
    """x -> MatMul -> Add(., shortcut) -> Relu, the shortcut itself a product of x."""
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["a"]), helper.make_node("Relu", ["a"], ["h"]),
             helper.make_node("MatMul", ["h", "w2"], ["b"]), helper.make_node(join, ["b", "x"], ["s"]),
             helper.make_node("Relu", ["s"], ["y"])]
    return tiny(nodes, {"x": [7, 8]}, ["y"], {"w1": rng_array(8, 8), "w2": rng_array(8, 8, seed=1)})


@pytest.mark.parametrize("join", ["Add", "Sum"])
def test_residual_add_and_relu_fold_into_the_product(join):
    model = residual_block(join)
    result = rewrite(model, PACKED)
    assert result.fired == {"matmul_packed": 2, "packed_relu": 2, "packed_residual": 1}
    last = result.model.graph.nodes[-1]
    assert last.op_type == "PackedMatMul" and last.inputs[3] == "x" and last.attr("lo") == 0.0
    assert_equivalent(model, result.model)


def test_epilogues_decline_with_reasons():
    shared = rewrite(linear(extra_reader=True), PACKED)
    assert shared.fired == {"matmul_packed": 1}
    assert shared.declined["packed_bias"] == {"PackedMatMul output 'mm' has another consumer": 1}
    wide = rewrite(linear(bias_shape=(5, 6), relu=False), PACKED)
    assert wide.declined["packed_bias"] == {"the bias of shape [5, 6] is not one value per output column (6)": 1}
    assert wide.declined["packed_residual"] == {"the other operand is a constant (a bias, not a residual)": 1}
    nodes = [helper.make_node("MatMul", ["x", "w"], ["mm"]), helper.make_node("Relu", ["mm"], ["r"]),
             helper.make_node("Add", ["r", "x"], ["y"])]
    after_relu = tiny(nodes, {"x": [4, 6]}, ["y"], {"w": rng_array(6, 6)})
    result = rewrite(after_relu, PACKED)
    assert result.declined["packed_residual"] == {"the PackedMatMul clamps before the Add": 1}
    assert_equivalent(after_relu, result.model)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["mm"]), helper.make_node("Add", ["mm", "v"], ["y"])]
    broadcast = tiny(nodes, {"x": [4, 6], "v": [1, 6]}, ["y"], {"w": rng_array(6, 6)})
    assert rewrite(broadcast, PACKED).declined["packed_residual"] == {
        "the residual is not shaped like the product": 1}


def clamped(*clamps, opset=13):
    nodes, value = [helper.make_node("MatMul", ["x", "w"], ["v0"])], "v0"
    weights = {"w": rng_array(6, 40) * 4}
    for i, (op, lo, hi) in enumerate(clamps):
        inputs = [value]
        if op == "Clip":
            for name, bound in (("lo", lo), ("hi", hi)):
                if bound is not None:
                    weights[f"{name}{i}"] = np.float32(bound)
                inputs.append(f"{name}{i}" if bound is not None else "")
        value = f"v{i + 1}"
        nodes.append(helper.make_node(op, inputs, [value]))
    nodes.append(helper.make_node("Identity", [value], ["y"]))
    return tiny(nodes, {"x": [9, 6]}, ["y"], weights)


@pytest.mark.parametrize("clamps, lo, hi", [
    ([("Clip", 0.0, 6.0)], 0.0, 6.0),                      # ReLU6
    ([("Clip", None, 2.0)], None, 2.0),                    # an upper bound only
    ([("Relu", None, None), ("Clip", -1.0, 3.0)], 0.0, 3.0),  # clamps compose
    ([("Relu", None, None), ("Relu", None, None)], 0.0, None),
])
def test_relu_and_clip_fold_into_one_clamp(clamps, lo, hi):
    model = clamped(*clamps)
    result = rewrite(model, PACKED)
    (node, _) = result.model.graph.nodes
    assert node.op_type == "PackedMatMul" and node.attr("lo", None) == lo and node.attr("hi", None) == hi
    assert_equivalent(model, result.model)


def test_clip_declines_runtime_and_disjoint_bounds():
    disjoint = rewrite(clamped(("Clip", 0.0, 1.0), ("Clip", 2.0, 3.0)), PACKED)
    assert disjoint.fired["packed_clip"] == 1 and disjoint.declined["packed_clip"] == {"the clamps do not overlap": 1}
    nodes = [helper.make_node("MatMul", ["x", "w"], ["mm"]), helper.make_node("Clip", ["mm", "m"], ["y"])]
    runtime = tiny(nodes, {"x": [3, 6], "m": []}, ["y"], {"w": rng_array(6, 4)})
    assert rewrite(runtime, PACKED).declined["packed_clip"] == {"the Clip min is not a constant scalar": 1}


# ---------------------------------------------------------------- attention

def heads_attention(b=1, s=6, h=2, d=4, bias=None, q_scale=None, scores_scale=0.5, extra_consumer=False):
    """BERT's and GPT-2's attention: [B, S, H, D] values, transposed to heads, products, back."""
    nodes, inputs = [], {"q": [b, s, h, d], "k": [b, s, h, d], "v": [b, s, h, d]}
    q = "q"
    if q_scale is not None:
        nodes.append(helper.make_node("Mul", ["q", "qs"], ["q_scaled"]))
        q = "q_scaled"
    nodes += [
        helper.make_node("Transpose", [q], ["qt"], perm=[0, 2, 1, 3]),
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 3, 1]),
        helper.make_node("Transpose", ["v"], ["vt"], perm=[0, 2, 1, 3]),
        helper.make_node("MatMul", ["qt", "kt"], ["scores"]),
        helper.make_node("Mul", ["scores", "ss"], ["scaled"]),
    ]
    probs_in = "scaled"
    if bias is not None:
        inputs["bias"] = list(bias)
        nodes.append(helper.make_node("Add", ["scaled", "bias"], ["biased"]))
        probs_in = "biased"
    nodes += [helper.make_node("Softmax", [probs_in], ["p"], axis=-1), helper.make_node("MatMul", ["p", "vt"], ["o"]),
              helper.make_node("Transpose", ["o"], ["y"], perm=[0, 2, 1, 3])]
    outputs = ["y"] + (["qt"] if extra_consumer else [])
    weights = {"ss": np.float32(scores_scale)}
    if q_scale is not None:
        weights["qs"] = np.float32(q_scale)
    return tiny(nodes, inputs, outputs, weights)


@pytest.mark.parametrize("bias", [None, (1, 1, 6, 6), (1, 2, 6, 6), (6, 6), (1, 1, 1, 6)])
def test_attention_between_heads_layouts_runs_without_transposes(bias):
    model = heads_attention(bias=bias)
    result = only("attention_packed", model)
    assert result.fired == {"attention_packed": 1}
    assert ops(result.model) == ["PackedAttention"]
    (node,) = result.model.graph.nodes
    assert node.inputs[:3] == ("q", "k", "v") and node.attr("scale") == 0.5
    assert_equivalent(model, result.model)


def test_attention_takes_gpt2s_scale_on_q_and_keeps_a_transpose_read_elsewhere():
    model = heads_attention(q_scale=0.25, extra_consumer=True)
    result = only("attention_packed", model)
    assert result.fired == {"attention_packed": 1}
    assert sorted(ops(result.model)) == ["Mul", "PackedAttention", "Transpose"]  # qt is also an output
    node = next(n for n in result.model.graph.nodes if n.op_type == "PackedAttention")
    assert node.inputs[0] == "q" and node.attr("scale") == 0.125
    assert_equivalent(model, result.model)


def test_attention_declines_with_reasons():
    nodes = [helper.make_node("Transpose", ["q"], ["qt"], perm=[0, 2, 1, 3]),
             helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 3, 1]),
             helper.make_node("Transpose", ["v"], ["vt"], perm=[0, 2, 1, 3]),
             helper.make_node("MatMul", ["qt", "kt"], ["scores"]),
             helper.make_node("Softmax", ["scores"], ["p"], axis=2),
             helper.make_node("MatMul", ["p", "vt"], ["o"]),
             helper.make_node("Transpose", ["o"], ["y"], perm=[0, 2, 1, 3])]
    wrong_axis = tiny(nodes, {"q": [1, 6, 2, 4], "k": [1, 6, 2, 4], "v": [1, 6, 2, 4]}, ["y"])
    assert only("attention_packed", wrong_axis).declined == {
        "attention_packed": {"Softmax is not over the last axis": 1}}
    wider_bias = heads_attention(b=1, h=2, bias=(2, 1, 6, 6))  # the bias widens the batch
    assert only("attention_packed", wider_bias).declined == {
        "attention_packed": {"the bias [2, 1, 6, 6] does not broadcast over [batch, heads]": 1}}


def test_sibling_products_merge_and_attention_reads_the_fused_projection():
    s, h, d = 5, 2, 4
    nodes = [helper.make_node("MatMul", ["x", f"w{i}"], [f"p{i}"]) for i in "qkv"]
    nodes += [helper.make_node("Reshape", [f"p{i}", "heads"], [i]) for i in "qkv"]
    nodes += [helper.make_node("Transpose", ["q"], ["qt"], perm=[0, 2, 1, 3]),
              helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 3, 1]),
              helper.make_node("Transpose", ["v"], ["vt"], perm=[0, 2, 1, 3]),
              helper.make_node("MatMul", ["qt", "kt"], ["scores"]),
              helper.make_node("Softmax", ["scores"], ["p"], axis=-1),
              helper.make_node("MatMul", ["p", "vt"], ["o"]),
              helper.make_node("Transpose", ["o"], ["y"], perm=[0, 2, 1, 3])]
    weights = {f"w{i}": rng_array(h * d, h * d, seed=j) for j, i in enumerate("qkv")}
    weights["heads"] = np.array([1, s, h, d], np.int64)
    model = tiny(nodes, {"x": [1, s, h * d]}, ["y"], weights)
    result = rewrite(model, PACKED)
    assert result.fired == {"matmul_packed": 3, "packed_siblings": 1, "attention_packed": 1, "attention_qkv": 1}
    assert ops(result.model) == ["PackedMatMul", "PackedAttentionQKV"]
    assert result.model.graph.nodes[0].attr("n") == 3 * h * d
    assert_equivalent(model, result.model)


def test_siblings_wait_for_a_product_not_packed_yet():
    nodes = [helper.make_node("MatMul", ["x", f"w{i}"], [f"p{i}"], name=f"m{i}") for i in range(3)]
    nodes += [helper.make_node("Sum", ["p0", "p1", "p2"], ["y"])]
    model = tiny(nodes, {"x": [3, 4]}, ["y"], {f"w{i}": rng_array(4, 6, seed=i) for i in range(3)})
    two_packed = rewrite(model, RuleSet("some", (PACKED_RULES["matmul_packed"],)),
                         where=lambda rule, match: match[-1].name != "m2").model
    assert rewrite(two_packed, PACKED_EPILOGUE).declined["packed_siblings"] == {
        "node 'm2' (MatMul) reads the same input and may be packed first": 1}
    merged = rewrite(model, PACKED)
    assert merged.fired.get("packed_siblings") == 1 and ops(merged.model) == ["PackedMatMul", "Split", "Sum"]
    assert_equivalent(model, merged.model)


# ---------------------------------------------------------------- LayerNormalization

@pytest.mark.parametrize("bias", [True, False])
def test_layer_norm_over_the_last_axis_runs_natively(bias):
    inputs = ["x", "g", "b"] if bias else ["x", "g"]
    weights = {"g": rng_array(16, seed=1), "b": rng_array(16, seed=2)}
    model = tiny([helper.make_node("LayerNormalization", inputs, ["y"], axis=-1, epsilon=1e-3)], {"x": [2, 3, 16]},
                 ["y"], {k: v for k, v in weights.items() if k in inputs})
    result = only("layernorm_packed", model)
    assert result.fired == {"layernorm_packed": 1} and ops(result.model) == ["PackedLayerNorm"]
    assert result.model.graph.nodes[0].attr("epsilon") == pytest.approx(1e-3)
    assert_equivalent(model, result.model)


def test_layer_norm_declines_with_reasons():
    weights = {"g": rng_array(3, 16, seed=1)}
    two_axes = tiny([helper.make_node("LayerNormalization", ["x", "g"], ["y"], axis=1)], {"x": [2, 3, 16]}, ["y"],
                    weights)
    assert only("layernorm_packed", two_axes).declined == {
        "layernorm_packed": {"it normalises over more than the last axis": 1}}
    runtime_scale = tiny([helper.make_node("LayerNormalization", ["x", "s"], ["y"])], {"x": [2, 16], "s": [16]}, ["y"])
    assert only("layernorm_packed", runtime_scale).declined == {
        "layernorm_packed": {"the scale is not a constant float32 vector of the last axis' size": 1}}
    mean_used = tiny([helper.make_node("LayerNormalization", ["x", "g"], ["y", "mean"])], {"x": [2, 16]},
                     ["y", "mean"], {"g": rng_array(16)})
    assert only("layernorm_packed", mean_used).declined == {
        "layernorm_packed": {"its Mean or InvStdDev output is used": 1}}


# ---------------------------------------------------------------- sets, alternatives, a small CNN

def test_alternatives_are_single_node_choices_the_search_can_place():
    assert {n for names in PACKED_ALTERNATIVES.values() for n in names} == set(PACKED_RULES)
    model = linear(relu=False)
    view = View(model)
    for node in model.graph.nodes:
        for name in PACKED_ALTERNATIVES.get(node.op_type, ()):
            match = PACKED_RULES[name].match(node, view)
            assert match[-1] is node and PACKED_RULES[name].check(match, view) is None
    assert {r.name for r in PACKED} == set(PACKED_RULES) | {r.name for r in PACKED_EPILOGUE}


def test_small_resnet_block_with_folding_layout_and_packed():
    c = 8
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "g", "be", "mu", "var"], ["n1"]),
        helper.make_node("Relu", ["n1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c2", "r1"], ["s"]),
        helper.make_node("Relu", ["s"], ["r2"]),
        helper.make_node("Conv", ["r2", "w3"], ["c3"], strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["c3"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "fc", "fb"], ["y"], transB=1),
    ]
    weights = {"w1": rng_array(c, 3, 3, 3) / 5, "b1": rng_array(c, seed=1), "g": rng_array(c, seed=2),
               "be": rng_array(c, seed=3), "mu": rng_array(c, seed=4), "var": np.abs(rng_array(c, seed=5)) + 0.5,
               "w2": rng_array(c, c, 3, 3, seed=6) / 9, "w3": rng_array(c, c, 1, 1, seed=7) / 3,
               "fc": rng_array(10, c, seed=8), "fb": rng_array(10, seed=9)}
    model = tiny(nodes, {"x": [1, 3, 12, 12]}, ["y"], weights)
    result = rewrite(rewrite(rewrite(model, FOLDING).model, LAYOUT).model, PACKED)
    assert result.fired["packed_residual"] == 1 and result.fired["packed_relu"] == 2
    assert "Add" not in ops(result.model) and "Relu" not in ops(result.model)
    assert_equivalent(model, result.model)
