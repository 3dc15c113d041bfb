"""Algorithm-choice rules: each is one form an op can take; which pays off is a decision.

Convolutions (NCHW `Conv`, and the channels-last `ConvNHWC` the layout rules make):

* `conv_im2col`, `nhwc_conv_im2col`: patches by strided slices (autofuse's
  `PatchesNCHW` / `PatchesNHWC`), then one MatMul with the reshaped weight.
* `winograd_f2x2_3x3`, `winograd_f4x4_3x3`: a stride-1, undilated, ungrouped 3x3
  ConvNHWC becomes input transform -> batched MatMul over the (t+2)^2 tile
  positions -> output transform. The weight transform G g G^T runs once, here,
  in float64, and is stored as a new weight. `winograd_3x3` picks the tile by
  size (F4_MIN_TILES), as measured.
* `depthwise_conv_nhwc`: a ConvNHWC with group == channels becomes
  `DepthwiseConvNHWC`, kh*kw shifted multiplies that XLA fuses into one loop.

Matrix products with a constant weight:

* `matmul_weight_nk`: MatMul(x, W[K, N]) -> MatMulTransB(x, W^T) — the weight
  stored (N, K), the layout XLA's CPU dot measured fastest in.
* `gemm_weight_nk`: Gemm(transB=0) with a constant B -> Gemm(transB=1, B^T).

Patterns lowered as one node:

* `attention_unit`: MatMul(Softmax(MatMul(q, kt) * s [+ bias]) [Cast], v) ->
  `DotProductAttention(q, kt, v, bias?)`.
* `gelu_erf_unit`, `gelu_tanh_unit`: the exact (erf) and tanh GELU formulas as
  exported by torch -> ONNX `Gelu`.
* `layernorm_unit`: (x - mean) / sqrt(mean((x - mean)^2) + eps) [* scale] [+ shift]
  over trailing axes, as exported before opset 17 -> ONNX `LayerNormalization`.

Every rule is also its own one-rule set (`RULE_SETS[name]`), and `ALTERNATIVES`
lists, per root op type, the rules a search may choose between for a node;
`alternatives_for(model, node)` says which of them apply to it. `ALGORITHM`, the
default family, holds only the rules that won in the measurements recorded in
docs/decisions.md.
"""
from __future__ import annotations

from math import prod
from typing import Callable, NamedTuple

import numpy as np

from autofuse.ir import Model, Node
from autofuse.ops.internal import DOMAIN, WINOGRAD_G, winograd_tiles
from autofuse.ops.nn import _window_pads
from autofuse.rewrite.engine import Match, Replacement, Rule, RuleSet, View
from autofuse.rewrite.transpose import constant_conv_decline

FAMILY = "algorithm"


def _root(node: Node, view: View) -> Match | None:
    return (node,)


def _attrs(**values) -> tuple[tuple[str, object], ...]:
    return tuple(sorted(values.items()))


def _has_bias(conv: Node) -> bool:
    return len(conv.inputs) > 2 and bool(conv.inputs[2])


def _ints(node: Node, name: str) -> tuple[int, ...]:
    return tuple(int(v) for v in node.attr(name, ()) or (1, 1))


def _explicit_pads(conv: Node, spatial, kernel) -> tuple[int, ...]:
    """ONNX-ordered explicit pads (begins, then ends), auto_pad resolved as the lowering does
    (the node stands in for the lowering's Ctx: both answer `attr(name, default)`)."""
    pairs = _window_pads(conv, spatial, kernel, _ints(conv, "strides"), _ints(conv, "dilations"))
    return tuple(int(p[0]) for p in pairs) + tuple(int(p[1]) for p in pairs)


def _window_attrs(conv: Node, spatial, kernel) -> dict:
    """Explicit kernel_shape, strides, dilations and pads of a 2-D conv window."""
    return {"kernel_shape": tuple(int(k) for k in kernel), "strides": _ints(conv, "strides"),
            "dilations": _ints(conv, "dilations"), "pads": _explicit_pads(conv, spatial, kernel)}


# ---------------------------------------------------------------- convolution checks

def _conv_decline(conv: Node, view: View, *, nhwc: bool) -> str | None:
    """Why a (2-D, constant-weight) convolution cannot take any of these forms."""
    if nhwc and conv.domain != DOMAIN:
        return "not the autofuse ConvNHWC"
    reason = constant_conv_decline(conv, view)
    if reason:
        return reason
    if len(view.shape(conv.inputs[0])) != 4:
        return f"{len(view.shape(conv.inputs[0])) - 2}-D convolution, not 2-D"
    if view.shape(conv.outputs[0]) is None:
        return "output shape is unknown"
    return None


def _check_im2col(nhwc: bool) -> Callable[[Match, View], str | None]:
    def check(m: Match, view: View) -> str | None:
        conv = m[0]
        reason = _conv_decline(conv, view, nhwc=nhwc)
        if reason:
            return reason
        return "grouped convolution" if conv.attr("group", 1) != 1 else None
    return check


# ---------------------------------------------------------------- im2col

def _im2col_nhwc(m: Match, view: View) -> Replacement:
    conv = m[0]
    x, out = conv.inputs[0], conv.outputs[0]
    w = view.tensor(conv.inputs[1])
    kh, kw, c, k = w.shape
    patches, w2 = view.fresh(out + "_patches"), view.fresh(conv.inputs[1] + "_im2col")
    nodes = [Node("PatchesNHWC", (x,), (patches,), _attrs(**_window_attrs(conv, view.shape(x)[1:3], (kh, kw))),
                  DOMAIN, conv.name)]
    tensors = {w2: np.ascontiguousarray(w.reshape(kh * kw * c, k))}
    if not _has_bias(conv):
        nodes.append(Node("MatMul", (patches, w2), (out,)))
    else:
        mm = view.fresh(out + "_mm")
        nodes += [Node("MatMul", (patches, w2), (mm,)), Node("Add", (mm, conv.inputs[2]), (out,))]
    return Replacement(nodes=tuple(nodes), tensors=tensors)


def _im2col_nchw(m: Match, view: View) -> Replacement:
    conv = m[0]
    x, out = conv.inputs[0], conv.outputs[0]
    w = view.tensor(conv.inputs[1])
    k = w.shape[0]
    n, _, ho, wo = view.shape(out)
    patches, w2, mm = view.fresh(out + "_patches"), view.fresh(conv.inputs[1] + "_im2col"), view.fresh(out + "_mm")
    nodes = [Node("PatchesNCHW", (x,), (patches,),
                  _attrs(**_window_attrs(conv, view.shape(x)[2:], w.shape[2:])), DOMAIN, conv.name),
             Node("MatMul", (w2, patches), (mm,))]
    tensors = {w2: np.ascontiguousarray(w.reshape(k, -1))}
    if _has_bias(conv):
        biased, b2 = view.fresh(out + "_biased"), view.fresh(conv.inputs[2] + "_col")
        nodes.append(Node("Add", (mm, b2), (biased,)))
        tensors[b2] = view.tensor(conv.inputs[2]).reshape(-1, 1).astype(w.dtype)
        mm = biased
    shape = view.fresh(out + "_shape")
    nodes.append(Node("Reshape", (mm, shape), (out,)))
    tensors[shape] = np.array([n, k, ho, wo], np.int64)
    return Replacement(nodes=tuple(nodes), tensors=tensors)


CONV_IM2COL = Rule("conv_im2col", FAMILY, frozenset({"Conv"}), _root, _check_im2col(False), _im2col_nchw)
NHWC_CONV_IM2COL = Rule("nhwc_conv_im2col", FAMILY, frozenset({"ConvNHWC"}), _root, _check_im2col(True),
                        _im2col_nhwc)


# ---------------------------------------------------------------- Winograd

def _check_winograd(m: Match, view: View) -> str | None:
    conv = m[0]
    reason = _conv_decline(conv, view, nhwc=True)
    if reason:
        return reason
    w = view.tensor(conv.inputs[1])
    if w.shape[:2] != (3, 3):
        return f"kernel {list(w.shape[:2])} is not 3x3"
    if any(s != 1 for s in _ints(conv, "strides")):
        return "stride is not 1"
    if any(d != 1 for d in _ints(conv, "dilations")):
        return "dilated convolution"
    if conv.attr("group", 1) != 1:
        return "grouped convolution"
    return None


def winograd_weight(w: np.ndarray, tile: int) -> np.ndarray:
    """U = G g G^T for an HWIO 3x3 kernel, as ((t+2)^2, C, K), computed in float64."""
    g = WINOGRAD_G[tile]
    u = np.einsum("ai,bj,ijck->abck", g, g, np.asarray(w, np.float64))
    return u.reshape(-1, *w.shape[2:]).astype(w.dtype)


def _winograd(tile: int) -> Callable[[Match, View], Replacement]:
    def rewrite(m: Match, view: View) -> Replacement:
        conv = m[0]
        x, out = conv.inputs[0], conv.outputs[0]
        n, ho, wo, _ = view.shape(out)
        tiles, products, u = (view.fresh(out + s) for s in ("_wino_in", "_wino_mm", "_wino_u"))
        pads = _explicit_pads(conv, view.shape(x)[1:3], (3, 3))
        y = view.fresh(out + "_wino_out") if _has_bias(conv) else out
        nodes = [Node("WinogradInputNHWC", (x,), (tiles,), _attrs(pads=pads, tile=tile), DOMAIN, conv.name),
                 Node("MatMul", (tiles, u), (products,)),
                 Node("WinogradOutputNHWC", (products,), (y,), _attrs(output_shape=(n, ho, wo), tile=tile), DOMAIN)]
        if _has_bias(conv):
            nodes.append(Node("Add", (y, conv.inputs[2]), (out,)))
        return Replacement(nodes=tuple(nodes), tensors={u: winograd_weight(view.tensor(conv.inputs[1]), tile)})
    return rewrite


WINOGRAD_F2 = Rule("winograd_f2x2_3x3", FAMILY, frozenset({"ConvNHWC"}), _root, _check_winograd, _winograd(2))
WINOGRAD_F4 = Rule("winograd_f4x4_3x3", FAMILY, frozenset({"ConvNHWC"}), _root, _check_winograd, _winograd(4))

# F(4x4) multiplies 4x less than direct convolution but its transformed weight is
# 4x the kernel (F(2x2): 2.25x less, 1.8x the kernel): with few tiles the batched
# products are bound by weight traffic. Measured on ResNet-50's layers (2-core
# Zen 4), F(4x4) wins from 49 tiles per image (28x28) up, F(2x2) below (14x14, 7x7).
F4_MIN_TILES = 32


def tile_by_size(out_shape: tuple[int, ...]) -> int:
    """The output tile `winograd_3x3` picks for a ConvNHWC output of shape (N, Ho, Wo, C)."""
    n, ho, wo = out_shape[:3]
    return 4 if n * winograd_tiles(ho, 4) * winograd_tiles(wo, 4) >= F4_MIN_TILES else 2


def _winograd_by_size(m: Match, view: View) -> Replacement:
    return _winograd(tile_by_size(view.shape(m[0].outputs[0])))(m, view)


WINOGRAD_3X3 = Rule("winograd_3x3", FAMILY, frozenset({"ConvNHWC"}), _root, _check_winograd, _winograd_by_size)


# ---------------------------------------------------------------- depthwise

def _check_depthwise(m: Match, view: View) -> str | None:
    conv = m[0]
    reason = _conv_decline(conv, view, nhwc=True)
    if reason:
        return reason
    group, channels = conv.attr("group", 1), view.shape(conv.inputs[0])[-1]
    if group == 1 or group != channels:
        return f"group {group} is not the {channels} input channels"
    if view.tensor(conv.inputs[1]).shape[-1] != channels:
        return "channel multiplier is not 1"
    return None


def _depthwise(m: Match, view: View) -> Replacement:
    conv = m[0]
    w = view.tensor(conv.inputs[1])
    w3 = view.fresh(conv.inputs[1] + "_dw")
    attrs = _attrs(**_window_attrs(conv, view.shape(conv.inputs[0])[1:3], w.shape[:2]))
    node = Node("DepthwiseConvNHWC", (conv.inputs[0], w3) + tuple(conv.inputs[2:]), conv.outputs, attrs, DOMAIN,
                conv.name)
    return Replacement(nodes=(node,), tensors={w3: np.ascontiguousarray(w.reshape(w.shape[0], w.shape[1], -1))})


DEPTHWISE_CONV_NHWC = Rule("depthwise_conv_nhwc", FAMILY, frozenset({"ConvNHWC"}), _root, _check_depthwise,
                           _depthwise)


# ---------------------------------------------------------------- weight layouts

def _check_matmul_nk(m: Match, view: View) -> str | None:
    node = m[0]
    w = view.tensor(node.inputs[1])
    if w is None:
        return "B is not constant"
    if w.ndim != 2:
        return f"B is {w.ndim}-D, not a 2-D weight"
    a = view.shape(node.inputs[0])
    if a is None or len(a) < 2:
        return "A is a vector or its shape is unknown"
    return None


def _matmul_nk(m: Match, view: View) -> Replacement:
    node = m[0]
    wt = view.fresh(node.inputs[1] + "_nk")
    return Replacement(nodes=(Node("MatMulTransB", (node.inputs[0], wt), node.outputs, (), DOMAIN, node.name),),
                       tensors={wt: np.ascontiguousarray(view.tensor(node.inputs[1]).T)})


def _check_gemm_nk(m: Match, view: View) -> str | None:
    node = m[0]
    if node.attr("transB", 0):
        return "B is already stored (N, K)"
    return "B is not constant" if view.tensor(node.inputs[1]) is None else None


def _gemm_nk(m: Match, view: View) -> Replacement:
    node = m[0]
    bt = view.fresh(node.inputs[1] + "_nk")
    attrs = tuple(sorted({**dict(node.attrs), "transB": 1}.items()))
    return Replacement(nodes=(node.replace(inputs=(node.inputs[0], bt) + node.inputs[2:], attrs=attrs),),
                       tensors={bt: np.ascontiguousarray(view.tensor(node.inputs[1]).T)})


MATMUL_WEIGHT_NK = Rule("matmul_weight_nk", FAMILY, frozenset({"MatMul"}), _root, _check_matmul_nk, _matmul_nk)
GEMM_WEIGHT_NK = Rule("gemm_weight_nk", FAMILY, frozenset({"Gemm"}), _root, _check_gemm_nk, _gemm_nk)


# ---------------------------------------------------------------- pattern helpers

def _scalar(view: View, value: str) -> float | None:
    c = view.tensor(value)
    return float(np.asarray(c).reshape(())) if c is not None and np.asarray(c).size == 1 else None


def _near(a: float | None, b: float) -> bool:
    return a is not None and abs(a - b) <= 1e-6 * max(1.0, abs(b))


def _inner(view: View, value: str, op_type: str, consumer: Node) -> Node | None:
    """The producer of `value` if it is an `op_type` node that feeds `consumer` alone."""
    node = view.producer(value, op_type)
    return node if node is not None and view.only_feeds(node, consumer) is None else None


def split_scalar(view: View, node: Node) -> tuple[str, float] | None:
    """(operand, constant) of a binary node with one scalar-constant operand."""
    if len(node.inputs) != 2:
        return None
    for i in (0, 1):
        c = _scalar(view, node.inputs[1 - i])
        if c is not None:
            return node.inputs[i], c
    return None


def _factors(view: View, value: str, root: Node, found: list[Node]) -> list[str]:
    """The operands of a tree of Muls under `root` (inner Muls must feed their parent alone)."""
    node = view.producer(value, "Mul")
    if node is None or view.only_feeds(node, root) is not None:
        return [value]
    found.append(node)
    return [f for i in node.inputs for f in _factors(view, i, node, found)]


# ---------------------------------------------------------------- GELU

InnerFn = Callable[[View, str, Node], tuple[str, list[Node]] | None]


def _gelu_plan(inner: InnerFn, node: Node, view: View) -> tuple[str, Match] | None:
    """(x, matched nodes) when `node` is the last Mul of x * 0.5 * (1 + inner(x))."""
    found: list[Node] = []
    factors = [f for i in node.inputs for f in _factors(view, i, node, found)]
    if len(factors) != 3:
        return None
    for f in factors:
        rest = list(factors)
        rest.remove(f)
        halves = [g for g in rest if _near(_scalar(view, g), 0.5)]
        if not halves:
            continue
        rest.remove(halves[0])
        reader = next(n for n in found + [node] if f in n.inputs)
        add = _inner(view, f, "Add", reader)
        split = split_scalar(view, add) if add is not None else None
        if split is None or not _near(split[1], 1.0):
            continue
        result = inner(view, split[0], add)
        if result is not None and result[0] == rest[0]:
            return rest[0], tuple(result[1]) + (add,) + tuple(found) + (node,)
    return None


def _erf_inner(view: View, value: str, add: Node) -> tuple[str, list[Node]] | None:
    """erf(x / sqrt 2) or erf(x * (1 / sqrt 2)): (x, [scale node, Erf])."""
    erf = _inner(view, value, "Erf", add)
    if erf is None:
        return None
    for op_type, want in (("Div", np.sqrt(2.0)), ("Mul", 1.0 / np.sqrt(2.0))):
        scale = _inner(view, erf.inputs[0], op_type, erf)
        split = split_scalar(view, scale) if scale is not None else None
        if split and _near(split[1], want) and (op_type == "Mul" or scale.inputs[0] == split[0]):
            return split[0], [scale, erf]
    return None


def _tanh_inner(view: View, value: str, add: Node) -> tuple[str, list[Node]] | None:
    """tanh(sqrt(2/pi) * (x + 0.044715 * x^3)): (x, [Pow, Mul, Add, Mul, Tanh])."""
    tanh = _inner(view, value, "Tanh", add)
    outer = _inner(view, tanh.inputs[0], "Mul", tanh) if tanh is not None else None
    split = split_scalar(view, outer) if outer is not None else None
    if split is None or not _near(split[1], float(np.sqrt(2.0 / np.pi))):
        return None
    total = _inner(view, split[0], "Add", outer)
    if total is None or len(total.inputs) != 2:
        return None
    for x, cubic_value in (total.inputs, total.inputs[::-1]):
        cubic = _inner(view, cubic_value, "Mul", total)
        cs = split_scalar(view, cubic) if cubic is not None else None
        power = _inner(view, cs[0], "Pow", cubic) if cs and _near(cs[1], 0.044715) else None
        if power is not None and power.inputs[0] == x and _near(_scalar(view, power.inputs[1]), 3.0):
            return x, [power, cubic, total, outer, tanh]
    return None


def _check_gelu(m: Match, view: View) -> str | None:
    t = view.type(m[-1].outputs[0])
    if t is None or t.dtype not in ("float16", "float32", "float64", "bfloat16"):
        return "not a floating-point value"
    return None


def _gelu_rule(name: str, inner: InnerFn, approximate: str) -> Rule:
    def match(node: Node, view: View) -> Match | None:
        plan = _gelu_plan(inner, node, view)
        return plan[1] if plan else None

    def rewrite(m: Match, view: View) -> Replacement:
        root = m[-1]
        x, _ = _gelu_plan(inner, root, view)
        attrs = (("approximate", "tanh"),) if approximate == "tanh" else ()
        return Replacement(nodes=(Node("Gelu", (x,), root.outputs, attrs, "", root.name),))

    return Rule(name, FAMILY, frozenset({"Mul"}), match, _check_gelu, rewrite)


GELU_ERF_UNIT = _gelu_rule("gelu_erf_unit", _erf_inner, "none")
GELU_TANH_UNIT = _gelu_rule("gelu_tanh_unit", _tanh_inner, "tanh")


# ---------------------------------------------------------------- attention

class AttentionParts(NamedTuple):
    """The parts of a matched attention: root last in `nodes`."""

    nodes: Match
    q: str
    kt: str
    v: str
    scale: float
    bias: str | None
    softmax: Node
    cast: Node | None


def _scaled_scores(view: View, value: str, reader: Node) -> tuple[list[Node], str, str, float] | None:
    """MatMul(q, kt) [* c | / c] feeding `reader` alone: (nodes, q, kt, scale)."""
    nodes, scale = [], 1.0
    for op_type in ("Mul", "Div"):
        node = _inner(view, value, op_type, reader)
        split = split_scalar(view, node) if node is not None else None
        if split is None or (op_type == "Div" and node.inputs[0] != split[0]) or split[1] == 0:
            continue
        nodes.append(node)
        value, scale, reader = split[0], split[1] if op_type == "Mul" else 1.0 / split[1], node
        break
    qk = _inner(view, value, "MatMul", reader)
    return ([qk] + nodes, qk.inputs[0], qk.inputs[1], scale) if qk is not None else None


def attention_plan(node: Node, view: View) -> AttentionParts | None:
    """MatMul(Softmax(MatMul(q, kt) [* or / scalar] [+ bias]) [Cast], v)."""
    probs, reader = node.inputs[0], node
    cast = _inner(view, probs, "Cast", node)
    if cast is not None:
        probs, reader = cast.inputs[0], cast
    softmax = _inner(view, probs, "Softmax", reader)
    if softmax is None:
        return None
    scores = _scaled_scores(view, softmax.inputs[0], softmax)
    bias, add = None, _inner(view, softmax.inputs[0], "Add", softmax)
    if scores is None and add is not None and len(add.inputs) == 2:
        for i in (0, 1):
            scores = _scaled_scores(view, add.inputs[i], add)
            if scores is not None:
                bias = add.inputs[1 - i]
                break
    if scores is None:
        return None
    chain, q, kt, scale = scores
    nodes = chain + ([add] if bias else []) + [softmax] + ([cast] if cast else []) + [node]
    return AttentionParts(tuple(nodes), q, kt, node.inputs[1], scale, bias, softmax, cast)


def _match_attention(node: Node, view: View) -> Match | None:
    plan = attention_plan(node, view)
    return plan.nodes if plan else None


def _check_attention(m: Match, view: View) -> str | None:
    p = attention_plan(m[-1], view)
    shapes = [view.shape(v) for v in (p.q, p.kt, p.v, m[-1].outputs[0])]
    if any(s is None for s in shapes):
        return "shapes are unknown"
    if any(len(s) < 2 for s in shapes[:3]):
        return "an operand is a vector"
    rank = len(shapes[3])
    default_axis = -1 if view.graph.opset >= 13 else 1
    if int(p.softmax.attr("axis", default_axis)) % rank != rank - 1:
        return "Softmax is not over the last axis"
    if p.cast is not None and view.type(p.cast.outputs[0]).dtype != view.type(p.cast.inputs[0]).dtype:
        return "the Cast changes the probabilities' dtype"
    return None


def _attention(m: Match, view: View) -> Replacement:
    p = attention_plan(m[-1], view)
    inputs = (p.q, p.kt, p.v) + ((p.bias,) if p.bias else ())
    attrs = (("scale", float(p.scale)),) if p.scale != 1.0 else ()
    return Replacement(nodes=(Node("DotProductAttention", inputs, m[-1].outputs, attrs, DOMAIN, m[-1].name),))


ATTENTION_UNIT = Rule("attention_unit", FAMILY, frozenset({"MatMul"}), _match_attention, _check_attention,
                      _attention)


# ---------------------------------------------------------------- LayerNorm

class _LayerNorm(NamedTuple):
    """A decomposed layer norm: x, first normalised axis, epsilon, optional scale/shift, nodes (root last)."""

    x: str
    axis: int
    epsilon: float
    scale: str | None
    shift: str | None
    nodes: Match


def _reduced_axes(view: View, node: Node) -> tuple[int, ...] | None:
    """The axes of a keepdims ReduceMean (attribute or, from opset 18, input), non-negative."""
    if not node.attr("keepdims", 1):
        return None
    axes = node.attr("axes") if len(node.inputs) < 2 or not node.inputs[1] else view.tensor(node.inputs[1])
    shape = view.shape(node.inputs[0])
    if axes is None or shape is None:
        return None
    return tuple(sorted(int(a) % len(shape) for a in np.asarray(axes).reshape(-1)))


def _normalised(view: View, div: Node) -> tuple[str, tuple[int, ...], float, list[Node]] | None:
    """Div(x - mean(x), sqrt(mean((x - mean(x))^2) + eps)): (x, axes, eps, nodes)."""
    if div.op_type != "Div" or len(div.inputs) != 2:
        return None
    centered, std = div.inputs
    sub, sqrt = view.producer(centered, "Sub"), _inner(view, std, "Sqrt", div)
    shift = _inner(view, sqrt.inputs[0], "Add", sqrt) if sqrt is not None else None
    split = split_scalar(view, shift) if shift is not None else None
    if sub is None or split is None:
        return None
    var = _inner(view, split[0], "ReduceMean", shift)
    square = (_inner(view, var.inputs[0], "Pow", var) or _inner(view, var.inputs[0], "Mul", var)) if var else None
    if square is None or square.inputs[0] != centered:
        return None
    if (square.op_type == "Pow" and not _near(_scalar(view, square.inputs[1]), 2.0)) or \
            (square.op_type == "Mul" and square.inputs[1] != centered):
        return None
    x, mean_value = sub.inputs
    mean = _inner(view, mean_value, "ReduceMean", sub)
    if mean is None or mean.inputs[0] != x or {id(n) for n in view.consumers(centered)} != {id(square), id(div)}:
        return None
    if view.is_output(centered) or view.read_by_subgraph(centered):
        return None
    axes = _reduced_axes(view, mean)
    if axes is None or axes != _reduced_axes(view, var):
        return None
    return x, axes, split[1], [mean, sub, square, var, shift, sqrt, div]


def _affine_reader(view: View, value: str, op_type: str) -> tuple[Node, str] | None:
    """The lone `op_type` reader of `value` with a constant other operand: (node, constant)."""
    readers = view.consumers(value)
    if len(readers) != 1 or readers[0].op_type != op_type or len(readers[0].inputs) != 2:
        return None
    if view.is_output(value) or view.read_by_subgraph(value):
        return None
    other = [v for v in readers[0].inputs if v != value]
    return (readers[0], other[0]) if len(other) == 1 and view.tensor(other[0]) is not None else None


def _layernorm_plan(node: Node, view: View) -> _LayerNorm | None:
    """Root at the last of Div -> [Mul by a constant] -> [Add of a constant]."""
    chain, scale, shift = [node], None, None
    if node.op_type == "Add":
        mul = next((view.producer(v, "Mul") for v in node.inputs if view.producer(v, "Mul")), None)
        if mul is None or _affine_reader(view, mul.outputs[0], "Add") is None:
            return None
        shift = _affine_reader(view, mul.outputs[0], "Add")[1]
        chain = [mul, node]
    if chain[0].op_type == "Mul":
        div = next((view.producer(v, "Div") for v in chain[0].inputs if view.producer(v, "Div")), None)
        found = _affine_reader(view, div.outputs[0], "Mul") if div is not None else None
        if found is None:
            return None
        scale = found[1]
        chain = [div] + chain
    if node.op_type == "Div" and _affine_reader(view, node.outputs[0], "Mul"):
        return None  # the Mul (or the Add after it) is the root
    if node.op_type == "Mul" and _affine_reader(view, node.outputs[0], "Add"):
        return None
    core = _normalised(view, chain[0])
    if core is None:
        return None
    x, axes, epsilon, nodes = core
    return _LayerNorm(x, axes[0], epsilon, scale, shift, tuple(nodes[:-1] + chain)) \
        if axes == tuple(range(axes[0], len(view.shape(x)))) else None


def _check_layernorm(m: Match, view: View) -> str | None:
    p = _layernorm_plan(m[-1], view)
    features = view.shape(p.x)[p.axis:]
    for name in (p.scale, p.shift):
        c = view.tensor(name) if name is not None else None
        if c is not None and (c.ndim > len(features) or c.shape != features[len(features) - c.ndim:]):
            return f"the affine constant {list(c.shape)} is not per normalised feature {list(features)}"
    return None


def _layernorm(m: Match, view: View) -> Replacement:
    p = _layernorm_plan(m[-1], view)
    dtype = view.type(p.x).dtype
    features = view.shape(p.x)[p.axis:]
    out = m[-1].outputs[0]
    scale, tensors = view.fresh(out + "_scale"), {}
    tensors[scale] = np.ones(features, dtype) if p.scale is None else \
        np.ascontiguousarray(np.broadcast_to(view.tensor(p.scale), features).astype(dtype))
    inputs = [p.x, scale]
    if p.shift is not None:
        shift = view.fresh(out + "_shift")
        tensors[shift] = np.ascontiguousarray(np.broadcast_to(view.tensor(p.shift), features).astype(dtype))
        inputs.append(shift)
    attrs = _attrs(axis=p.axis, epsilon=float(p.epsilon))
    return Replacement(nodes=(Node("LayerNormalization", tuple(inputs), m[-1].outputs, attrs, "", m[-1].name),),
                       tensors=tensors)


def _match_layernorm(node: Node, view: View) -> Match | None:
    plan = _layernorm_plan(node, view)
    return plan.nodes if plan else None


LAYERNORM_UNIT = Rule("layernorm_unit", FAMILY, frozenset({"Div", "Mul", "Add"}), _match_layernorm,
                      _check_layernorm, _layernorm)


# ---------------------------------------------------------------- rule sets

RULES: dict[str, Rule] = {rule.name: rule for rule in (
    DEPTHWISE_CONV_NHWC, WINOGRAD_3X3, WINOGRAD_F4, WINOGRAD_F2, NHWC_CONV_IM2COL, CONV_IM2COL,
    ATTENTION_UNIT, GELU_ERF_UNIT, GELU_TANH_UNIT, LAYERNORM_UNIT, MATMUL_WEIGHT_NK, GEMM_WEIGHT_NK,
)}

# Every rule alone, so that `rewrite(model, RULE_SETS[name])` applies only it.
RULE_SETS: dict[str, RuleSet] = {name: RuleSet(name, (rule,)) for name, rule in RULES.items()}

# Per root op type, the forms a node of that type may take (besides staying as it is).
ALTERNATIVES: dict[str, tuple[str, ...]] = {
    "Conv": ("conv_im2col",),
    "ConvNHWC": ("depthwise_conv_nhwc", "winograd_3x3", "winograd_f4x4_3x3", "winograd_f2x2_3x3",
                 "nhwc_conv_im2col"),
    "MatMul": ("attention_unit", "matmul_weight_nk"),
    "Gemm": ("gemm_weight_nk",),
    "Mul": ("gelu_erf_unit", "gelu_tanh_unit", "layernorm_unit"),
    "Div": ("layernorm_unit",),
    "Add": ("layernorm_unit",),
}


def alternatives_for(model: Model, node: Node) -> tuple[str, ...]:
    """The names of the ALTERNATIVES rules that match `node` in `model` and accept it."""
    view = View(model)
    applicable = []
    for name in ALTERNATIVES.get(node.op_type, ()):
        rule = RULES[name]
        match = rule.match(node, view)
        if match is not None and rule.check(match, view) is None:
            applicable.append(name)
    return tuple(applicable)


# The default family: the rules that won on the zoo (docs/decisions.md has the figures).
ALGORITHM = RuleSet("algorithm", (DEPTHWISE_CONV_NHWC, WINOGRAD_3X3, MATMUL_WEIGHT_NK, GEMM_WEIGHT_NK))
