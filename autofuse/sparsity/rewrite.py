"""Pruned MatMul/Gemm layers become autofuse SparseMatMul ops over compressed weights.

`to_sparse_ops` takes the result of `prune_model` (masked weights in dense
storage) and swaps each pruned MatMul or Gemm for `SparseMatMul(x, values,
offsets, bias?)` in domain "autofuse", with the weight compressed once here.
Gemm's alpha is folded into the values and beta into a constant bias. Conv
layers, and Gemms whose C is a runtime value scaled by beta != 1, keep their
masked dense weights (listed in `dense`, with the reason).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from autofuse.ir import Model, Node, TensorType
from autofuse.settle import settle
from autofuse.sparsity.compressed import compress
from autofuse.sparsity.prune import PruneResult
from autofuse.sparsity.targets import node_key

DOMAIN = "autofuse"


class SparseModel(NamedTuple):
    """The model with SparseMatMul ops, and the pruned layers left dense (node -> reason)."""

    model: Model
    dense: dict[str, str]


def _bias(node: Node, weights: dict, constants: dict) -> tuple[str | None, np.ndarray | None] | str:
    """(bias value name, or a new bias array) for a Gemm's C, or why it cannot be carried."""
    if len(node.inputs) < 3 or not node.inputs[2]:
        return None, None
    c = node.inputs[2]
    beta = float(node.attr("beta", 1.0))
    if beta == 1.0:
        return c, None
    known = weights.get(c, constants.get(c))
    if known is None:
        return f"Gemm's C is a runtime value scaled by beta={beta}"
    return None, np.asarray(known) * np.asarray(beta, np.asarray(known).dtype)


def to_sparse_ops(result: PruneResult) -> SparseModel:
    """The pruned model with every pruned MatMul/Gemm as a SparseMatMul over compressed weights."""
    model = result.model
    graph = model.graph
    weights = dict(model.weights)
    constants = graph.constant_map
    types = dict(graph.types)
    replaced: dict[str, Node] = {}
    dense: dict[str, str] = {}
    for node in graph.nodes:
        key = node_key(node)
        layer = result.layers.get(key)
        if layer is None:
            continue
        if layer.op_type == "Conv":
            dense[key] = "Conv layers keep masked dense weights"
            continue
        bias = _bias(node, weights, constants) if node.op_type == "Gemm" else (None, None)
        if isinstance(bias, str):
            dense[key] = bias
            continue
        bias_name, bias_array = bias
        rows = layer.rows(np.asarray(weights[layer.weight], np.float32))
        if node.op_type == "Gemm":
            rows = rows * np.float32(node.attr("alpha", 1.0))
        packed = compress(rows, result.masks[key], result.patterns[key])
        names = {"values": f"{layer.weight}__values", "offsets": f"{layer.weight}__offsets"}
        new = {names["values"]: packed.values, names["offsets"]: packed.offsets}
        if bias_array is not None:
            bias_name = f"{layer.weight}__bias"
            new[bias_name] = bias_array
        for name, array in new.items():
            weights[name] = array
            types[name] = TensorType(str(array.dtype), tuple(int(d) for d in array.shape))
        inputs = (layer.activation, names["values"], names["offsets"]) + ((bias_name,) if bias_name else ())
        replaced[key] = Node("SparseMatMul", inputs, node.outputs,
                             (("outputs", packed.outputs), ("window", packed.window)), DOMAIN, node.name)
    nodes = tuple(replaced.get(node_key(n), n) for n in graph.nodes)
    used = {i for n in nodes for i in n.inputs if i}
    weights = {k: v for k, v in weights.items() if k in used}
    new_graph = graph.replace(nodes=nodes, weights=tuple(sorted(weights)), types=tuple(sorted(types.items())))
    return SparseModel(settle(Model(new_graph, weights, model.source)), dense)
