"""Layout and algorithm rules for convolutions.

* The channels-last rules of `autofuse.rewrite.transpose` (2-D Conv -> NHWC,
  transposes sunk through elementwise ops, pooling and Concat until they cancel)
  come first; what they leave NCHW may still take the rule below.

* `conv1x1_to_matmul`: a pointwise (1x1, stride 1, no padding, group 1) Conv is a
  matmul over channels: Reshape(x, [N, C, HW]) -> MatMul(W[M, C], .) -> + b[M, 1]
  -> Reshape([N, M, H, W]). XLA's CPU dot runs this form markedly faster than its
  convolution. The weight is reshaped once, at rewrite time.
"""
from __future__ import annotations

from math import prod

import numpy as np

from autofuse.ir import Node
from autofuse.rewrite.engine import Match, Replacement, Rule, RuleSet, View
from autofuse.rewrite.transpose import TRANSPOSE_RULES, constant_conv_decline, pointwise_decline

FAMILY = "layout"


def _match_conv(node: Node, view: View) -> Match | None:
    return (node,)


def _check_pointwise(m: Match, view: View) -> str | None:
    conv = m[0]
    reason = constant_conv_decline(conv, view)
    if reason:
        return reason
    w = view.tensor(conv.inputs[1])
    if any(k != 1 for k in w.shape[2:]):
        return f"kernel {list(w.shape[2:])} is not 1x1"
    return pointwise_decline(conv)


def _pointwise_as_matmul(m: Match, view: View) -> Replacement:
    conv = m[0]
    x = conv.inputs[0]
    n, c, *spatial = view.shape(x)
    w = view.tensor(conv.inputs[1])
    out = conv.outputs[0]
    flat_shape, w2, flat_in, flat_out = (view.fresh(out + s) for s in ("_flat_shape", "_w2d", "_in2d", "_mm"))
    nodes = [Node("Reshape", (x, flat_shape), (flat_in,)), Node("MatMul", (w2, flat_in), (flat_out,))]
    tensors = {
        flat_shape: np.array([n, c, prod(spatial)], np.int64),
        w2: w.reshape(w.shape[0], c),
    }
    if len(conv.inputs) > 2 and conv.inputs[2]:
        biased, b2 = view.fresh(out + "_biased"), view.fresh(out + "_b2d")
        nodes.append(Node("Add", (flat_out, b2), (biased,)))
        tensors[b2] = view.tensor(conv.inputs[2]).reshape(-1, 1).astype(w.dtype)
        flat_out = biased
    out_shape = view.fresh(out + "_shape")
    nodes.append(Node("Reshape", (flat_out, out_shape), (out,)))
    tensors[out_shape] = np.array([n, w.shape[0], *spatial], np.int64)
    return Replacement(nodes=tuple(nodes), tensors=tensors)


CONV1X1_TO_MATMUL = Rule("conv1x1_to_matmul", FAMILY, frozenset({"Conv"}),
                         _match_conv, _check_pointwise, _pointwise_as_matmul)

CONV1X1 = RuleSet("conv1x1", (CONV1X1_TO_MATMUL,))
LAYOUT = RuleSet("layout", TRANSPOSE_RULES + (CONV1X1_TO_MATMUL,))
