"""Channels-last rules: conv networks run NHWC between their edges.

* `conv_to_nhwc`: a 2-D Conv becomes Transpose(x, NCHW->NHWC) -> ConvNHWC ->
  Transpose(NHWC->NCHW); the kernel becomes an HWIO weight once, at rewrite time.
* `nhwc_conv1x1_to_matmul`: a pointwise ConvNHWC is a MatMul over the last axis.
* `<op>_through_transpose`: a Transpose feeding an op sinks below it, so that the
  transposes meet and cancel: unary elementwise ops, binary ops with a constant
  operand (the constant is transposed at rewrite time), variadic ops whose
  operands share one perm, Concat (axis remapped), Pad (pads permuted), BatchNormalization (as a
  channels-last Mul/Add) and pooling (as the NHWC internal ops).
* `compose_transposes`: Transpose(Transpose(x, p1), p2) is one Transpose, or
  nothing when the perms cancel; `transpose_as_reshape`: a Transpose that only
  moves size-1 dims is a Reshape.
"""
from __future__ import annotations

import numpy as np

from autofuse.ir import Node
from autofuse.ops.internal import DOMAIN
from autofuse.rewrite.engine import Match, Replacement, Rule, View

FAMILY = "layout"
TO_NHWC = (0, 2, 3, 1)
TO_NCHW = (0, 3, 1, 2)

UNARY = ("Relu", "LeakyRelu", "Clip", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Elu", "Selu",
         "Celu", "Neg", "Abs", "Exp", "Log", "Sqrt", "Reciprocal", "Erf", "Softplus", "Softsign",
         "Cast", "Floor", "Ceil", "Round", "Sign", "Not", "Mish", "Gelu")
BINARY = ("Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "PRelu")
VARIADIC = ("Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean")
POOLS = {"MaxPool": "MaxPoolNHWC", "AveragePool": "AveragePoolNHWC",
         "GlobalAveragePool": "GlobalAveragePoolNHWC", "GlobalMaxPool": "GlobalMaxPoolNHWC"}


def _perm(node: Node, view: View) -> tuple[int, ...] | None:
    """The explicit perm of a Transpose (reversed dims when absent)."""
    perm = node.attr("perm")
    if perm:
        return tuple(int(p) for p in perm)
    shape = view.shape(node.inputs[0])
    return tuple(reversed(range(len(shape)))) if shape is not None else None


def _inverse(perm: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(int(i) for i in np.argsort(perm))


def _transposed(view: View, value: str) -> tuple[str, tuple[int, ...]] | None:
    """(source, perm) when `value` is made by a Transpose with a known perm."""
    t = view.producer(value, "Transpose")
    if t is None:
        return None
    perm = _perm(t, view)
    return (t.inputs[0], perm) if perm is not None else None


def _transpose(x: str, perm: tuple[int, ...], out: str) -> Node:
    return Node("Transpose", (x,), (out,), (("perm", tuple(perm)),))


def _root(node: Node, view: View) -> Match | None:
    return (node,)


def _sunk(node: Node, inputs: tuple[str, ...], perm: tuple[int, ...], view: View,
          **changes) -> tuple[Node, ...]:
    """`node` on untransposed inputs, then the Transpose by `perm` writing its output."""
    out = node.outputs[0]
    inner = view.fresh(out + "_t")
    moved = node.replace(inputs=inputs, outputs=(inner,), **changes)
    return moved, _transpose(inner, perm, out)


def _single_output(node: Node) -> str | None:
    if len([o for o in node.outputs if o]) != 1 or not node.outputs[0]:
        return f"{node.op_type} has more than one output"
    return None


def _rule(name: str, ops, check, rewrite) -> Rule:
    return Rule(name, FAMILY, frozenset(ops), _root, check, rewrite)


# ---------------------------------------------------------------- Conv -> ConvNHWC

def constant_conv_decline(conv: Node, view: View) -> str | None:
    """Why a Conv cannot be rewritten at rewrite time: runtime weights, bias or shape."""
    if view.tensor(conv.inputs[1]) is None:
        return "Conv weights are not constant"
    if len(conv.inputs) > 2 and conv.inputs[2] and view.tensor(conv.inputs[2]) is None:
        return "Conv bias is not constant"
    if view.shape(conv.inputs[0]) is None:
        return "input shape is unknown"
    return None


def _check_conv(m: Match, view: View) -> str | None:
    conv = m[0]
    reason = constant_conv_decline(conv, view)
    if reason:
        return reason
    x_shape = view.shape(conv.inputs[0])
    if len(x_shape) != 4:
        return f"{len(x_shape) - 2}-D convolution, not 2-D"
    return None


def _conv_to_nhwc(m: Match, view: View) -> Replacement:
    conv = m[0]
    x, out = conv.inputs[0], conv.outputs[0]
    x_nhwc, y_nhwc, w_name = view.fresh(x + "_nhwc"), view.fresh(out + "_nhwc"), view.fresh(conv.inputs[1] + "_hwio")
    inputs = [x_nhwc, w_name]
    tensors = {w_name: np.ascontiguousarray(view.tensor(conv.inputs[1]).transpose(2, 3, 1, 0))}
    if len(conv.inputs) > 2 and conv.inputs[2]:
        inputs.append(conv.inputs[2])
    nodes = (_transpose(x, TO_NHWC, x_nhwc),
             Node("ConvNHWC", tuple(inputs), (y_nhwc,), conv.attrs, DOMAIN, conv.name),
             _transpose(y_nhwc, TO_NCHW, out))
    return Replacement(nodes=nodes, tensors=tensors)


CONV_TO_NHWC = _rule("conv_to_nhwc", {"Conv"}, _check_conv, _conv_to_nhwc)


def pointwise_decline(conv: Node) -> str | None:
    """Why a 1x1 convolution is not a plain matrix product (None when it is)."""
    if conv.attr("group", 1) != 1:
        return "grouped convolution"
    if any(s != 1 for s in conv.attr("strides", ())):
        return "stride is not 1"
    if any(p != 0 for p in conv.attr("pads", ())):
        return "padded convolution"
    return None


def _check_pointwise_nhwc(m: Match, view: View) -> str | None:
    conv = m[0]
    if conv.domain != DOMAIN:
        return "not the autofuse ConvNHWC"
    w = view.tensor(conv.inputs[1])
    if w is None or w.shape[:2] != (1, 1):
        return "kernel is not 1x1"
    return pointwise_decline(conv)


def _pointwise_nhwc_as_matmul(m: Match, view: View) -> Replacement:
    conv = m[0]
    out = conv.outputs[0]
    w = view.tensor(conv.inputs[1])
    w2 = view.fresh(conv.inputs[1] + "_2d")
    tensors = {w2: np.ascontiguousarray(w.reshape(w.shape[2], w.shape[3]))}
    if len(conv.inputs) < 3 or not conv.inputs[2]:
        return Replacement(nodes=(Node("MatMul", (conv.inputs[0], w2), (out,)),), tensors=tensors)
    mm = view.fresh(out + "_mm")
    nodes = (Node("MatMul", (conv.inputs[0], w2), (mm,)), Node("Add", (mm, conv.inputs[2]), (out,)))
    return Replacement(nodes=nodes, tensors=tensors)


NHWC_CONV1X1_TO_MATMUL = _rule("nhwc_conv1x1_to_matmul", {"ConvNHWC"}, _check_pointwise_nhwc,
                               _pointwise_nhwc_as_matmul)


# ---------------------------------------------------------------- Transpose chains

def _check_compose(m: Match, view: View) -> str | None:
    t = m[0]
    if _perm(t, view) is None:
        return "the perm is unknown"
    if _transposed(view, t.inputs[0]) is None:
        return "the input is not a Transpose"
    return None


def _compose(m: Match, view: View) -> Replacement:
    t = m[0]
    x, inner = _transposed(view, t.inputs[0])
    perm = tuple(inner[p] for p in _perm(t, view))
    if perm != tuple(range(len(perm))):
        return Replacement(nodes=(_transpose(x, perm, t.outputs[0]),))
    if _aliasable(t, view) is None:
        return Replacement(aliases={t.outputs[0]: x})
    return Replacement(nodes=(Node("Identity", (x,), t.outputs),))


COMPOSE_TRANSPOSES = _rule("compose_transposes", {"Transpose"}, _check_compose, _compose)


def _aliasable(node: Node, view: View) -> str | None:
    """None when the output may become an alias of the input, else why not."""
    if view.is_output(node.outputs[0]):
        return "the output is a graph output"
    if view.read_by_subgraph(node.outputs[0]):
        return "the output is read by a subgraph"
    return None


def _check_identity_perm(m: Match, view: View) -> str | None:
    perm = _perm(m[0], view)
    if perm is None or perm != tuple(range(len(perm))):
        return "the perm moves axes"
    return _aliasable(m[0], view)


REMOVE_IDENTITY_TRANSPOSE = _rule("remove_identity_transpose", {"Transpose"}, _check_identity_perm,
                                  lambda m, view: Replacement(aliases={m[0].outputs[0]: m[0].inputs[0]}))


def _check_as_reshape(m: Match, view: View) -> str | None:
    t = m[0]
    perm, shape = _perm(t, view), view.shape(t.inputs[0])
    if perm is None or shape is None:
        return "the shape is unknown"
    moved = [p for p in perm if shape[p] != 1]
    if moved != sorted(moved):
        return "the transpose reorders dims larger than 1"
    return None


def _as_reshape(m: Match, view: View) -> Replacement:
    t = m[0]
    shape = view.fresh(t.outputs[0] + "_shape")
    # From the input, not the output: a Transpose made earlier in this pass has no output type yet.
    dims = view.shape(t.inputs[0])
    return Replacement(nodes=(Node("Reshape", (t.inputs[0], shape), t.outputs),),
                       tensors={shape: np.array([dims[p] for p in _perm(t, view)], np.int64)})


TRANSPOSE_AS_RESHAPE = _rule("transpose_as_reshape", {"Transpose"}, _check_as_reshape, _as_reshape)


# ---------------------------------------------------------------- sinking transposes

def _check_unary(m: Match, view: View) -> str | None:
    node = m[0]
    if _transposed(view, node.inputs[0]) is None:
        return "the input is not a Transpose"
    if any(i and (view.tensor(i) is None or view.tensor(i).size != 1) for i in node.inputs[1:]):
        return "an extra input is not a scalar constant"
    return _single_output(node)


def _sink_unary(m: Match, view: View) -> Replacement:
    node = m[0]
    x, perm = _transposed(view, node.inputs[0])
    return Replacement(nodes=_sunk(node, (x,) + node.inputs[1:], perm, view))


UNARY_THROUGH_TRANSPOSE = _rule("unary_through_transpose", UNARY, _check_unary, _sink_unary)


def _binary_plan(node: Node, view: View) -> tuple[int, str, tuple[int, ...], np.ndarray] | str:
    """(transposed operand index, its source, perm, constant in the source's layout)."""
    if len(node.inputs) != 2:
        return f"{node.op_type} does not have two inputs"
    for i in (0, 1):
        found = _transposed(view, node.inputs[i])
        c = view.tensor(node.inputs[1 - i])
        if found is None or c is None:
            continue
        x, perm = found
        out_shape, in_shape = view.shape(node.outputs[0]), view.shape(node.inputs[i])
        if out_shape is None or out_shape != in_shape or c.ndim > len(in_shape):
            return "the constant broadcasts the output to another shape"
        full = c.reshape((1,) * (len(in_shape) - c.ndim) + c.shape)
        return i, x, perm, np.ascontiguousarray(full.transpose(_inverse(perm)))
    return "no operand is a Transpose next to a constant"


def _check_binary(m: Match, view: View) -> str | None:
    plan = _binary_plan(m[0], view)
    return plan if isinstance(plan, str) else None


def _sink_binary(m: Match, view: View) -> Replacement:
    node = m[0]
    i, x, perm, c = _binary_plan(node, view)
    c_name = view.fresh(node.inputs[1 - i] + "_t")
    inputs = (x, c_name) if i == 0 else (c_name, x)
    return Replacement(nodes=_sunk(node, inputs, perm, view), tensors={c_name: c})


CONSTANT_THROUGH_TRANSPOSE = _rule("constant_operand_through_transpose", BINARY, _check_binary, _sink_binary)


def _variadic_plan(node: Node, view: View) -> tuple[tuple[str, ...], tuple[int, ...]] | str:
    found = [_transposed(view, i) for i in node.inputs]
    if not node.inputs or any(f is None for f in found):
        return "not every operand is a Transpose"
    perms = {perm for _, perm in found}
    if len(perms) != 1:
        return "the operands are transposed by different perms"
    ranks = {len(view.shape(i) or ()) for i in node.inputs}
    if len(ranks) != 1:
        return "the operands have different ranks"
    return tuple(x for x, _ in found), perms.pop()


def _check_variadic(m: Match, view: View) -> str | None:
    plan = _variadic_plan(m[0], view)
    return plan if isinstance(plan, str) else _single_output(m[0])


def _sink_variadic(m: Match, view: View) -> Replacement:
    inputs, perm = _variadic_plan(m[0], view)
    return Replacement(nodes=_sunk(m[0], inputs, perm, view))


OPERANDS_THROUGH_TRANSPOSE = _rule("operands_through_transpose", VARIADIC, _check_variadic, _sink_variadic)


def _check_concat(m: Match, view: View) -> str | None:
    plan = _variadic_plan(m[0], view)
    return plan if isinstance(plan, str) else None


def _sink_concat(m: Match, view: View) -> Replacement:
    node = m[0]
    inputs, perm = _variadic_plan(node, view)
    axis = int(node.attr("axis")) % len(perm)
    attrs = tuple((k, perm[axis] if k == "axis" else v) for k, v in node.attrs)
    return Replacement(nodes=_sunk(node, inputs, perm, view, attrs=attrs))


CONCAT_THROUGH_TRANSPOSE = _rule("concat_through_transpose", {"Concat"}, _check_concat, _sink_concat)


def _pad_plan(node: Node, view: View) -> tuple[str, tuple[int, ...], np.ndarray] | str:
    """(source, perm, pads in the source's axis order) for Pad(Transpose(x))."""
    found = _transposed(view, node.inputs[0])
    if found is None:
        return "the input is not a Transpose"
    if len(node.inputs) > 3 and node.inputs[3]:
        return "Pad has explicit axes"
    pads = node.attr("pads") if len(node.inputs) < 2 or not node.inputs[1] else view.tensor(node.inputs[1])
    if pads is None:
        return "the pads are not constant"
    x, perm = found
    rank = len(perm)
    begin, end = np.asarray(pads, np.int64)[:rank], np.asarray(pads, np.int64)[rank:]
    inverse = list(_inverse(perm))
    return x, perm, np.concatenate([begin[inverse], end[inverse]])


def _check_pad(m: Match, view: View) -> str | None:
    plan = _pad_plan(m[0], view)
    return plan if isinstance(plan, str) else None


def _sink_pad(m: Match, view: View) -> Replacement:
    node = m[0]
    x, perm, pads = _pad_plan(node, view)
    if len(node.inputs) < 2 or not node.inputs[1]:
        attrs = tuple((k, tuple(int(p) for p in pads) if k == "pads" else v) for k, v in node.attrs)
        return Replacement(nodes=_sunk(node, (x,) + node.inputs[1:], perm, view, attrs=attrs))
    pads_name = view.fresh(node.inputs[1] + "_t")
    return Replacement(nodes=_sunk(node, (x, pads_name) + node.inputs[2:], perm, view),
                       tensors={pads_name: pads})


PAD_THROUGH_TRANSPOSE = _rule("pad_through_transpose", {"Pad"}, _check_pad, _sink_pad)


def _check_channels_last(m: Match, view: View) -> str | None:
    """A 4-D input made by Transpose(NHWC -> NCHW), one output."""
    node = m[0]
    found = _transposed(view, node.inputs[0])
    if found is None:
        return "the input is not a Transpose"
    if found[1] != TO_NCHW:
        return f"the input transpose {list(found[1])} is not NHWC -> NCHW"
    return _single_output(node)


def _sink_pool(m: Match, view: View) -> Replacement:
    node = m[0]
    x, _ = _transposed(view, node.inputs[0])
    return Replacement(nodes=_sunk(node, (x,), TO_NCHW, view, op_type=POOLS[node.op_type], domain=DOMAIN))


POOL_THROUGH_TRANSPOSE = _rule("pool_through_transpose", set(POOLS), _check_channels_last, _sink_pool)


def _check_batchnorm(m: Match, view: View) -> str | None:
    node = m[0]
    if any(view.tensor(i) is None for i in node.inputs[1:5]):
        return "the statistics are not constant"
    if node.attr("training_mode", 0):
        return "training mode"
    return _check_channels_last(m, view)


def _sink_batchnorm(m: Match, view: View) -> Replacement:
    node = m[0]
    x, _ = _transposed(view, node.inputs[0])
    scale, bias, mean, var = (np.asarray(view.tensor(i), np.float64) for i in node.inputs[1:5])
    dtype = view.tensor(node.inputs[1]).dtype
    s = scale / np.sqrt(var + node.attr("epsilon", 1e-5))
    out = node.outputs[0]
    s_name, t_name, scaled, inner = (view.fresh(out + k) for k in ("_scale", "_shift", "_scaled", "_t"))
    nodes = (Node("Mul", (x, s_name), (scaled,)), Node("Add", (scaled, t_name), (inner,)),
             _transpose(inner, TO_NCHW, out))
    return Replacement(nodes=nodes, tensors={s_name: s.astype(dtype), t_name: (bias - mean * s).astype(dtype)})


BATCHNORM_THROUGH_TRANSPOSE = _rule("batchnorm_through_transpose", {"BatchNormalization"},
                                    _check_batchnorm, _sink_batchnorm)


TRANSPOSE_RULES = (
    CONV_TO_NHWC, NHWC_CONV1X1_TO_MATMUL, COMPOSE_TRANSPOSES, REMOVE_IDENTITY_TRANSPOSE,
    UNARY_THROUGH_TRANSPOSE, CONSTANT_THROUGH_TRANSPOSE, OPERANDS_THROUGH_TRANSPOSE,
    CONCAT_THROUGH_TRANSPOSE, PAD_THROUGH_TRANSPOSE, POOL_THROUGH_TRANSPOSE, BATCHNORM_THROUGH_TRANSPOSE,
    TRANSPOSE_AS_RESHAPE,
)
