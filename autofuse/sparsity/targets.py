"""Which nodes of a model carry prunable weights, and how their weights become rows.

A *layer* is a MatMul, Gemm or Conv node whose weight is a model weight read by
that node alone. Its weight is viewed as a (outputs, reduction) matrix of rows,
the orientation in which banks are cut:

* MatMul(x, W), W (K, N): rows are W's columns, W.T.
* Gemm(A, B) with transB=0: the same; transB=1: B (N, K) is already rows.
* Conv(x, W), W (O, C/g, kh, kw): rows are W reshaped to (O, C/g*kh*kw).

Layers are named by `node_key`: the node's name, or its first output where the
node has none (many exported graphs leave nodes unnamed).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from autofuse.ir import Model, Node

OPS = ("MatMul", "Gemm", "Conv")


@dataclass(frozen=True)
class Layer:
    """A prunable node: its name, op, the weight it reads and the activation it multiplies."""

    node: str
    op_type: str
    weight: str
    activation: str
    transposed: bool  # the weight is stored as (outputs, reduction) already

    def rows(self, weight: np.ndarray) -> np.ndarray:
        """The weight as (outputs, reduction) rows."""
        if self.op_type == "Conv":
            return weight.reshape(weight.shape[0], -1)
        return weight if self.transposed else weight.T

    def from_rows(self, rows: np.ndarray, like: np.ndarray) -> np.ndarray:
        """Rows back in the weight's own layout and dtype."""
        if self.op_type == "Conv":
            return rows.reshape(like.shape).astype(like.dtype)
        return (rows if self.transposed else rows.T).astype(like.dtype)


def node_key(node: Node) -> str:
    """The name a layer goes by: the node's name, else its first output (unique in the graph)."""
    return node.name or node.outputs[0]


def _layer(node: Node, model: Model, readers: dict[str, int]) -> Layer | str:
    """The node as a Layer, or why it is not one."""
    if node.op_type not in OPS or len(node.inputs) < 2:
        return f"{node.op_type} is not a prunable op"
    activation, weight = node.inputs[0], node.inputs[1]
    if weight not in model.weights:
        return "its weight operand is not a constant weight"
    if readers.get(weight, 0) > 1:
        return f"weight '{weight}' is shared with other nodes"
    shape = np.shape(model.weights[weight])
    if node.op_type == "Conv":
        return Layer(node_key(node), node.op_type, weight, activation, True) if len(shape) >= 3 else "not a 2-D+ convolution"
    if len(shape) != 2:
        return f"weight '{weight}' has rank {len(shape)}, not 2"
    if node.op_type == "Gemm" and node.attr("transA", 0):
        return "Gemm with transA=1"
    transposed = node.op_type == "Gemm" and bool(node.attr("transB", 0))
    return Layer(node_key(node), node.op_type, weight, activation, transposed)


def find_layers(model: Model) -> tuple[list[Layer], dict[str, str]]:
    """The prunable layers in graph order, and why each other MatMul/Gemm/Conv is not one."""
    readers: dict[str, int] = {}
    for node in model.graph.nodes:
        for name in set(node.inputs):
            readers[name] = readers.get(name, 0) + 1
    layers, skipped = [], {}
    for node in model.graph.nodes:
        if node.op_type not in OPS:
            continue
        found = _layer(node, model, readers)
        if isinstance(found, Layer):
            layers.append(found)
        else:
            skipped[node_key(node)] = found
    return layers, skipped
