"""Algebraic rules: DNNFusion's associative, distributive and commutative families.

Each rule fires only where it removes work (an op, an elementwise pass over a
tensor, or an expensive op traded for a cheap one) and says why not otherwise.

* Scalar scales: `fold_scale_into_weight` moves `x * s` (s a scalar constant)
  into the constant weight of the MatMul/Gemm/Conv that produces x (through
  Reshape/Transpose/Split/bias Add) or that consumes it (through layout ops and
  products): attention's 1/sqrt(d), GELU's 0.5. `scale_through_matmul` moves it
  onto the smaller MatMul operand, `scale_after_reduction` below a reduction,
  `div_by_constant_to_mul` turns a division by a constant into a product.
* Associative chains: `combine_constant_muls` ((x*a)*b -> x*(a*b)),
  `combine_constant_adds` ((x+a)-b -> x+(a-b)), `affine_into_batchnorm`
  (a per-channel Mul/Add/Sub/Div after inference BatchNormalization joins its
  parameters), `collapse_shape_chain` (Reshape/Flatten/Squeeze/Unsqueeze chains).
* Distributive: `distribute_common_factor` (A*B + A*C -> A*(B+C), also Sub).
* Powers, roots, reciprocals, exponentials: `pow_to_mul` (x^2, x^3, x^4),
  `pow_to_sqrt_or_reciprocal` (x^0.5, x^-0.5, x^-1, x^-2), `merge_sqrt_pair`
  ((A*sqrt(B))*(sqrt(B)*C) -> A*C*B when B >= 0 is provable), `reciprocal_product`
  (Recip(X)*Recip(Y) -> Recip(X*Y), so Recip(A)*Recip(A*B) needs one reciprocal),
  `div_chain` ((a/b)/c -> a/(b*c)), `exp_product` (Exp(A)*Exp(B) -> Exp(A+B)),
  `reduce_prod_of_exp` (ReduceProd(Exp(A)) -> Exp(ReduceSum(A))).
* Identities: `remove_neutral_element` (x*1, x+0, x-0, x/1, x^1), `double_negation`,
  `double_reciprocal`, `absorb_negation` (x+(-y) -> x-y, x-(-y) -> x+y,
  (-a)*(-b) -> a*b), `remove_single_input_variadic` (Concat/Sum/Max/Min/Mean of
  one input), `remove_noop_cast`, `remove_noop_reshape`.

Log(A)+Log(B) -> Log(A*B) is left out on purpose: the product underflows (two
probabilities of 1e-30 give 0 in float32, so -inf where the sum of logs is -138).
Transpose chains are the layout family's (`autofuse.rewrite.transpose`).
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from autofuse.ir import Node
from autofuse.rewrite.engine import Match, Replacement, Rule, RuleSet, View

FAMILY = "algebraic"
FLOATS = frozenset({"float16", "bfloat16", "float32", "float64"})
SHAPE_OPS = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze"})
LAYOUT_OPS = SHAPE_OPS | {"Transpose"}
# How far the scale walks look through layout ops and products.
MAX_WALK = 16
# How deep the non-negativity proof looks.
MAX_PROOF_DEPTH = 8

Edits = list[tuple[str, np.ndarray]]


# ---------------------------------------------------------------- helpers

def _root(node: Node, view: View) -> Match | None:
    return (node,)


def _rule(name: str, ops: Sequence[str], check: Callable[[Match, View], str | None],
          rewrite: Callable[[Match, View], Replacement]) -> Rule:
    return Rule(name, FAMILY, frozenset(ops), _root, check, rewrite)


def _check_plan(plan_fn: Callable[[Node, View], object]) -> Callable[[Match, View], str | None]:
    """A check from a plan function that returns either a plan or the reason to decline."""
    def check(m: Match, view: View) -> str | None:
        plan = plan_fn(m[0], view)
        return plan if isinstance(plan, str) else None
    return check


def _dtype(view: View, value: str) -> str | None:
    t = view.type(value)
    return t.dtype if t is not None else None


def _not_float(view: View, node: Node) -> str | None:
    dtype = _dtype(view, node.outputs[0])
    return None if dtype in FLOATS else f"{node.op_type} output is {dtype}, not floating point"


def _aliasable(view: View, node: Node) -> str | None:
    """None when the output may become another value's alias, else why not."""
    out = node.outputs[0]
    if view.is_output(out):
        return f"output '{out}' is a graph output"
    if view.read_by_subgraph(out):
        return f"output '{out}' is read by a subgraph"
    return None


def _only_reader(view: View, value: str, reader: Node) -> str | None:
    """None when `reader` alone reads `value` (a single output of a node), else why not."""
    if view.is_output(value):
        return f"'{value}' is also a graph output"
    if view.read_by_subgraph(value):
        return f"'{value}' is read by a subgraph"
    if any(c is not reader for c in view.consumers(value)):
        return f"'{value}' has another consumer"
    return None


def _operand(view: View, value: str, op_type: str, reader: Node) -> Node | None:
    """The `op_type` producer of `value` when `reader` is its only reader."""
    node = view.producer(value, op_type)
    if node is None or len(node.outputs) != 1 or _only_reader(view, value, reader):
        return None
    return node


def _with_constant(view: View, node: Node) -> tuple[int, np.ndarray] | None:
    """(index of the computed operand, the constant) for a binary op with one constant operand."""
    if len(node.inputs) != 2 or not all(node.inputs):
        return None
    a, b = (view.tensor(v) for v in node.inputs)
    if (a is None) == (b is None):
        return None
    return (0, b) if b is not None else (1, a)


def _scalar_operand(view: View, node: Node) -> tuple[str, float] | None:
    """(data, s) when `node` combines data with a scalar float constant s without broadcasting it."""
    split = _with_constant(view, node)
    if split is None:
        return None
    index, c = split
    data = node.inputs[index]
    if c.size != 1 or c.dtype.kind != "f" or view.shape(data) != view.shape(node.outputs[0]):
        return None
    return data, float(c.reshape(()))


def _fill(view: View, value: str, fill: float) -> bool:
    c = view.tensor(value)
    return c is not None and c.size > 0 and bool(np.all(c == fill))


def _own(view: View, value: str, node: Node) -> str | None:
    """None when `node` is the only reader of the tensor `value` (so it may be replaced)."""
    if view.is_output(value) or view.read_by_subgraph(value):
        return f"tensor '{value}' is read elsewhere"
    if any(c is not node for c in view.consumers(value)) or node.inputs.count(value) != 1:
        return f"tensor '{value}' is shared with another node"
    return None


def _wide(c: np.ndarray) -> np.ndarray:
    """A constant in float64 (floats) or as it is (integers), for exact combining."""
    c = np.asarray(c)
    return c.astype(np.float64) if c.dtype.kind == "f" else c


def _binary(op: str, a: str, b: str, out: str) -> Node:
    return Node(op, (a, b), (out,))


def _product(view: View, factors: Sequence[str], out: str) -> tuple[Node, ...]:
    """Mul nodes computing the product of `factors` into `out`."""
    nodes: list[Node] = []
    acc = factors[0]
    for i, factor in enumerate(factors[1:]):
        target = out if i == len(factors) - 2 else view.fresh(out + "_prod")
        nodes.append(_binary("Mul", acc, factor, target))
        acc = target
    return tuple(nodes)


def _const_like(view: View, base: str, array: np.ndarray, dtype: str) -> tuple[str, dict[str, np.ndarray]]:
    name = view.fresh(base)
    return name, {name: np.asarray(array).astype(dtype)}


def nonnegative(view: View, value: str, depth: int = MAX_PROOF_DEPTH) -> bool:
    """True when every element of `value` is provably >= 0 (or NaN) from how it is made."""
    c = view.tensor(value)
    if c is not None:
        return c.dtype.kind in "fiu" and bool(np.all(np.asarray(c) >= 0))
    node = view.producer(value)
    if node is None or depth == 0:
        return False
    op, ins = node.op_type, node.inputs

    def nonneg(v: str) -> bool:
        return nonnegative(view, v, depth - 1)

    if op in ("Relu", "Abs", "Exp", "Sigmoid", "Softmax", "Sqrt", "Softplus", "ReduceSumSquare",
              "ReduceL1", "ReduceL2", "HardSigmoid"):
        return True
    if op in LAYOUT_OPS | {"ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "MaxPool", "AveragePool",
                           "GlobalAveragePool", "GlobalMaxPool", "Identity", "Expand"}:
        return nonneg(ins[0])
    if op == "Pow":
        e = view.tensor(ins[1])
        even = e is not None and e.size == 1 and float(e.reshape(())) % 2 == 0
        return even or nonneg(ins[0])
    if op == "Mul" and len(ins) == 2 and ins[0] == ins[1]:
        return True
    if op in ("Add", "Mul", "Sum", "Concat", "Min"):
        return all(nonneg(v) for v in ins if v)
    if op == "Max":
        return any(nonneg(v) for v in ins if v)
    if op == "Clip":
        low, high = (_clip_bound(view, node, i, key) for i, key in ((1, "min"), (2, "max")))
        if low is not None and low >= 0:
            return True
        bounded_above = (len(ins) > 2 and bool(ins[2])) or node.attr("max") is not None
        return nonneg(ins[0]) and (not bounded_above or (high is not None and high >= 0))
    return False


def _clip_bound(view: View, node: Node, index: int, key: str) -> float | None:
    """The smallest value of a Clip bound (a constant input or, before opset 11, an attribute)."""
    if len(node.inputs) > index and node.inputs[index]:
        c = view.tensor(node.inputs[index])
        return float(np.min(c)) if c is not None and c.size else None
    value = node.attr(key)
    return float(value) if value is not None else None


# ---------------------------------------------------------------- identities

_NEUTRAL = {"Mul": (1.0, True), "Add": (0.0, True), "Sub": (0.0, False), "Div": (1.0, False),
            "Pow": (1.0, False)}


def _neutral_data(node: Node, view: View) -> str | None:
    """The data operand when the other operand is the op's neutral element."""
    fill, commutative = _NEUTRAL[node.op_type]
    if len(node.inputs) != 2:
        return None
    a, b = node.inputs
    if _fill(view, b, fill):
        return a
    if commutative and _fill(view, a, fill):
        return b
    return None


def _check_neutral(m: Match, view: View) -> str | None:
    node = m[0]
    data = _neutral_data(node, view)
    if data is None:
        return "no operand is the neutral element"
    if view.type(data) != view.type(node.outputs[0]):
        return "the neutral operand broadcasts or casts the data"
    return _aliasable(view, node)


REMOVE_NEUTRAL_ELEMENT = _rule(
    "remove_neutral_element", tuple(_NEUTRAL), _check_neutral,
    lambda m, view: Replacement(aliases={m[0].outputs[0]: _neutral_data(m[0], view)}))


def _check_single_input(m: Match, view: View) -> str | None:
    node = m[0]
    if len([i for i in node.inputs if i]) != 1:
        return f"{node.op_type} has {len(node.inputs)} inputs"
    if view.type(node.inputs[0]) != view.type(node.outputs[0]):
        return "the output type differs from the input"
    return _aliasable(view, node)


def _alias_input(m: Match, view: View) -> Replacement:
    return Replacement(aliases={m[0].outputs[0]: m[0].inputs[0]})


REMOVE_SINGLE_INPUT_VARIADIC = _rule("remove_single_input_variadic", ("Concat", "Sum", "Max", "Min", "Mean"),
                                     _check_single_input, _alias_input)


def _check_noop_cast(m: Match, view: View) -> str | None:
    node = m[0]
    before, after = _dtype(view, node.inputs[0]), _dtype(view, node.outputs[0])
    if before is None or before != after:
        return f"casts {before} to {after}"
    return _aliasable(view, node)


REMOVE_NOOP_CAST = _rule("remove_noop_cast", ("Cast",), _check_noop_cast, _alias_input)


def _check_noop_reshape(m: Match, view: View) -> str | None:
    node = m[0]
    before, after = view.shape(node.inputs[0]), view.shape(node.outputs[0])
    if before is None or before != after:
        return f"changes the shape {before} to {after}"
    return _aliasable(view, node)


REMOVE_NOOP_RESHAPE = _rule("remove_noop_reshape", tuple(SHAPE_OPS | {"Expand"}), _check_noop_reshape, _alias_input)


def _involution(op: str, floats_only: bool) -> Rule:
    """op(op(x)) -> x."""
    def check(m: Match, view: View) -> str | None:
        node = m[0]
        if view.producer(node.inputs[0], op) is None:
            return f"the input is not a {op}"
        if floats_only and _not_float(view, node):
            return _not_float(view, node)
        return _aliasable(view, node)

    def rewrite(m: Match, view: View) -> Replacement:
        inner = view.producer(m[0].inputs[0], op)
        return Replacement(aliases={m[0].outputs[0]: inner.inputs[0]})

    name = {"Neg": "double_negation", "Reciprocal": "double_reciprocal"}[op]
    return _rule(name, (op,), check, rewrite)


DOUBLE_NEGATION = _involution("Neg", floats_only=False)
DOUBLE_RECIPROCAL = _involution("Reciprocal", floats_only=True)


def _negation_plan(node: Node, view: View) -> tuple[str, str, str] | str:
    """(new op, a, b) for x+(-y) -> x-y, x-(-y) -> x+y, (-a)*(-b) -> a*b, (-a)/(-b) -> a/b."""
    if len(node.inputs) != 2:
        return f"{node.op_type} has {len(node.inputs)} inputs"
    a, b = node.inputs
    neg_a, neg_b = (_operand(view, v, "Neg", node) for v in (a, b))
    if a == b:
        return "both operands are the same value"
    if node.op_type in ("Mul", "Div"):
        if neg_a is None or neg_b is None:
            return "not both operands are negations read only here"
        return node.op_type, neg_a.inputs[0], neg_b.inputs[0]
    if neg_b is not None:
        return ("Sub" if node.op_type == "Add" else "Add"), a, neg_b.inputs[0]
    if neg_a is not None and node.op_type == "Add":
        return "Sub", b, neg_a.inputs[0]
    return "no operand is a negation read only here"


def _absorb_negation(m: Match, view: View) -> Replacement:
    op, a, b = _negation_plan(m[0], view)
    return Replacement(nodes=(_binary(op, a, b, m[0].outputs[0]),))


ABSORB_NEGATION = _rule("absorb_negation", ("Add", "Sub", "Mul", "Div"), _check_plan(_negation_plan),
                        _absorb_negation)


# ---------------------------------------------------------------- associative chains of constants

def _constant_mul_plan(node: Node, view: View) -> tuple[str, np.ndarray] | str:
    """(x, a*b) for (x*a)*b."""
    split = _with_constant(view, node)
    if split is None:
        return "no operand is a constant"
    index, b = split
    inner = _operand(view, node.inputs[index], "Mul", node)
    inner_split = _with_constant(view, inner) if inner is not None else None
    if inner_split is None:
        return "the other operand is not a product with a constant read only here"
    x_index, a = inner_split
    combined = _wide(a) * _wide(b)
    if combined.size > max(a.size, b.size):
        return f"combining {list(a.shape)} and {list(b.shape)} constants would grow them to {list(combined.shape)}"
    return inner.inputs[x_index], combined


def _constant_add_plan(node: Node, view: View) -> tuple[str, int, np.ndarray] | str:
    """(x, sign, c): (x +- a) +- b == sign*x + c."""
    outer = _signed(node, view)
    if outer is None:
        return "no operand is a constant"
    y, sign_out, b = outer
    inner_node = view.producer(y)
    inner = _signed(inner_node, view) if inner_node is not None and not _only_reader(view, y, node) else None
    if inner is None:
        return "the other operand is not a sum with a constant read only here"
    x, sign_in, a = inner
    combined = sign_out * a + b
    if combined.size > max(a.size, b.size):
        return f"combining {list(a.shape)} and {list(b.shape)} constants would grow them to {list(combined.shape)}"
    return x, sign_out * sign_in, combined


def _signed(node: Node, view: View) -> tuple[str, int, np.ndarray] | None:
    """(y, sign, c) with node == sign*y + c, for an Add or Sub with one constant operand."""
    if node.op_type not in ("Add", "Sub"):
        return None
    split = _with_constant(view, node)
    if split is None:
        return None
    index, c = split
    c = _wide(c)
    if node.op_type == "Add":
        return node.inputs[index], 1, c
    return (node.inputs[0], 1, -c) if index == 0 else (node.inputs[1], -1, c)


def _combine_muls(m: Match, view: View) -> Replacement:
    node = m[0]
    x, c = _constant_mul_plan(node, view)
    name, tensors = _const_like(view, node.outputs[0] + "_scale", c, _dtype(view, node.outputs[0]))
    return Replacement(nodes=(_binary("Mul", x, name, node.outputs[0]),), tensors=tensors)


def _combine_adds(m: Match, view: View) -> Replacement:
    node = m[0]
    x, sign, c = _constant_add_plan(node, view)
    name, tensors = _const_like(view, node.outputs[0] + "_offset", c, _dtype(view, node.outputs[0]))
    new = _binary("Add", x, name, node.outputs[0]) if sign > 0 else _binary("Sub", name, x, node.outputs[0])
    return Replacement(nodes=(new,), tensors=tensors)


COMBINE_CONSTANT_MULS = _rule("combine_constant_muls", ("Mul",), _check_plan(_constant_mul_plan), _combine_muls)
COMBINE_CONSTANT_ADDS = _rule("combine_constant_adds", ("Add", "Sub"), _check_plan(_constant_add_plan),
                              _combine_adds)


def _check_shape_chain(m: Match, view: View) -> str | None:
    node = m[0]
    inner = view.producer(node.inputs[0])
    if inner is None or inner.op_type not in SHAPE_OPS:
        return "the input is not a Reshape, Flatten, Squeeze or Unsqueeze"
    if _only_reader(view, node.inputs[0], node):
        return _only_reader(view, node.inputs[0], node)
    shape = view.shape(node.outputs[0])
    if shape is None or 0 in shape:
        return "the output shape is unknown or empty"
    if view.graph.opset < 5:
        return f"opset {view.graph.opset} Reshape takes its shape as an attribute"
    return None


def _collapse_shape_chain(m: Match, view: View) -> Replacement:
    node = m[0]
    inner = view.producer(node.inputs[0])
    name, tensors = _const_like(view, node.outputs[0] + "_shape", np.array(view.shape(node.outputs[0])), "int64")
    return Replacement(nodes=(Node("Reshape", (inner.inputs[0], name), node.outputs),), tensors=tensors)


COLLAPSE_SHAPE_CHAIN = _rule("collapse_shape_chain", tuple(SHAPE_OPS), _check_shape_chain, _collapse_shape_chain)


# ---------------------------------------------------------------- per-channel affine maps into BatchNormalization

def _channel_vector(c: np.ndarray, shape: tuple[int, ...]) -> np.ndarray | str:
    """A broadcast constant as one value per channel (axis 1)."""
    if c.ndim > len(shape) or len(shape) < 2:
        return "the constant has more dims than the output"
    padded = (1,) * (len(shape) - c.ndim) + tuple(c.shape)
    if any(d != 1 for i, d in enumerate(padded) if i != 1):
        return f"the constant {list(c.shape)} varies along an axis other than the channels"
    return np.broadcast_to(np.asarray(c, np.float64).reshape(-1), (shape[1],))


def _batchnorm_plan(node: Node, view: View) -> tuple[Node, np.ndarray, np.ndarray] | str:
    """(bn, new scale, new bias) for a per-channel Mul/Add/Sub/Div of an inference BatchNormalization."""
    split = _with_constant(view, node)
    if split is None:
        return "no operand is a constant"
    index, c = split
    bn = _operand(view, node.inputs[index], "BatchNormalization", node)
    if bn is None:
        return "the other operand is not a BatchNormalization read only here"
    if node.op_type in ("Sub", "Div") and index != 0:
        return f"the BatchNormalization is the right operand of {node.op_type}"
    if bn.attr("training_mode", 0) or len([o for o in bn.outputs if o]) != 1:
        return "BatchNormalization is in training mode"
    params = [view.tensor(v) for v in bn.inputs[1:5]]
    if any(p is None for p in params):
        return "BatchNormalization parameters are not constant"
    shape = view.shape(bn.outputs[0])
    if shape is None or view.shape(node.outputs[0]) != shape or _not_float(view, node):
        return "the constant broadcasts the output, or the output is not floating point"
    vec = _channel_vector(c, shape)
    if isinstance(vec, str):
        return vec
    if any(p.shape != (shape[1],) for p in params):
        return "BatchNormalization parameters are not one value per channel"
    scale, bias = (np.asarray(p, np.float64) for p in params[:2])
    if node.op_type == "Div" and np.any(vec == 0):
        return "division by zero"
    return bn, *{
        "Mul": lambda: (scale * vec, bias * vec), "Div": lambda: (scale / vec, bias / vec),
        "Add": lambda: (scale, bias + vec), "Sub": lambda: (scale, bias - vec),
    }[node.op_type]()


def _affine_into_batchnorm(m: Match, view: View) -> Replacement:
    node = m[0]
    bn, scale, bias = _batchnorm_plan(node, view)
    dtype = str(view.tensor(bn.inputs[1]).dtype)
    s_name, s_tensors = _const_like(view, bn.inputs[1], scale, dtype)
    b_name, b_tensors = _const_like(view, bn.inputs[2], bias, dtype)
    new = bn.replace(inputs=(bn.inputs[0], s_name, b_name) + bn.inputs[3:5], outputs=node.outputs)
    return Replacement(nodes=(new,), tensors={**s_tensors, **b_tensors})


AFFINE_INTO_BATCHNORM = _rule("affine_into_batchnorm", ("Mul", "Add", "Sub", "Div"), _check_plan(_batchnorm_plan),
                              _affine_into_batchnorm)


# ---------------------------------------------------------------- scalar scales into weights

def _scaled(array: np.ndarray, s: float, axis: int = -1, cols: tuple[int, int] | None = None) -> np.ndarray:
    """array * s, only on the index range `cols` of `axis` when given."""
    out = np.asarray(array, np.float64).copy()
    if cols is None:
        out *= s
    else:
        index = [slice(None)] * out.ndim
        index[axis] = slice(*cols)
        out[tuple(index)] *= s
    return out.astype(array.dtype)


def _scaled_bias(array: np.ndarray, s: float, n: int, cols: tuple[int, int] | None) -> np.ndarray:
    """A bias broadcast against (..., n) outputs, scaled on `cols` of the last axis."""
    if cols is None:
        return _scaled(array, s)
    vec = np.ones(n)
    vec[slice(*cols)] = s
    return (np.asarray(array, np.float64) * vec).astype(array.dtype)


def _weight_edit(view: View, value: str, node: Node, array: np.ndarray) -> Edits | str:
    """The edit replacing tensor `value` (read by `node` alone) by `array`; none if unchanged (zeros)."""
    if np.array_equal(array, view.tensor(value)):
        return []
    reason = _own(view, value, node)
    if reason:
        return reason
    if array.dtype.kind != "f":
        return f"tensor '{value}' is not floating point"
    return [(value, array)]


def _scale_back(view: View, value: str, reader: Node, s: float, cols: tuple[int, int] | None,
                depth: int = MAX_WALK) -> Edits | str:
    """Edits that scale `value` by s (on `cols` of its last axis) at the constant weights that make it."""
    node = view.producer(value)
    if node is None:
        return f"'{value}' is an input or a weight"
    if depth == 0:
        return "the producer chain is too long"
    reason = _only_reader(view, value, reader)
    if reason:
        return reason
    op, shape = node.op_type, view.shape(value)
    if shape is None:
        return f"the shape of '{value}' is unknown"
    if op in LAYOUT_OPS | {"Neg"}:
        in_shape = view.shape(node.inputs[0])
        if cols is not None and (in_shape is None or in_shape[-1:] != shape[-1:] or
                                 (op == "Transpose" and tuple(node.attr("perm", ()))[-1:] != (len(shape) - 1,))):
            return f"{op} moves the split axis"
        return _scale_back(view, node.inputs[0], node, s, cols, depth - 1)
    if op == "Split":
        return _scale_through_split(view, node, value, s, cols, depth)
    if op in ("Add", "Sub"):
        split = _with_constant(view, node)
        if split is None:
            return f"{op} of two computed values"
        index, c = split
        edits = _scale_back(view, node.inputs[index], node, s, cols, depth - 1)
        if isinstance(edits, str):
            return edits
        bias = _weight_edit(view, node.inputs[1 - index], node, _scaled_bias(c, s, shape[-1], cols))
        return bias if isinstance(bias, str) else edits + bias
    if op == "MatMul":
        return _scale_matmul(view, node, s, cols, depth)
    if op == "Gemm":
        return _scale_gemm(view, node, s, cols)
    if op == "Conv":
        if cols is not None:
            return "a split Conv output"
        edits: Edits = []
        for v in node.inputs[1:3]:
            c = view.tensor(v) if v else np.zeros(0)
            if c is None:
                return "Conv weights are not constant"
            if v:
                edit = _weight_edit(view, v, node, _scaled(c, s))
                if isinstance(edit, str):
                    return edit
                edits += edit
        return edits
    return f"{op} is not linear in its input"


def _scale_through_split(view: View, node: Node, value: str, s: float, cols: tuple[int, int] | None,
                         depth: int) -> Edits | str:
    in_shape = view.shape(node.inputs[0])
    rank = len(in_shape)
    if node.attr("axis", 0) % rank != rank - 1:
        return "Split is not along the last axis"
    shapes = [view.shape(o) if o else None for o in node.outputs]
    if any(s is None for s in shapes):
        return "a Split output has no known shape"
    sizes = [s[-1] for s in shapes]
    k = node.outputs.index(value)
    offset = sum(sizes[:k])
    start, stop = cols if cols is not None else (0, sizes[k])
    return _scale_back(view, node.inputs[0], node, s, (offset + start, offset + stop), depth - 1)


def _scale_matmul(view: View, node: Node, s: float, cols: tuple[int, int] | None, depth: int) -> Edits | str:
    a, b = node.inputs
    wa, wb = view.tensor(a), view.tensor(b)
    if wb is not None and (cols is None or wb.ndim >= 2):
        return _weight_edit(view, b, node, _scaled(wb, s, -1, cols))
    if cols is not None:
        return "a split MatMul output without a 2-D constant B"
    if wa is not None:
        return _weight_edit(view, a, node, _scaled(wa, s))
    first = _scale_back(view, a, node, s, None, depth - 1)
    if not isinstance(first, str):
        return first
    second = _scale_back(view, b, node, s, None, depth - 1)
    return second if not isinstance(second, str) else f"MatMul A: {first}; MatMul B: {second}"


def _scale_gemm(view: View, node: Node, s: float, cols: tuple[int, int] | None) -> Edits | str:
    b = view.tensor(node.inputs[1])
    if b is None:
        return "Gemm B is computed"
    edits = _weight_edit(view, node.inputs[1], node, _scaled(b, s, 0 if node.attr("transB", 0) else 1, cols))
    if isinstance(edits, str) or len(node.inputs) < 3 or not node.inputs[2]:
        return edits
    c = view.tensor(node.inputs[2])
    if c is None:
        return "Gemm C is computed"
    n = view.shape(node.outputs[0])[-1]
    bias = _weight_edit(view, node.inputs[2], node, _scaled_bias(c, s, n, cols))
    return bias if isinstance(bias, str) else edits + bias


def _scale_forward(view: View, value: str, s: float, depth: int = MAX_WALK) -> Edits | str:
    """Edits that put the scale of `value` into the constant weight of the op that consumes it."""
    readers = view.consumers(value)
    if view.is_output(value) or view.read_by_subgraph(value) or len(readers) != 1:
        return f"'{value}' is not read by exactly one op"
    if depth == 0:
        return "the consumer chain is too long"
    node = readers[0]
    op = node.op_type
    if node.inputs.count(value) != 1:
        return f"{op} reads '{value}' twice"
    if op in LAYOUT_OPS | {"Neg", "Mul"} or (op == "Div" and node.inputs[0] == value):
        return _scale_forward(view, node.outputs[0], s, depth - 1)
    slot = node.inputs.index(value)
    if op in ("MatMul", "Gemm") and slot < 2:
        other = node.inputs[1 - slot]
        w = view.tensor(other)
        return _weight_edit(view, other, node, _scaled(w, s)) if w is not None else f"{op} {'AB'[1 - slot]} is computed"
    if op == "Conv" and slot == 0:
        w = view.tensor(node.inputs[1])
        return _weight_edit(view, node.inputs[1], node, _scaled(w, s)) if w is not None else "Conv W is computed"
    return f"{op} does not take the scale into a weight"


def _fold_scale_plan(node: Node, view: View) -> tuple[str, Edits] | str:
    scalar = _scalar_operand(view, node)
    if scalar is None:
        return "no operand is a scalar float constant"
    data, s = scalar
    if not np.isfinite(s):
        return "the scale is not finite"
    reason = _aliasable(view, node)
    if reason:
        return reason
    back = _scale_back(view, data, node, s, None)
    if not isinstance(back, str):
        return data, back
    forward = _scale_forward(view, node.outputs[0], s)
    if not isinstance(forward, str):
        return data, forward
    return f"producer: {back}; consumer: {forward}"


def _fold_scale(m: Match, view: View) -> Replacement:
    node = m[0]
    data, edits = _fold_scale_plan(node, view)
    aliases, tensors = {node.outputs[0]: data}, {}
    for old, array in edits:
        new = view.fresh(old + "_scaled")
        aliases[old], tensors[new] = new, array
    return Replacement(tensors=tensors, aliases=aliases)


FOLD_SCALE_INTO_WEIGHT = _rule("fold_scale_into_weight", ("Mul",), _check_plan(_fold_scale_plan), _fold_scale)


def _matmul_scale_plan(node: Node, view: View) -> tuple[Node, int, float] | str:
    """(matmul, operand index, s): the smaller operand of MatMul(a, b) * s takes the scale."""
    scalar = _scalar_operand(view, node)
    if scalar is None:
        return "no operand is a scalar float constant"
    data, s = scalar
    mm = _operand(view, data, "MatMul", node)
    if mm is None:
        return "the other operand is not a MatMul read only here"
    shapes = [view.shape(v) for v in mm.inputs]
    if any(s is None for s in shapes):
        return "MatMul operand shapes are unknown"
    sizes = [int(np.prod(s)) for s in shapes]
    out = int(np.prod(view.shape(data)))
    index = int(np.argmin(sizes))
    if sizes[index] >= out:
        return f"no MatMul operand is smaller than the product ({out} elements)"
    return mm, index, s


def _scale_through_matmul(m: Match, view: View) -> Replacement:
    node = m[0]
    mm, index, s = _matmul_scale_plan(node, view)
    operand = mm.inputs[index]
    scaled = view.fresh(operand + "_scaled")
    name, tensors = _const_like(view, node.outputs[0] + "_scale", np.array(s), _dtype(view, operand))
    inputs = list(mm.inputs)
    inputs[index] = scaled
    nodes = (_binary("Mul", operand, name, scaled), mm.replace(inputs=tuple(inputs), outputs=node.outputs))
    return Replacement(nodes=nodes, tensors=tensors)


SCALE_THROUGH_MATMUL = _rule("scale_through_matmul", ("Mul",), _check_plan(_matmul_scale_plan),
                             _scale_through_matmul)


_REDUCE_SCALE = {  # reduction -> (scale of the result, reduction to use when s < 0)
    "ReduceSum": (lambda s: s, "ReduceSum"), "ReduceMean": (lambda s: s, "ReduceMean"),
    "ReduceMax": (lambda s: s, "ReduceMin"), "ReduceMin": (lambda s: s, "ReduceMax"),
    "ReduceSumSquare": (lambda s: s * s, "ReduceSumSquare"), "ReduceL1": (abs, "ReduceL1"),
    "ReduceL2": (abs, "ReduceL2"),
}


def _reduce_scale_plan(node: Node, view: View) -> tuple[str, float, str] | str:
    """(x, scale, reduction) for Reduce(x * s) == reduction(x) * scale."""
    inner = _operand(view, node.inputs[0], "Mul", node)
    scalar = _scalar_operand(view, inner) if inner is not None else None
    if scalar is None:
        return "the input is not a product with a scalar float constant read only here"
    x, s = scalar
    before, after = view.shape(x), view.shape(node.outputs[0])
    if before is None or after is None or np.prod(after) >= np.prod(before):
        return "the reduction keeps every element"
    scale, negative_op = _REDUCE_SCALE[node.op_type]
    return x, float(scale(s)), negative_op if s < 0 else node.op_type


def _scale_after_reduction(m: Match, view: View) -> Replacement:
    node = m[0]
    x, scale, op = _reduce_scale_plan(node, view)
    reduced = view.fresh(node.outputs[0] + "_unscaled")
    name, tensors = _const_like(view, node.outputs[0] + "_scale", np.array(scale), _dtype(view, x))
    nodes = (node.replace(op_type=op, inputs=(x,) + node.inputs[1:], outputs=(reduced,)),
             _binary("Mul", reduced, name, node.outputs[0]))
    return Replacement(nodes=nodes, tensors=tensors)


SCALE_AFTER_REDUCTION = _rule("scale_after_reduction", tuple(_REDUCE_SCALE), _check_plan(_reduce_scale_plan),
                              _scale_after_reduction)


def _check_div_constant(m: Match, view: View) -> str | None:
    node = m[0]
    c = view.tensor(node.inputs[1])
    if c is None or view.tensor(node.inputs[0]) is not None:
        return "the divisor is not a constant (or both operands are)"
    if _not_float(view, node):
        return _not_float(view, node)
    if not np.all(np.isfinite(c)) or np.any(c == 0):
        return "the divisor has zeros or non-finite values"
    return None


def _div_to_mul(m: Match, view: View) -> Replacement:
    node = m[0]
    c = np.asarray(view.tensor(node.inputs[1]), np.float64)
    name, tensors = _const_like(view, node.inputs[1] + "_reciprocal", 1.0 / c, _dtype(view, node.outputs[0]))
    return Replacement(nodes=(_binary("Mul", node.inputs[0], name, node.outputs[0]),), tensors=tensors)


DIV_BY_CONSTANT_TO_MUL = _rule("div_by_constant_to_mul", ("Div",), _check_div_constant, _div_to_mul)


# ---------------------------------------------------------------- distributive

def _distribute_plan(node: Node, view: View) -> tuple[str, str, str] | str:
    """(A, B, C) for A*B +- A*C."""
    if len(node.inputs) != 2 or node.inputs[0] == node.inputs[1]:
        return "not two distinct operands"
    left, right = (_operand(view, v, "Mul", node) for v in node.inputs)
    if left is None or right is None:
        return "not both operands are products read only here"
    common = [v for v in left.inputs if v in right.inputs]
    if not common:
        return "the products share no factor"
    a = common[0]
    b = left.inputs[1] if left.inputs[0] == a else left.inputs[0]
    c = right.inputs[1] if right.inputs[0] == a else right.inputs[0]
    return a, b, c


def _distribute(m: Match, view: View) -> Replacement:
    node = m[0]
    a, b, c = _distribute_plan(node, view)
    inner = view.fresh(node.outputs[0] + "_factor")
    return Replacement(nodes=(_binary(node.op_type, b, c, inner), _binary("Mul", a, inner, node.outputs[0])))


DISTRIBUTE_COMMON_FACTOR = _rule("distribute_common_factor", ("Add", "Sub"), _check_plan(_distribute_plan),
                                 _distribute)


# ---------------------------------------------------------------- roots, powers, reciprocals, exponentials

def _exponent(node: Node, view: View) -> float | None:
    e = view.tensor(node.inputs[1]) if len(node.inputs) == 2 else None
    if e is None or e.size != 1 or view.shape(node.inputs[0]) != view.shape(node.outputs[0]):
        return None
    return float(e.reshape(()))


def _check_pow(exponents: Sequence[float], floats_only: bool) -> Callable[[Match, View], str | None]:
    def check(m: Match, view: View) -> str | None:
        node = m[0]
        e = _exponent(node, view)
        if e is None:
            return "the exponent is not a scalar constant (or it broadcasts the base)"
        if e not in exponents:
            return f"exponent {e:g} is not one of {', '.join(f'{x:g}' for x in exponents)}"
        if floats_only and _not_float(view, node):
            return _not_float(view, node)
        if _dtype(view, node.inputs[0]) != _dtype(view, node.outputs[0]):
            return "the base and the result differ in dtype"
        return None
    return check


def _pow_to_mul(m: Match, view: View) -> Replacement:
    node = m[0]
    x, out = node.inputs[0], node.outputs[0]
    e = int(_exponent(node, view))
    if e == 2:
        return Replacement(nodes=(_binary("Mul", x, x, out),))
    square = view.fresh(out + "_square")
    last = _binary("Mul", square, x, out) if e == 3 else _binary("Mul", square, square, out)
    return Replacement(nodes=(_binary("Mul", x, x, square), last))


def _pow_to_root(m: Match, view: View) -> Replacement:
    node = m[0]
    x, out = node.inputs[0], node.outputs[0]
    e = _exponent(node, view)
    if e == 0.5:
        return Replacement(nodes=(Node("Sqrt", (x,), (out,)),))
    if e == -1.0:
        return Replacement(nodes=(Node("Reciprocal", (x,), (out,)),))
    inner = view.fresh(out + "_inner")
    first = Node("Sqrt", (x,), (inner,)) if e == -0.5 else _binary("Mul", x, x, inner)
    return Replacement(nodes=(first, Node("Reciprocal", (inner,), (out,))))


POW_TO_MUL = _rule("pow_to_mul", ("Pow",), _check_pow((2.0, 3.0, 4.0), floats_only=False), _pow_to_mul)
POW_TO_SQRT_OR_RECIPROCAL = _rule("pow_to_sqrt_or_reciprocal", ("Pow",),
                                  _check_pow((0.5, -0.5, -1.0, -2.0), floats_only=True), _pow_to_root)


def _factors(view: View, value: str, root: Node) -> list[str]:
    """The factors of one operand of `root`: a product read only by root splits in two."""
    mul = _operand(view, value, "Mul", root)
    return list(mul.inputs) if mul is not None else [value]


def _sqrt_plan(node: Node, view: View) -> tuple[str, list[str]] | str:
    """(B, other factors) for (A*sqrt(B)) * (sqrt(B)*C)."""
    if len(node.inputs) != 2:
        return "not a binary Mul"
    if _not_float(view, node):
        return _not_float(view, node)
    left, right = (_factors(view, v, node) for v in node.inputs)
    if node.inputs[0] == node.inputs[1]:
        left, right = [node.inputs[0]], [node.inputs[1]]
    for u in left:
        for v in right:
            su, sv = view.producer(u, "Sqrt"), view.producer(v, "Sqrt")
            if su is None or sv is None or su.inputs[0] != sv.inputs[0]:
                continue
            b = su.inputs[0]
            if not nonnegative(view, b):
                return f"'{b}' is not provably non-negative"
            rest = [f for f in left if f != u] + [f for f in right if f != v]
            if not rest and view.shape(b) != view.shape(node.outputs[0]):
                return "the root broadcasts the product"
            return b, rest
    return "no square root appears on both sides"


def _check_sqrt(m: Match, view: View) -> str | None:
    plan = _sqrt_plan(m[0], view)
    if isinstance(plan, str):
        return plan
    return _aliasable(view, m[0]) if not plan[1] else None


def _merge_sqrt(m: Match, view: View) -> Replacement:
    node = m[0]
    b, rest = _sqrt_plan(node, view)
    if not rest:
        return Replacement(aliases={node.outputs[0]: b})
    return Replacement(nodes=_product(view, rest + [b], node.outputs[0]))


MERGE_SQRT_PAIR = _rule("merge_sqrt_pair", ("Mul",), _check_sqrt, _merge_sqrt)


def _pair_plan(op: str) -> Callable[[Node, View], tuple[str, str] | str]:
    """(x, y) for Mul(op(x), op(y)) where both are read only by the Mul."""
    def plan(node: Node, view: View) -> tuple[str, str] | str:
        if len(node.inputs) != 2 or node.inputs[0] == node.inputs[1]:
            return "not two distinct operands"
        if _not_float(view, node):
            return _not_float(view, node)
        a, b = (_operand(view, v, op, node) for v in node.inputs)
        if a is None or b is None:
            return f"not both operands are {op} read only here"
        return a.inputs[0], b.inputs[0]
    return plan


def _reciprocal_product(m: Match, view: View) -> Replacement:
    node = m[0]
    x, y = _pair_plan("Reciprocal")(node, view)
    product = view.fresh(node.outputs[0] + "_denominator")
    return Replacement(nodes=(_binary("Mul", x, y, product), Node("Reciprocal", (product,), node.outputs)))


def _exp_product(m: Match, view: View) -> Replacement:
    node = m[0]
    x, y = _pair_plan("Exp")(node, view)
    total = view.fresh(node.outputs[0] + "_exponent")
    return Replacement(nodes=(_binary("Add", x, y, total), Node("Exp", (total,), node.outputs)))


RECIPROCAL_PRODUCT = _rule("reciprocal_product", ("Mul",), _check_plan(_pair_plan("Reciprocal")),
                           _reciprocal_product)
EXP_PRODUCT = _rule("exp_product", ("Mul",), _check_plan(_pair_plan("Exp")), _exp_product)


def _div_chain_plan(node: Node, view: View) -> tuple[Node, bool] | str:
    """(inner Div, inner is the numerator) for (a/b)/c or a/(b/c)."""
    if _not_float(view, node):
        return _not_float(view, node)
    if node.inputs[0] == node.inputs[1]:
        return "not two distinct operands"
    for index in (0, 1):
        inner = _operand(view, node.inputs[index], "Div", node)
        if inner is not None:
            return inner, index == 0
    return "no operand is a division read only here"


def _div_chain(m: Match, view: View) -> Replacement:
    node = m[0]
    inner, numerator = _div_chain_plan(node, view)
    a, b = inner.inputs
    c = node.inputs[1] if numerator else node.inputs[0]
    product = view.fresh(node.outputs[0] + "_product")
    if numerator:  # (a/b)/c -> a/(b*c)
        nodes = (_binary("Mul", b, c, product), _binary("Div", a, product, node.outputs[0]))
    else:  # c/(a/b) -> (c*b)/a
        nodes = (_binary("Mul", c, b, product), _binary("Div", product, a, node.outputs[0]))
    return Replacement(nodes=nodes)


DIV_CHAIN = _rule("div_chain", ("Div",), _check_plan(_div_chain_plan), _div_chain)


def _reduce_prod_plan(node: Node, view: View) -> tuple[Node, np.ndarray | None] | str:
    """(the Exp, the axes or None for all) for ReduceProd(Exp(x))."""
    exp = _operand(view, node.inputs[0], "Exp", node)
    if exp is None:
        return "the input is not an Exp read only here"
    if view.graph.opset >= 18:
        axes = view.tensor(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] else None
        if axes is None and len(node.inputs) > 1 and node.inputs[1]:
            return "the axes are computed"
    else:
        axes = np.array(node.attr("axes"), np.int64) if node.attr("axes") is not None else None
    return exp, axes


def _reduce_prod_of_exp(m: Match, view: View) -> Replacement:
    node = m[0]
    exp, axes = _reduce_prod_plan(node, view)
    total = view.fresh(node.outputs[0] + "_sum")
    attrs = [(k, v) for k, v in node.attrs if k != "axes"]
    inputs: tuple[str, ...] = (exp.inputs[0],)
    tensors: dict[str, np.ndarray] = {}
    if axes is not None and view.graph.opset >= 13:
        name, tensors = _const_like(view, node.outputs[0] + "_axes", axes, "int64")
        inputs += (name,)
    elif axes is not None:
        attrs.append(("axes", tuple(int(a) for a in np.asarray(axes).reshape(-1))))
    if view.graph.opset < 13:
        attrs = [(k, v) for k, v in attrs if k != "noop_with_empty_axes"]
    reduce_sum = Node("ReduceSum", inputs, (total,), tuple(sorted(attrs)))
    return Replacement(nodes=(reduce_sum, Node("Exp", (total,), node.outputs)), tensors=tensors)


REDUCE_PROD_OF_EXP = _rule("reduce_prod_of_exp", ("ReduceProd",), _check_plan(_reduce_prod_plan),
                           _reduce_prod_of_exp)


ALGEBRAIC_RULES = (
    REMOVE_NEUTRAL_ELEMENT, REMOVE_SINGLE_INPUT_VARIADIC, REMOVE_NOOP_CAST, REMOVE_NOOP_RESHAPE,
    DOUBLE_NEGATION, DOUBLE_RECIPROCAL, ABSORB_NEGATION,
    DIV_BY_CONSTANT_TO_MUL, COMBINE_CONSTANT_MULS, COMBINE_CONSTANT_ADDS, AFFINE_INTO_BATCHNORM,
    FOLD_SCALE_INTO_WEIGHT, SCALE_THROUGH_MATMUL, SCALE_AFTER_REDUCTION,
    COLLAPSE_SHAPE_CHAIN, DISTRIBUTE_COMMON_FACTOR,
    POW_TO_MUL, POW_TO_SQRT_OR_RECIPROCAL, MERGE_SQRT_PAIR, RECIPROCAL_PRODUCT, DIV_CHAIN,
    EXP_PRODUCT, REDUCE_PROD_OF_EXP,
)
ALGEBRAIC = RuleSet("algebraic", ALGEBRAIC_RULES)
