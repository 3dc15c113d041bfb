"""Algorithm-choice rules: each fires, declines with its reason where it must, and keeps outputs."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from autofuse.api import rewrite_model
from autofuse.executable import Executable
from autofuse.rewrite import rewrite
from autofuse.rewrite.algorithm import ALGORITHM, ALTERNATIVES, RULE_SETS, RULES, alternatives_for, winograd_weight
from autofuse.rewrite.layout import LAYOUT
from test_rewrite_engine import ops, rng_array, tiny


def assert_close(before, after, rtol: float = 1e-5, seed: int = 0) -> None:
    """Same outputs on random inputs, within rtol of the largest output element."""
    rng = np.random.default_rng(seed)
    inputs = {n: rng.standard_normal(before.graph.type_of(n).shape).astype(np.float32) for n in before.graph.inputs}
    for e, g in zip(Executable(before).compile()(inputs), Executable(after).compile()(inputs)):
        np.testing.assert_allclose(g, e, rtol=rtol, atol=rtol * max(1.0, float(np.abs(e).max())))


def conv_model(x_shape, w_shape, bias=False, **attrs):
    inputs = ["x", "w", "b"] if bias else ["x", "w"]
    weights = {"w": rng_array(*w_shape) / np.sqrt(np.prod(w_shape[1:])), "b": rng_array(w_shape[0], seed=1)}
    return tiny([helper.make_node("Conv", inputs, ["y"], **attrs)], {"x": list(x_shape)}, ["y"],
                {k: v for k, v in weights.items() if k in inputs})


def nhwc(model):
    """The model after the layout rules: its 2-D convolutions are ConvNHWC."""
    return rewrite(model, LAYOUT).model


def only(name, model):
    return rewrite(model, RULE_SETS[name])


# ---------------------------------------------------------------- depthwise

@pytest.mark.parametrize("attrs, bias", [
    ({}, True), ({"strides": [2, 2]}, False), ({"pads": [1, 0, 2, 1]}, True),
    ({"dilations": [2, 1], "pads": [2, 1, 2, 1]}, False), ({"auto_pad": "SAME_UPPER", "strides": [2, 2]}, True),
])
def test_depthwise_conv_becomes_shifted_multiplies(attrs, bias):
    model = conv_model((2, 6, 9, 8), (6, 1, 3, 3), bias=bias, group=6, **attrs)
    result = only("depthwise_conv_nhwc", nhwc(model))
    assert result.fired == {"depthwise_conv_nhwc": 1}
    assert "DepthwiseConvNHWC" in ops(result.model) and "ConvNHWC" not in ops(result.model)
    assert_close(model, result.model)


@pytest.mark.parametrize("w_shape, group, reason", [
    ((6, 6, 3, 3), 1, "group 1 is not the 6 input channels"),
    ((6, 2, 3, 3), 3, "group 3 is not the 6 input channels"),
    ((12, 1, 3, 3), 6, "channel multiplier is not 1"),
])
def test_depthwise_declines_other_convolutions(w_shape, group, reason):
    result = only("depthwise_conv_nhwc", nhwc(conv_model((1, 6, 8, 8), w_shape, group=group)))
    assert result.fired == {}
    assert result.declined == {"depthwise_conv_nhwc": {reason: 1}}


# ---------------------------------------------------------------- im2col

IM2COL_CASES = [
    ((6, 4, 3, 3), {}, True), ((6, 4, 3, 3), {"strides": [2, 2], "pads": [1, 1, 1, 1]}, False),
    ((6, 4, 3, 2), {"dilations": [2, 1], "pads": [0, 1, 2, 0]}, True), ((6, 4, 1, 1), {"strides": [2, 2]}, False),
    ((6, 4, 5, 5), {"auto_pad": "SAME_LOWER"}, True),
]


@pytest.mark.parametrize("w_shape, attrs, bias", IM2COL_CASES)
def test_nchw_conv_becomes_patches_and_matmul(w_shape, attrs, bias):
    model = conv_model((2, 4, 9, 10), w_shape, bias=bias, **attrs)
    result = only("conv_im2col", model)
    assert result.fired == {"conv_im2col": 1}
    assert ops(result.model) == ["PatchesNCHW", "MatMul"] + (["Add"] if bias else []) + ["Reshape"]
    assert_close(model, result.model)


@pytest.mark.parametrize("w_shape, attrs, bias", IM2COL_CASES)
def test_nhwc_conv_becomes_patches_and_matmul(w_shape, attrs, bias):
    model = conv_model((2, 4, 9, 10), w_shape, bias=bias, **attrs)
    result = only("nhwc_conv_im2col", nhwc(model))
    assert result.fired == {"nhwc_conv_im2col": 1}
    assert ops(result.model) == ["Transpose", "PatchesNHWC", "MatMul"] + (["Add"] if bias else []) + ["Transpose"]
    assert_close(model, result.model)


def test_im2col_declines_grouped_non_2d_and_runtime_weights():
    grouped = only("conv_im2col", conv_model((1, 4, 6, 6), (4, 2, 3, 3), group=2))
    assert grouped.declined == {"conv_im2col": {"grouped convolution": 1}}
    one_d = tiny([helper.make_node("Conv", ["x", "w"], ["y"])], {"x": [1, 4, 9]}, ["y"], {"w": rng_array(6, 4, 3)})
    assert only("conv_im2col", one_d).declined == {"conv_im2col": {"1-D convolution, not 2-D": 1}}
    runtime = tiny([helper.make_node("Conv", ["x", "w"], ["y"])], {"x": [1, 4, 6, 6], "w": [6, 4, 3, 3]}, ["y"])
    assert only("conv_im2col", runtime).declined == {"conv_im2col": {"Conv weights are not constant": 1}}


# ---------------------------------------------------------------- Winograd

@pytest.mark.parametrize("tile, rtol", [(2, 1e-5), (4, 5e-5)])
@pytest.mark.parametrize("x_shape, attrs, bias", [
    ((2, 8, 9, 7), {"pads": [1, 1, 1, 1]}, True), ((1, 8, 12, 12), {}, False),
    ((1, 8, 10, 11), {"pads": [0, 2, 1, 0]}, True), ((1, 8, 6, 6), {"auto_pad": "SAME_UPPER"}, False),
])
def test_winograd_replaces_3x3_convolutions(tile, rtol, x_shape, attrs, bias):
    model = conv_model(x_shape, (16, 8, 3, 3), bias=bias, **attrs)
    name = f"winograd_f{tile}x{tile}_3x3"
    result = only(name, nhwc(model))
    assert result.fired == {name: 1}
    assert ops(result.model) == (["Transpose", "WinogradInputNHWC", "MatMul", "WinogradOutputNHWC"]
                                 + (["Add"] if bias else []) + ["Transpose"])
    assert_close(model, result.model, rtol=rtol)


@pytest.mark.parametrize("size, tile", [(28, 4), (14, 2)])
def test_winograd_by_size_takes_f4_only_with_many_tiles(size, tile):
    model = conv_model((1, 4, size, size), (8, 4, 3, 3), pads=[1, 1, 1, 1])
    result = only("winograd_3x3", nhwc(model))
    assert result.fired == {"winograd_3x3": 1}
    assert {n.attr("tile") for n in result.model.graph.nodes if n.op_type.startswith("Winograd")} == {tile}
    assert_close(model, result.model, rtol=5e-5)


def test_winograd_weight_transform_is_exact_in_float64():
    g = np.random.default_rng(0).standard_normal((3, 3, 2, 5))
    u = winograd_weight(g, 2).reshape(4, 4, 2, 5)
    np.testing.assert_allclose(u[0, 0], g[0, 0])  # G's first row picks g[0]
    np.testing.assert_allclose(u[1, 1], g.sum(axis=(0, 1)) / 4)  # rows (1/2)(1, 1, 1) both ways


@pytest.mark.parametrize("w_shape, attrs, reason", [
    ((16, 8, 3, 3), {"strides": [2, 2]}, "stride is not 1"),
    ((16, 8, 3, 3), {"dilations": [2, 2]}, "dilated convolution"),
    ((16, 4, 3, 3), {"group": 2}, "grouped convolution"),
    ((16, 8, 5, 5), {}, "kernel [5, 5] is not 3x3"),
])
@pytest.mark.parametrize("name", ["winograd_f2x2_3x3", "winograd_f4x4_3x3", "winograd_3x3"])
def test_winograd_declines(name, w_shape, attrs, reason):
    result = only(name, nhwc(conv_model((1, 8, 12, 12), w_shape, **attrs)))
    assert result.fired == {}
    assert result.declined == {name: {reason: 1}}


def test_nchw_conv_is_not_a_winograd_root():
    result = only("winograd_f4x4_3x3", conv_model((1, 8, 12, 12), (16, 8, 3, 3)))
    assert result.fired == {} and result.declined == {}


# ---------------------------------------------------------------- weight layouts

def test_matmul_weight_is_stored_nk():
    model = tiny([helper.make_node("MatMul", ["x", "w"], ["y"])], {"x": [2, 3, 16]}, ["y"], {"w": rng_array(16, 8)})
    result = only("matmul_weight_nk", model)
    assert result.fired == {"matmul_weight_nk": 1}
    assert ops(result.model) == ["MatMulTransB"]
    assert result.model.graph.type_of(result.model.graph.nodes[0].inputs[1]).shape == (8, 16)
    assert_close(model, result.model)


@pytest.mark.parametrize("inputs, weights, reason", [
    ({"x": [3, 16], "w": [16, 8]}, {}, "B is not constant"),
    ({"x": [2, 3, 16]}, {"w": rng_array(2, 16, 8)}, "B is 3-D, not a 2-D weight"),
    ({"x": [16]}, {"w": rng_array(16, 8)}, "A is a vector or its shape is unknown"),
])
def test_matmul_weight_nk_declines(inputs, weights, reason):
    model = tiny([helper.make_node("MatMul", ["x", "w"], ["y"])], inputs, ["y"], weights)
    assert only("matmul_weight_nk", model).declined == {"matmul_weight_nk": {reason: 1}}


def test_gemm_weight_is_stored_nk():
    node = helper.make_node("Gemm", ["x", "w", "c"], ["y"], alpha=0.5, beta=2.0)
    model = tiny([node], {"x": [4, 16]}, ["y"], {"w": rng_array(16, 8), "c": rng_array(8, seed=1)})
    result = only("gemm_weight_nk", model)
    assert result.fired == {"gemm_weight_nk": 1}
    assert result.model.graph.nodes[0].attr("transB") == 1
    assert result.declined == {"gemm_weight_nk": {"B is already stored (N, K)": 1}}
    assert_close(model, result.model)


# ---------------------------------------------------------------- GELU

def _gelu_erf_nodes(half: float = 0.5):
    """torch's exact GELU as exported in BERT: ((x * (erf(x / sqrt 2) + 1)) * 0.5)."""
    return [helper.make_node("Div", ["x", "sqrt2"], ["d"]), helper.make_node("Erf", ["d"], ["e"]),
            helper.make_node("Add", ["e", "one"], ["a"]), helper.make_node("Mul", ["x", "a"], ["p"]),
            helper.make_node("Mul", ["p", "half"], ["y"])], {
        "sqrt2": np.array(np.sqrt(2.0), np.float32), "one": np.array(1.0, np.float32),
        "half": np.array(half, np.float32)}


def _gelu_tanh_nodes():
    """GPT-2's GELU: (x * 0.5) * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))."""
    nodes = [helper.make_node("Mul", ["x", "half"], ["h"]), helper.make_node("Pow", ["x", "three"], ["p3"]),
             helper.make_node("Mul", ["p3", "c"], ["cubic"]), helper.make_node("Add", ["x", "cubic"], ["s"]),
             helper.make_node("Mul", ["s", "k"], ["ks"]), helper.make_node("Tanh", ["ks"], ["t"]),
             helper.make_node("Add", ["t", "one"], ["a"]), helper.make_node("Mul", ["h", "a"], ["y"])]
    consts = {"half": 0.5, "three": 3.0, "c": 0.044715, "k": np.sqrt(2 / np.pi), "one": 1.0}
    return nodes, {k: np.array(v, np.float32) for k, v in consts.items()}


@pytest.mark.parametrize("name, build, approximate", [
    ("gelu_erf_unit", _gelu_erf_nodes, None), ("gelu_tanh_unit", _gelu_tanh_nodes, "tanh")])
def test_gelu_patterns_become_one_gelu(name, build, approximate):
    nodes, consts = build()
    model = tiny(nodes, {"x": [2, 64]}, ["y"], consts)
    result = only(name, model)
    assert result.fired == {name: 1}
    assert ops(result.model) == ["Gelu"]
    assert result.model.graph.nodes[0].attr("approximate") == approximate
    assert_close(model, result.model)


def test_gelu_is_left_alone_when_a_constant_or_a_reader_differs():
    nodes, consts = _gelu_erf_nodes(half=0.6)
    assert only("gelu_erf_unit", tiny(nodes, {"x": [2, 8]}, ["y"], consts)).fired == {}
    nodes, consts = _gelu_erf_nodes()
    assert only("gelu_erf_unit", tiny(nodes, {"x": [2, 8]}, ["y", "e"], consts)).fired == {}


# ---------------------------------------------------------------- attention

def _attention_model(axis: int = -1, mask: bool = True, cast: bool = True, scale_op: str = "Mul"):
    """BERT/GPT-2 style: softmax(q @ kt * 0.125 + mask) [Cast] @ v."""
    nodes = [helper.make_node("MatMul", ["q", "kt"], ["s"]),
             helper.make_node(scale_op, ["s", "scale"], ["ss"])]
    scores = "ss"
    if mask:
        nodes.append(helper.make_node("Add", ["ss", "mask"], ["sm"]))
        scores = "sm"
    nodes.append(helper.make_node("Softmax", [scores], ["p"], axis=axis))
    probs = "p"
    if cast:
        nodes.append(helper.make_node("Cast", ["p"], ["pc"], to=TensorProto.FLOAT))
        probs = "pc"
    nodes.append(helper.make_node("MatMul", [probs, "v"], ["y"]))
    weights = {"scale": np.array(0.125 if scale_op == "Mul" else 8.0, np.float32),
               "mask": np.triu(np.full((1, 1, 16, 16), -1e4, np.float32), 1)}
    return tiny(nodes, {"q": [1, 3, 16, 8], "kt": [1, 3, 8, 16], "v": [1, 3, 16, 8]}, ["y"],
                {k: v for k, v in weights.items() if mask or k != "mask"})


@pytest.mark.parametrize("mask, cast, scale_op", [(True, True, "Mul"), (False, False, "Div"), (True, False, "Div")])
def test_attention_becomes_one_node(mask, cast, scale_op):
    model = _attention_model(mask=mask, cast=cast, scale_op=scale_op)
    result = only("attention_unit", model)
    assert result.fired == {"attention_unit": 1}
    assert ops(result.model) == ["DotProductAttention"]
    assert result.model.graph.nodes[0].attr("scale") == 0.125
    assert_close(model, result.model)


def test_attention_declines_a_softmax_over_another_axis():
    result = only("attention_unit", _attention_model(axis=2))
    assert result.declined == {"attention_unit": {"Softmax is not over the last axis": 1}}


# ---------------------------------------------------------------- LayerNorm

def _layernorm_model(opset: int = 13, square: str = "Pow", affine: bool = True, scale_shape=(16,), axes=(-1,)):
    """The decomposed layer norm torch exports before opset 17."""
    def mean(inp, out):
        if opset >= 18:
            return helper.make_node("ReduceMean", [inp, "axes"], [out])
        return helper.make_node("ReduceMean", [inp], [out], axes=list(axes))
    nodes = [mean("x", "m"), helper.make_node("Sub", ["x", "m"], ["d"]),
             helper.make_node("Pow", ["d", "two"], ["sq"]) if square == "Pow" else
             helper.make_node("Mul", ["d", "d"], ["sq"]),
             mean("sq", "v"), helper.make_node("Add", ["v", "eps"], ["ve"]), helper.make_node("Sqrt", ["ve"], ["s"]),
             helper.make_node("Div", ["d", "s"], ["n"] if affine else ["y"])]
    consts = {"two": np.array(2.0, np.float32), "eps": np.array(1e-5, np.float32),
              "axes": np.array(axes, np.int64)}
    if affine:
        nodes += [helper.make_node("Mul", ["n", "gamma"], ["g"]), helper.make_node("Add", ["g", "beta"], ["y"])]
        consts.update(gamma=rng_array(*scale_shape, seed=2), beta=rng_array(16, seed=3))
    used = {i for n in nodes for i in n.input}
    return tiny(nodes, {"x": [2, 5, 16]}, ["y"], {k: v for k, v in consts.items() if k in used}, opset=opset)


@pytest.mark.parametrize("opset, square, affine", [(13, "Pow", True), (18, "Mul", True), (13, "Pow", False)])
def test_decomposed_layernorm_becomes_one_node(opset, square, affine):
    model = _layernorm_model(opset, square, affine)
    result = only("layernorm_unit", model)
    assert result.fired == {"layernorm_unit": 1}
    assert ops(result.model) == ["LayerNormalization"]
    assert len(result.model.graph.nodes[0].inputs) == (3 if affine else 2)
    assert_close(model, result.model)


def test_layernorm_declines_a_scale_that_is_not_per_feature():
    result = only("layernorm_unit", _layernorm_model(scale_shape=(5, 1)))
    assert result.fired == {}
    assert result.declined == {"layernorm_unit": {"the affine constant [5, 1] is not per normalised feature [16]": 1}}


def test_a_norm_over_a_leading_axis_is_left_alone():
    assert only("layernorm_unit", _layernorm_model(axes=(1,))).fired == {}


# ---------------------------------------------------------------- rule sets and alternatives

def test_every_alternative_is_a_rule_with_its_own_set():
    named = {name for names in ALTERNATIVES.values() for name in names}
    assert named == set(RULES) == set(RULE_SETS)
    for op_type, names in ALTERNATIVES.items():
        assert all(op_type in RULES[n].op_types for n in names)


def test_alternatives_for_a_node():
    model = nhwc(conv_model((1, 8, 12, 12), (8, 8, 3, 3), pads=[1, 1, 1, 1]))
    conv = next(n for n in model.graph.nodes if n.op_type == "ConvNHWC")
    assert alternatives_for(model, conv) == ("winograd_3x3", "winograd_f4x4_3x3", "winograd_f2x2_3x3",
                                             "nhwc_conv_im2col")
    depthwise = nhwc(conv_model((1, 8, 12, 12), (8, 1, 3, 3), group=8))
    conv = next(n for n in depthwise.graph.nodes if n.op_type == "ConvNHWC")
    assert alternatives_for(depthwise, conv) == ("depthwise_conv_nhwc",)


def test_algorithm_family_runs_after_layout():
    model = conv_model((1, 8, 12, 12), (8, 1, 3, 3), group=8, pads=[1, 1, 1, 1])
    result = rewrite_model(model, ["layout", "algorithm"])
    assert result.fired["depthwise_conv_nhwc"] == 1
    assert set(result.fired) <= {r.name for r in LAYOUT} | {r.name for r in ALGORITHM}
    assert_close(model, result.model)
