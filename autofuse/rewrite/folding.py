"""Folding rules: work that inference never needs, moved into the weights at rewrite time.

* `remove_identity`, `remove_dropout`: the output becomes an alias of the input.
* `fold_<follower>_into_<producer>`: a per-channel affine map (BatchNormalization,
  or Mul/Add/Sub/Div by a constant) after Conv, Gemm or MatMul folds into the
  producer's weights and bias. One rule per (follower, producer) pair, so each
  has its own fire count.
* `fold_weight_subgraph`: an op whose inputs are all weights or constants
  (Transpose or Unsqueeze of a weight) is evaluated once into a new weight.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np

from autofuse.ir import Graph, Node
from autofuse.lowering import apply_node, spec_for
from autofuse.rewrite.engine import ANY_OP, Match, Replacement, Rule, RuleSet, View

FAMILY = "folding"

# A folded weight subgraph may grow the weights by at most this factor.
MAX_FOLD_GROWTH = 4


def _decline_alias(node: Node, view: View) -> str | None:
    out = node.outputs[0]
    if view.is_output(out):
        return f"output '{out}' is a graph output"
    if view.read_by_subgraph(out):
        return f"output '{out}' is read by a subgraph"
    return None


# ---------------------------------------------------------------- Identity, Dropout

def _match_self(node: Node, view: View) -> Match | None:
    return (node,) if node.inputs and node.inputs[0] and node.outputs else None


def _alias_first(match: Match, view: View) -> Replacement:
    node = match[-1]
    return Replacement(aliases={node.outputs[0]: node.inputs[0]})


def _check_dropout(match: Match, view: View) -> str | None:
    node = match[-1]
    if len(node.outputs) > 1 and node.outputs[1] and (view.consumers(node.outputs[1]) or view.is_output(node.outputs[1])):
        return "the mask output is read"
    if len(node.inputs) > 2 and node.inputs[2]:
        mode = view.tensor(node.inputs[2])
        if mode is None:
            return "training_mode is not a constant"
        if bool(np.asarray(mode).reshape(())):
            return "training_mode is true"
    return _decline_alias(node, view)


REMOVE_IDENTITY = Rule("remove_identity", FAMILY, frozenset({"Identity"}), _match_self,
                       lambda m, v: _decline_alias(m[-1], v), _alias_first)
REMOVE_DROPOUT = Rule("remove_dropout", FAMILY, frozenset({"Dropout"}), _match_self, _check_dropout, _alias_first)


# ---------------------------------------------------------------- per-channel affine folds

class Affine(NamedTuple):
    """y * scale + shift along one output axis (None: a scalar, any axis)."""

    scale: np.ndarray
    shift: np.ndarray
    axis: int | None


def _batchnorm_affine(node: Node, data: str, view: View) -> Affine | str:
    if len([o for o in node.outputs if o]) > 1 or node.attr("training_mode", 0):
        return "BatchNormalization is in training mode"
    if node.attr("spatial", 1) == 0:
        return "BatchNormalization has spatial=0"
    params = [view.tensor(v) for v in node.inputs[1:5]]
    if any(p is None for p in params):
        return "BatchNormalization parameters are not constant"
    scale, bias, mean, var = (np.asarray(p, np.float64) for p in params)
    s = scale / np.sqrt(var + node.attr("epsilon", 1e-5))
    return Affine(s, bias - mean * s, 1)


def _constant_operand(node: Node, data: str, view: View) -> np.ndarray | str:
    other = [v for v in node.inputs if v != data]
    if len(node.inputs) != 2 or len(other) != 1:
        return f"{node.op_type} does not combine the output with one other operand"
    c = view.tensor(other[0])
    if c is None:
        return f"the other {node.op_type} operand is not constant"
    return np.asarray(c, np.float64)


def _channel_axis_of(c: np.ndarray, rank: int) -> int | None | str:
    """The one axis a broadcast constant varies along (None: scalar)."""
    if c.ndim > rank:
        return "the constant has more dims than the output"
    varying = [rank - c.ndim + i for i, d in enumerate(c.shape) if d != 1]
    if len(varying) > 1:
        return f"the constant varies along axes {varying}, not one channel axis"
    return varying[0] if varying else None


def _elementwise_affine(kind: str) -> Callable[[Node, str, View], Affine | str]:
    def affine(node: Node, data: str, view: View) -> Affine | str:
        c = _constant_operand(node, data, view)
        if isinstance(c, str):
            return c
        if kind in ("Sub", "Div") and node.inputs[0] != data:
            return f"the output is the right operand of {kind}"
        shape = view.shape(data)
        if shape is None:
            return "the output shape is unknown"
        axis = _channel_axis_of(c, len(shape))
        if isinstance(axis, str):
            return axis
        vec = c.reshape(-1)
        one, zero = np.ones_like(vec), np.zeros_like(vec)
        if kind == "Div" and np.any(vec == 0):
            return "division by zero"
        scale, shift = {
            "Mul": lambda: (vec, zero), "Add": lambda: (one, vec),
            "Sub": lambda: (one, -vec), "Div": lambda: (1.0 / vec, zero),
        }[kind]()
        return Affine(scale, shift, axis)
    return affine


FOLLOWERS: dict[str, Callable[[Node, str, View], Affine | str]] = {
    "BatchNormalization": _batchnorm_affine,
    "Mul": _elementwise_affine("Mul"),
    "Add": _elementwise_affine("Add"),
    "Sub": _elementwise_affine("Sub"),
    "Div": _elementwise_affine("Div"),
}


def _channels(affine: Affine, m: int) -> tuple[np.ndarray, np.ndarray] | str:
    """Scale and shift as length-m vectors."""
    if affine.scale.size not in (1, m) or affine.shift.size not in (1, m):
        return f"the per-channel constant has {max(affine.scale.size, affine.shift.size)} values for {m} channels"
    return np.broadcast_to(affine.scale, (m,)), np.broadcast_to(affine.shift, (m,))


def _fold_conv(producer: Node, affine: Affine, view: View) -> tuple[Node, dict] | str:
    w = view.tensor(producer.inputs[1])
    bias = view.tensor(producer.inputs[2]) if len(producer.inputs) > 2 and producer.inputs[2] else np.zeros(0)
    if w is None or bias is None:
        return "Conv weights are not constant"
    if affine.axis not in (None, 1):
        return f"the constant varies along axis {affine.axis}, not the channel axis 1"
    channels = _channels(affine, w.shape[0])
    if isinstance(channels, str):
        return channels
    s, t = channels
    b = np.asarray(bias, np.float64) if bias.size else np.zeros(w.shape[0])
    new_w = (np.asarray(w, np.float64) * s.reshape((-1,) + (1,) * (w.ndim - 1))).astype(w.dtype)
    new_b = (b * s + t).astype(w.dtype)
    w_name, b_name = view.fresh(producer.inputs[1]), view.fresh(producer.inputs[1] + "_bias")
    node = producer.replace(inputs=(producer.inputs[0], w_name, b_name))
    return node, {w_name: new_w, b_name: new_b}


def _fold_gemm(producer: Node, affine: Affine, view: View) -> tuple[Node, dict] | str:
    b = view.tensor(producer.inputs[1])
    c = view.tensor(producer.inputs[2]) if len(producer.inputs) > 2 and producer.inputs[2] else np.zeros(())
    if b is None or c is None:
        return "Gemm B or C is not constant"
    trans_b = producer.attr("transB", 0)
    m = b.shape[0] if trans_b else b.shape[1]
    if affine.axis not in (None, 1):
        return f"the constant varies along axis {affine.axis}, not the Gemm output axis 1"
    channels = _channels(affine, m)
    if isinstance(channels, str):
        return channels
    s, t = channels
    s_b = producer.attr("alpha", 1.0) * s
    new_b = np.asarray(b, np.float64) * (s_b[:, None] if trans_b else s_b[None, :])
    new_c = producer.attr("beta", 1.0) * np.asarray(c, np.float64) * s + t
    b_name, c_name = view.fresh(producer.inputs[1]), view.fresh(producer.inputs[1] + "_bias")
    attrs = tuple((k, v) for k, v in producer.attrs if k not in ("alpha", "beta"))
    node = producer.replace(inputs=(producer.inputs[0], b_name, c_name), attrs=attrs)
    return node, {b_name: new_b.astype(b.dtype), c_name: new_c.astype(b.dtype)}


def _fold_matmul(producer: Node, affine: Affine, view: View) -> tuple[Node, dict] | str:
    b = view.tensor(producer.inputs[1])
    a_shape, out_shape = view.shape(producer.inputs[0]), view.shape(producer.outputs[0])
    if b is None:
        return "MatMul B is not constant"
    if b.ndim < 2 or a_shape is None or out_shape is None:
        return "MatMul B is a vector or shapes are unknown"
    if affine.axis not in (None, len(out_shape) - 1):
        return f"the constant varies along axis {affine.axis}, not the MatMul output axis {len(out_shape) - 1}"
    channels = _channels(affine, b.shape[-1])
    if isinstance(channels, str):
        return channels
    s, t = channels
    new_b = (np.asarray(b, np.float64) * s).astype(b.dtype)
    b_name = view.fresh(producer.inputs[1])
    if not np.any(t):
        return producer.replace(inputs=(producer.inputs[0], b_name)), {b_name: new_b}
    if len(a_shape) != 2 or b.ndim != 2:
        return "a bias on a MatMul that is not 2-D would stay an Add"
    c_name = view.fresh(producer.inputs[1] + "_bias")
    node = Node("Gemm", (producer.inputs[0], b_name, c_name), producer.outputs, name=producer.name)
    return node, {b_name: new_b, c_name: t.astype(b.dtype)}


PRODUCERS = {"Conv": _fold_conv, "Gemm": _fold_gemm, "MatMul": _fold_matmul}


def _affine_fold_rule(follower: str, producer: str) -> Rule:
    """fold_<follower>_into_<producer>: Y = f(P(x)) with f per-channel affine -> P'(x)."""
    to_affine, fold = FOLLOWERS[follower], PRODUCERS[producer]

    def match(node: Node, view: View) -> Match | None:
        data_inputs = node.inputs[:1] if follower == "BatchNormalization" else node.inputs
        for value in data_inputs:
            source = view.producer(value, producer)
            if source is not None:
                return source, node
        return None

    def plan(m: Match, view: View) -> tuple[Node, dict] | str:
        source, node = m
        reason = view.only_feeds(source, node)
        if reason:
            return reason
        if view.shape(source.outputs[0]) is None or view.shape(source.outputs[0]) != view.shape(node.outputs[0]):
            return f"{follower} broadcasts the {producer} output to another shape"
        if view.type(source.outputs[0]).dtype not in ("float32", "float64", "float16"):
            return "not a floating-point output"
        affine = to_affine(node, source.outputs[0], view)
        if isinstance(affine, str):
            return affine
        folded = fold(source, affine, view)
        if isinstance(folded, str):
            return folded
        new_node, tensors = folded
        return new_node.replace(outputs=node.outputs[:1]), tensors

    def check(m: Match, view: View) -> str | None:
        result = plan(m, view)
        return result if isinstance(result, str) else None

    def rewrite(m: Match, view: View) -> Replacement:
        new_node, tensors = plan(m, view)
        return Replacement(nodes=(new_node,), tensors=tensors)

    name = f"fold_{follower.lower() if follower != 'BatchNormalization' else 'batchnorm'}_into_{producer.lower()}"
    return Rule(name, FAMILY, frozenset({follower}), match, check, rewrite)


AFFINE_FOLDS = tuple(_affine_fold_rule(f, p) for f in FOLLOWERS for p in PRODUCERS)


# ---------------------------------------------------------------- weight-only subgraphs

def _match_weight_op(node: Node, view: View) -> Match | None:
    inputs = [i for i in node.inputs if i]
    if not inputs or not node.outputs or not all(view.tensor(i) is not None for i in inputs):
        return None
    return (node,)


def _check_weight_op(m: Match, view: View) -> str | None:
    node = m[0]
    if any(isinstance(v, Graph) or (isinstance(v, tuple) and any(isinstance(g, Graph) for g in v)) for _, v in node.attrs):
        return "the op has a subgraph"
    if spec_for(node, view.graph).nondeterministic:
        return "the op is nondeterministic"
    if any(view.is_output(o) for o in node.outputs if o):
        return "an output is a graph output"
    before = sum(view.tensor(i).size for i in node.inputs if i)
    after = sum(int(np.prod(view.shape(o) or (0,))) for o in node.outputs if o)
    if after > MAX_FOLD_GROWTH * before:
        return f"folding would grow {before} weight elements to {after}"
    return None


def _fold_weight_op(m: Match, view: View) -> Replacement:
    node = m[0]
    env = {i: view.tensor(i) for i in node.inputs if i}
    values = apply_node(node, view.graph, env, source=view.model.source)
    return Replacement(tensors={o: np.asarray(v) for o, v in zip(node.outputs, values) if o})


FOLD_WEIGHT_SUBGRAPH = Rule("fold_weight_subgraph", FAMILY, frozenset({ANY_OP}),
                            _match_weight_op, _check_weight_op, _fold_weight_op)

FOLDING = RuleSet("folding", (REMOVE_IDENTITY, REMOVE_DROPOUT) + AFFINE_FOLDS + (FOLD_WEIGHT_SUBGRAPH,))
