"""Packed-GEMM rules: products and convolutions with a constant float32 weight run by autofuse's own kernel.

Algorithm choices, one per op (the weight is packed here, once, by
`autofuse.gemm.pack_weight`; the node's root is the matched node):

* `matmul_packed`: MatMul(x, W[K, N]) -> PackedMatMul(x, Wp, 0).
* `gemm_packed`: Gemm(A, B, C?) with a constant B -> PackedMatMul(A, pack(alpha * op(B)), beta * C);
  C must be a constant per-column bias.
* `conv_packed`: ConvNHWC (group 1, constant HWIO kernel, explicit pads) ->
  PackedConvNHWC: the patch rows are gathered while packing, never written.
* `conv_winograd_packed`: a stride-1, undilated 3x3 ConvNHWC of at least `WINOGRAD_MIN_CHANNELS`
  input channels -> PackedWinogradNHWC (Winograd F(2x2, 3x3), 2.25x fewer multiplies; with
  fewer channels the transforms cost more than the products save).
* `attention_packed`: Transpose(MatMul(Softmax(MatMul(Transpose(q), Transpose(k)) * s [+ bias]),
  Transpose(v)), (0, 2, 1, 3)) with q, k, v in [B, S, H, D] layout (as the projections write
  them: BERT, GPT-2) -> PackedAttention(q, k, v, bias?): none of the four transposes runs.
* `layernorm_packed`: LayerNormalization over the last axis with constant float32 scale
  (and bias), Y alone used -> PackedLayerNorm: one pass per row instead of XLA's reductions.

Epilogues folded into a packed op that feeds them alone (`PACKED_EPILOGUE`):

* `packed_bias`: Add(P, b) (or a two-input Sum) with a constant per-column b -> P with b added to its bias.
* `packed_residual`: Add(P, r) (or a two-input Sum) with a computed r of P's shape -> P adding r as it stores.
* `packed_relu`: Relu(P) -> P clamped below at 0.
* `packed_clip`: Clip(P, min, max) with constant bounds (ReLU6) -> P clamped to them.

Folds that merge:

* `packed_siblings`: packed products of one input (BERT's q, k and v projections), without
  residual or clamp -> one product of the weights side by side, then a Split: the input is
  packed once and the product spreads over more threads.
* `attention_qkv`: PackedAttention whose q, k and v are Reshapes of the three equal parts of
  one Split along the last axis (a fused projection: GPT-2, or `packed_siblings`) ->
  PackedAttentionQKV reading the projection's output in place (no Split copies).

`PACKED` is the whole-model family (`--rewrite ...,packed`); `PACKED_RULES` and
`PACKED_ALTERNATIVES` are the per-op choices for the tuner.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from autofuse.gemm import pack_weight, pack_winograd, unpack_weight
from autofuse.ir import Node
from autofuse.ops.packed import DOMAIN
from autofuse.rewrite.algorithm import ATTENTION_UNIT, attention_plan, split_scalar
from autofuse.rewrite.engine import Match, Replacement, Rule, RuleSet, View
from autofuse.rewrite.transpose import constant_conv_decline
from autofuse.rewrite.weights import column_bias, float32_decline, weight_decline

FAMILY = "packed"
OPS = frozenset({"PackedMatMul", "PackedConvNHWC", "PackedWinogradNHWC"})  # the products epilogues fold into


def _root(node: Node, view: View) -> Match | None:
    return (node,)


def _attrs(**values) -> tuple[tuple[str, object], ...]:
    return tuple(sorted(values.items()))


def _packed(op_type: str, x: str, w: np.ndarray, bias: np.ndarray, outputs: tuple[str, ...], name: str,
            view: View, **attrs) -> Replacement:
    """A packed op computing x by the (K, N) weight `w` plus `bias`, with fresh weight names."""
    wp, b = view.fresh(f"{name or 'packed'}_wp"), view.fresh(f"{name or 'packed'}_bias")
    node = Node(op_type, (x, wp, b), outputs, _attrs(n=int(w.shape[1]), **attrs), DOMAIN, name)
    return Replacement(nodes=(node,), tensors={wp: pack_weight(w), b: np.asarray(bias, np.float32)})


# ---------------------------------------------------------------- MatMul and Gemm

def _check_matmul(m: Match, view: View) -> str | None:
    node = m[0]
    return weight_decline(view, node.inputs[1]) or float32_decline(view, node.inputs[0], "A")


def _matmul(m: Match, view: View) -> Replacement:
    node = m[0]
    w = view.tensor(node.inputs[1])
    return _packed("PackedMatMul", node.inputs[0], w, np.zeros(w.shape[1], np.float32), node.outputs, node.name,
                   view)


def _check_gemm(m: Match, view: View) -> str | None:
    node = m[0]
    if node.attr("transA", 0):
        return "transA=1: A would need a transpose at run time"
    reason = weight_decline(view, node.inputs[1]) or float32_decline(view, node.inputs[0], "A")
    if reason or len(node.inputs) < 3 or not node.inputs[2]:
        return reason
    columns = view.tensor(node.inputs[1]).shape[0 if node.attr("transB", 0) else 1]
    bias = column_bias(view, node.inputs[2], columns, 2)
    return bias if isinstance(bias, str) else None


def _gemm(m: Match, view: View) -> Replacement:
    node = m[0]
    w = view.tensor(node.inputs[1]).astype(np.float64)
    w = (w.T if node.attr("transB", 0) else w) * float(node.attr("alpha", 1.0))
    bias = np.zeros(w.shape[1], np.float64)
    if len(node.inputs) > 2 and node.inputs[2]:
        bias = column_bias(view, node.inputs[2], w.shape[1], 2) * float(node.attr("beta", 1.0))
    return _packed("PackedMatMul", node.inputs[0], w.astype(np.float32), bias, node.outputs, node.name, view)


# ---------------------------------------------------------------- ConvNHWC

def _check_conv(m: Match, view: View) -> str | None:
    conv = m[0]
    if conv.domain != DOMAIN:
        return "not the autofuse ConvNHWC"
    reason = constant_conv_decline(conv, view)
    if reason:
        return reason
    if len(view.shape(conv.inputs[0])) != 4:
        return f"{len(view.shape(conv.inputs[0])) - 2}-D convolution, not 2-D"
    if conv.attr("group", 1) != 1:
        return "grouped convolution"
    if conv.attr("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        return f"auto_pad={conv.attr('auto_pad')}: the pads are not explicit"
    return float32_decline(view, conv.inputs[0], "the input") or (
        None if view.tensor(conv.inputs[1]).dtype == np.float32 else "the weights are not float32")


def _bias_and_pads(conv: Node, view: View, n: int) -> tuple[np.ndarray, tuple[int, ...]]:
    """A ConvNHWC's bias (zeros when it has none) and explicit (top, left, bottom, right) pads."""
    bias = np.zeros(n, np.float32)
    if len(conv.inputs) > 2 and conv.inputs[2]:
        bias = np.asarray(view.tensor(conv.inputs[2]), np.float32).reshape(n)
    pads = tuple(int(p) for p in conv.attr("pads", ()) or ()) or (0, 0, 0, 0)
    if conv.attr("auto_pad", "NOTSET") == "VALID":
        pads = (0, 0, 0, 0)
    return bias, pads


def _conv(m: Match, view: View) -> Replacement:
    conv = m[0]
    w = view.tensor(conv.inputs[1])
    kh, kw, c, n = w.shape
    bias, pads = _bias_and_pads(conv, view, n)
    return _packed("PackedConvNHWC", conv.inputs[0], w.reshape(kh * kw * c, n), bias, conv.outputs, conv.name,
                   view, kernel_shape=(int(kh), int(kw)),
                   strides=tuple(int(s) for s in conv.attr("strides", ()) or (1, 1)),
                   dilations=tuple(int(d) for d in conv.attr("dilations", ()) or (1, 1)), pads=pads)


WINOGRAD_MIN_CHANNELS = 16  # below, the direct form was faster (measured, docs/decisions.md)


def _check_winograd(m: Match, view: View) -> str | None:
    reason = _check_conv(m, view)
    if reason:
        return reason
    conv = m[0]
    if view.tensor(conv.inputs[1]).shape[:2] != (3, 3):
        return "not a 3x3 kernel"
    if tuple(conv.attr("strides", ()) or (1, 1)) != (1, 1) or tuple(conv.attr("dilations", ()) or (1, 1)) != (1, 1):
        return "strided or dilated"
    channels = int(view.tensor(conv.inputs[1]).shape[2])
    if channels < WINOGRAD_MIN_CHANNELS:
        return f"{channels} input channels (fewer than {WINOGRAD_MIN_CHANNELS}): the direct form is faster"
    return None


def _winograd(m: Match, view: View) -> Replacement:
    conv = m[0]
    w = view.tensor(conv.inputs[1])
    n = int(w.shape[3])
    bias, pads = _bias_and_pads(conv, view, n)
    up, b = view.fresh(f"{conv.name or 'winograd'}_up"), view.fresh(f"{conv.name or 'winograd'}_bias")
    node = Node("PackedWinogradNHWC", (conv.inputs[0], up, b), conv.outputs, _attrs(n=n, pads=pads), DOMAIN,
                conv.name)
    return Replacement(nodes=(node,), tensors={up: pack_winograd(w), b: bias})


MATMUL_PACKED = Rule("matmul_packed", FAMILY, frozenset({"MatMul"}), _root, _check_matmul, _matmul)
GEMM_PACKED = Rule("gemm_packed", FAMILY, frozenset({"Gemm"}), _root, _check_gemm, _gemm)
CONV_PACKED = Rule("conv_packed", FAMILY, frozenset({"ConvNHWC"}), _root, _check_conv, _conv)
CONV_WINOGRAD_PACKED = Rule("conv_winograd_packed", FAMILY, frozenset({"ConvNHWC"}), _root, _check_winograd,
                            _winograd)


# ---------------------------------------------------------------- attention

_HEADS = (0, 2, 1, 3)  # [B, S, H, D] <-> [B, H, S, D]
_KEYS_T = (0, 2, 3, 1)  # [B, S, H, D] -> [B, H, D, S]


class _HeadsAttention(NamedTuple):
    """An attention between [B, S, H, D] values; `chain` is the matched attention, root last."""

    chain: Match
    q: str
    k: str
    v: str
    scale: float
    bias: str | None


def _untransposed(view: View, value: str, perm: tuple[int, ...]) -> str | None:
    node = view.producer(value, "Transpose")
    return node.inputs[0] if node is not None and tuple(node.attr("perm", ()) or ()) == perm else None


def _heads_plan(root: Node, view: View) -> _HeadsAttention | None:
    if tuple(root.attr("perm", ()) or ()) != _HEADS:
        return None
    product = view.producer(root.inputs[0], "MatMul")
    parts = attention_plan(product, view) if product is not None else None
    if parts is None or view.only_feeds(product, root) is not None:
        return None
    q, k, v = (_untransposed(view, value, perm) for value, perm in
               ((parts.q, _HEADS), (parts.kt, _KEYS_T), (parts.v, _HEADS)))
    if q is None or k is None or v is None:
        return None
    scale = parts.scale
    scaled = view.producer(q, "Mul")
    split = split_scalar(view, scaled) if scaled is not None else None
    if split is not None and view.shape(split[0]) == view.shape(q):  # GPT-2 scales q before its transpose
        q, scale = split[0], scale * split[1]
    return _HeadsAttention(parts.nodes + (root,), q, k, v, scale, parts.bias)


def _match_heads(node: Node, view: View) -> Match | None:
    plan = _heads_plan(node, view)
    return plan.chain if plan else None


def _check_heads(m: Match, view: View) -> str | None:
    plan = _heads_plan(m[-1], view)
    reason = ATTENTION_UNIT.check(plan.chain[:-1], view)
    if reason:
        return reason
    shapes = [view.shape(value) for value in (plan.q, plan.k, plan.v)]
    if any(s is None or len(s) != 4 for s in shapes):
        return "q, k and v are not 4-D [B, S, H, D]"
    (b, _, h, d), (kb, _, kh, kd), (vb, skv, vh, _) = shapes
    if (kb, kh, kd) != (b, h, d) or (vb, vh) != (b, h) or shapes[1][1] != skv:
        return "q, k and v disagree on batch, heads or sizes"
    for value, what in ((plan.q, "q"), (plan.k, "k"), (plan.v, "v")) + (((plan.bias, "the bias"),) if plan.bias else ()):
        reason = float32_decline(view, value, what)
        if reason:
            return reason
    if plan.bias:
        bias = view.shape(plan.bias)
        if bias is None or len(bias) > 4:
            return "the bias is not of rank <= 4"
        lead = (1,) * (4 - len(bias)) + tuple(bias)
        if lead[0] not in (1, b) or lead[1] not in (1, h):
            return f"the bias {list(bias)} does not broadcast over [batch, heads]"
    return None


def _heads(m: Match, view: View) -> Replacement:
    plan = _heads_plan(m[-1], view)
    inputs = (plan.q, plan.k, plan.v) + ((plan.bias,) if plan.bias else ())
    node = Node("PackedAttention", inputs, m[-1].outputs, _attrs(scale=float(plan.scale)), DOMAIN, m[-2].name)
    return Replacement(nodes=(node,))


ATTENTION_PACKED = Rule("attention_packed", FAMILY, frozenset({"Transpose"}), _match_heads, _check_heads, _heads)


# ---------------------------------------------------------------- LayerNormalization

def _check_layer_norm(m: Match, view: View) -> str | None:
    node = m[0]
    shape = view.shape(node.inputs[0])
    if shape is None or not shape:
        return "the input's shape is unknown"
    if int(node.attr("axis", -1)) % len(shape) != len(shape) - 1:
        return "it normalises over more than the last axis"
    if any(o for o in node.outputs[1:]) and any(view.consumers(o) or view.is_output(o) for o in node.outputs[1:] if o):
        return "its Mean or InvStdDev output is used"
    for value, what in ((node.inputs[1], "scale"), (node.inputs[2] if len(node.inputs) > 2 else "", "bias")):
        if not value:
            continue
        tensor = view.tensor(value)
        if tensor is None or tensor.dtype != np.float32 or tensor.size != shape[-1]:
            return f"the {what} is not a constant float32 vector of the last axis' size"
    return float32_decline(view, node.inputs[0], "the input")


def _layer_norm(m: Match, view: View) -> Replacement:
    node = m[0]
    inputs = tuple(v for v in node.inputs[:3] if v)
    attrs = _attrs(epsilon=float(node.attr("epsilon", 1e-5)))
    return Replacement(nodes=(Node("PackedLayerNorm", inputs, node.outputs[:1], attrs, DOMAIN, node.name),))


LAYERNORM_PACKED = Rule("layernorm_packed", FAMILY, frozenset({"LayerNormalization"}), _root, _check_layer_norm,
                        _layer_norm)


# ---------------------------------------------------------------- epilogues

def _producer(value: str, view: View) -> Node | None:
    node = view.producer(value)
    return node if node is not None and node.op_type in OPS and node.domain == DOMAIN else None


def _match_add(node: Node, view: View) -> Match | None:
    if len(node.inputs) != 2:
        return None
    for value in node.inputs:
        packed = _producer(value, view)
        if packed is not None:
            return (packed, node)
    return None


def _other(packed: Node, add: Node) -> str:
    return add.inputs[1] if add.inputs[0] == packed.outputs[0] else add.inputs[0]


def _clamped(node: Node) -> bool:
    return node.attr("lo", None) is not None or node.attr("hi", None) is not None


def _epilogue_decline(packed: Node, consumer: Node, view: View) -> str | None:
    if _clamped(packed) and consumer.op_type not in ("Relu", "Clip"):
        return f"the {packed.op_type} clamps before the {consumer.op_type}"
    return view.only_feeds(packed, consumer)


def _check_bias(m: Match, view: View) -> str | None:
    packed, add = m
    reason = _epilogue_decline(packed, add, view)
    if reason:
        return reason
    if len(packed.inputs) > 3:
        return "the residual is added before this Add"
    y = view.shape(packed.outputs[0])
    if y is None or view.shape(add.outputs[0]) != y:
        return "the Add broadcasts beyond the product's shape"
    bias = column_bias(view, _other(packed, add), y[-1], len(y))
    return bias if isinstance(bias, str) else None


def _fold_bias(m: Match, view: View) -> Replacement:
    packed, add = m
    y = view.shape(packed.outputs[0])
    total = view.tensor(packed.inputs[2]).astype(np.float64) + column_bias(view, _other(packed, add), y[-1], len(y))
    bias = view.fresh(packed.inputs[2])
    node = packed.replace(inputs=packed.inputs[:2] + (bias,), outputs=add.outputs)
    return Replacement(nodes=(node,), tensors={bias: total.astype(np.float32)})


def _check_residual(m: Match, view: View) -> str | None:
    packed, add = m
    reason = _epilogue_decline(packed, add, view)
    if reason:
        return reason
    if len(packed.inputs) > 3:
        return f"the {packed.op_type} already adds a residual"
    other = _other(packed, add)
    if other == packed.outputs[0]:
        return "the Add adds the product to itself"
    if view.tensor(other) is not None:
        return "the other operand is a constant (a bias, not a residual)"
    y, t = view.shape(packed.outputs[0]), view.type(other)
    if y is None or t is None or tuple(t.shape) != y or view.shape(add.outputs[0]) != y:
        return "the residual is not shaped like the product"
    return None if t.dtype == "float32" else f"the residual is {t.dtype}, not float32"


def _fold_residual(m: Match, view: View) -> Replacement:
    packed, add = m
    return Replacement(nodes=(packed.replace(inputs=packed.inputs[:3] + (_other(packed, add),),
                                             outputs=add.outputs),))


def _match_clamp(node: Node, view: View) -> Match | None:
    packed = _producer(node.inputs[0], view) if node.inputs else None
    return (packed, node) if packed is not None else None


def _bounds(clamp: Node, view: View) -> tuple[float, float] | str:
    """[lo, hi] of a Relu or Clip (bounds from inputs, or attributes before opset 11); else why not."""
    if clamp.op_type == "Relu":
        return 0.0, math.inf
    bounds = []
    for index, name, default in ((1, "min", -math.inf), (2, "max", math.inf)):
        if len(clamp.inputs) > index and clamp.inputs[index]:
            value = view.tensor(clamp.inputs[index])
            if value is None or np.size(value) != 1:
                return f"the Clip {name} is not a constant scalar"
            bounds.append(float(np.asarray(value).reshape(())))
        else:
            bounds.append(float(clamp.attr(name, default)))
    return bounds[0], bounds[1]


def _merged(packed: Node, clamp: Node, view: View) -> tuple[float, float] | str:
    bounds = _bounds(clamp, view)
    if isinstance(bounds, str):
        return bounds
    lo = max(float(packed.attr("lo", -math.inf)), bounds[0])
    hi = min(float(packed.attr("hi", math.inf)), bounds[1])
    return (lo, hi) if lo <= hi else "the clamps do not overlap"


def _check_clamp(m: Match, view: View) -> str | None:
    packed, clamp = m
    merged = _merged(packed, clamp, view)
    return merged if isinstance(merged, str) else _epilogue_decline(packed, clamp, view)


def _fold_clamp(m: Match, view: View) -> Replacement:
    packed, clamp = m
    lo, hi = _merged(packed, clamp, view)
    attrs = {k: v for k, v in packed.attrs if k not in ("lo", "hi")}
    attrs.update({k: v for k, v in (("lo", lo), ("hi", hi)) if math.isfinite(v)})
    return Replacement(nodes=(packed.replace(outputs=clamp.outputs, attrs=tuple(sorted(attrs.items()))),))


def _plain_product(node: Node) -> bool:
    return (node.op_type == "PackedMatMul" and node.domain == DOMAIN and len(node.inputs) == 3
            and not _clamped(node))


def _match_siblings(node: Node, view: View) -> Match | None:
    if not _plain_product(node):
        return None
    siblings = [c for c in view.consumers(node.inputs[0]) if _plain_product(c)]
    return tuple(siblings) if len(siblings) > 1 and siblings[-1] is node else None


def _check_siblings(m: Match, view: View) -> str | None:
    waiting = [c for c in view.consumers(m[0].inputs[0]) if c.op_type in PACKED_ALTERNATIVES
               and any(PACKED_RULES[r].check((c,), view) is None for r in PACKED_ALTERNATIVES[c.op_type])]
    if waiting:
        return f"{waiting[0].label} reads the same input and may be packed first"
    if len({view.shape(n.outputs[0])[:-1] if view.shape(n.outputs[0]) else None for n in m}) != 1:
        return "the products' outputs are not shaped alike"
    if any(view.tensor(n.inputs[1]) is None or view.tensor(n.inputs[2]) is None for n in m):
        return "a packed weight or bias is not a constant"
    return None


def _merge_siblings(m: Match, view: View) -> Replacement:
    k = view.shape(m[0].inputs[0])[-1]
    widths = [int(n.attr("n")) for n in m]
    weights = [np.asarray(unpack_weight(view.tensor(n.inputs[1]), k, w)) for n, w in zip(m, widths)]
    bias = np.concatenate([np.asarray(view.tensor(n.inputs[2]), np.float32).reshape(-1) for n in m])
    merged = _packed("PackedMatMul", m[0].inputs[0], np.concatenate(weights, axis=1), bias,
                     (view.fresh(f"{m[0].name or 'packed'}_merged"),), m[0].name, view)
    product = merged.nodes[0]
    sizes = view.fresh(f"{m[0].name or 'packed'}_split")
    split = Node("Split", (product.outputs[0], sizes), tuple(o for n in m for o in n.outputs), (("axis", -1),), "",
                 f"{m[0].name}_split")
    return Replacement(nodes=(product, split), tensors={**merged.tensors, sizes: np.asarray(widths, np.int64)})


def _qkv_source(node: Node, view: View) -> tuple[Node, str] | None:
    """(Split, its input) when the attention's q, k, v are Reshapes of its three equal outputs, in order."""
    reshapes = [view.producer(value, "Reshape") for value in node.inputs[:3]]
    if any(r is None for r in reshapes):
        return None
    split = view.producer(reshapes[0].inputs[0], "Split")
    if split is None or len(split.outputs) != 3 or [r.inputs[0] for r in reshapes] != list(split.outputs):
        return None
    return split, split.inputs[0]


def _match_qkv(node: Node, view: View) -> Match | None:
    if node.op_type != "PackedAttention" or node.domain != DOMAIN or _qkv_source(node, view) is None:
        return None
    return (node,)


def _check_qkv(m: Match, view: View) -> str | None:
    node = m[0]
    split, source = _qkv_source(node, view)
    shape, parts = view.shape(source), [view.shape(o) for o in split.outputs]
    q, k, v = (view.shape(value) for value in node.inputs[:3])
    if shape is None or any(p is None for p in parts) or None in (q, k, v):
        return "shapes are unknown"
    rank = len(shape)
    if int(split.attr("axis", 0)) % rank != rank - 1 or len({tuple(p) for p in parts}) != 1:
        return "the Split does not cut the last axis in three equal parts"
    if not (q == k == v) or rank != 3 or tuple(shape[:2]) != tuple(q[:2]):
        return "q, k and v are not [B, S, H, D] parts of a [B, S, 3*H*D] projection"
    return None


def _qkv(m: Match, view: View) -> Replacement:
    node = m[0]
    _, source = _qkv_source(node, view)
    heads = view.shape(node.inputs[0])[2]
    attrs = _attrs(scale=float(node.attr("scale", 1.0)), heads=int(heads))
    return Replacement(nodes=(Node("PackedAttentionQKV", (source,) + node.inputs[3:], node.outputs, attrs, DOMAIN,
                                   node.name),))


PACKED_SIBLINGS = Rule("packed_siblings", FAMILY, frozenset({"PackedMatMul"}), _match_siblings, _check_siblings,
                       _merge_siblings)
ATTENTION_QKV = Rule("attention_qkv", FAMILY, frozenset({"PackedAttention"}), _match_qkv, _check_qkv, _qkv)


# A two-input Sum is an Add (ResNet's zoo export joins its shortcuts with Sum).
PACKED_BIAS = Rule("packed_bias", FAMILY, frozenset({"Add", "Sum"}), _match_add, _check_bias, _fold_bias)
PACKED_RESIDUAL = Rule("packed_residual", FAMILY, frozenset({"Add", "Sum"}), _match_add, _check_residual,
                       _fold_residual)
PACKED_RELU = Rule("packed_relu", FAMILY, frozenset({"Relu"}), _match_clamp, _check_clamp, _fold_clamp)
PACKED_CLIP = Rule("packed_clip", FAMILY, frozenset({"Clip"}), _match_clamp, _check_clamp, _fold_clamp)


# ---------------------------------------------------------------- rule sets

_CHOICES = (MATMUL_PACKED, GEMM_PACKED, CONV_WINOGRAD_PACKED, CONV_PACKED, ATTENTION_PACKED, LAYERNORM_PACKED)
PACKED_RULES: dict[str, Rule] = {rule.name: rule for rule in _CHOICES}

# Per root op type, the packed form a node of that type may take (besides staying as it is).
PACKED_ALTERNATIVES: dict[str, tuple[str, ...]] = {
    "MatMul": ("matmul_packed",), "Gemm": ("gemm_packed",), "ConvNHWC": ("conv_packed", "conv_winograd_packed"),
    "Transpose": ("attention_packed",), "LayerNormalization": ("layernorm_packed",),
}

PACKED_EPILOGUE = RuleSet("packed_epilogue", (PACKED_BIAS, PACKED_RESIDUAL, PACKED_RELU, PACKED_CLIP,
                                              PACKED_SIBLINGS, ATTENTION_QKV))
PACKED = RuleSet("packed", _CHOICES + PACKED_EPILOGUE.rules)
