"""DNNFusion's extended computational graph: each node with its mapping type,
whether its intermediate result can be removed by fusion, its algebraic
properties, and its cost features (FLOPs, bytes, output size)."""
from __future__ import annotations

from dataclasses import dataclass
from math import prod

import numpy as np

from autofuse.ir import Graph, Node, TensorType
from autofuse.lowering import spec_for
from autofuse.ops.registry import Ctx, Mapping

ASSOCIATIVE = "associative"
COMMUTATIVE = "commutative"
DISTRIBUTIVE = "distributive"

# Properties the rewrite engine may exploit, per op type.
ALGEBRAIC_PROPERTIES: dict[str, frozenset[str]] = {
    "Add": frozenset({ASSOCIATIVE, COMMUTATIVE}),
    "Sum": frozenset({ASSOCIATIVE, COMMUTATIVE}),
    "Mul": frozenset({ASSOCIATIVE, COMMUTATIVE, DISTRIBUTIVE}),
    "Max": frozenset({ASSOCIATIVE, COMMUTATIVE}),
    "Min": frozenset({ASSOCIATIVE, COMMUTATIVE}),
    "And": frozenset({ASSOCIATIVE, COMMUTATIVE}),
    "Or": frozenset({ASSOCIATIVE, COMMUTATIVE}),
    "Xor": frozenset({ASSOCIATIVE, COMMUTATIVE}),
    "MatMul": frozenset({ASSOCIATIVE, DISTRIBUTIVE}),
    "Gemm": frozenset({DISTRIBUTIVE}),
    "Conv": frozenset({DISTRIBUTIVE}),
    "Div": frozenset({DISTRIBUTIVE}),  # (a + b) / c = a / c + b / c
    "Sub": frozenset(),
    "ReduceSum": frozenset({DISTRIBUTIVE}),
    "ReduceMean": frozenset({DISTRIBUTIVE}),
}


@dataclass(frozen=True)
class NodeInfo:
    """What the fusion planner and the rewrites know about one node."""

    index: int
    node: Node
    mapping: Mapping
    removable: bool
    properties: frozenset[str]
    out_elements: int
    flops: float
    bytes: float


@dataclass(frozen=True)
class ExtendedGraph:
    """A graph with one NodeInfo per node and its data-flow edges by index."""

    graph: Graph
    infos: tuple[NodeInfo, ...]
    successors: tuple[tuple[int, ...], ...]
    predecessors: tuple[tuple[int, ...], ...]


def _elements(t) -> int:
    if isinstance(t, TensorType) and t.is_static:
        return int(prod(t.shape))
    return 0


def _itemsize(t) -> int:
    if isinstance(t, TensorType):
        try:
            return np.dtype(t.dtype).itemsize
        except TypeError:
            return 4
    return 4


def node_flops(node: Node, graph: Graph) -> float:
    """Multiply-adds count twice; elementwise work counts one per output element.

    An op registered with its own cost function (autofuse's internal ops) is
    counted by it."""
    types = [graph.type_of(i) for i in node.inputs]
    out = graph.type_of(node.outputs[0]) if node.outputs else None
    out_elems = _elements(out)
    spec = spec_for(node, graph)
    if spec.flops is not None:
        out_types = [graph.type_of(o) for o in node.outputs]
        return float(spec.flops(Ctx(node, graph.opset_of(node.domain), types, out_types), types, out_types))
    if node.op_type == "ConvNHWC" and len(types) > 1:
        w = types[1]  # HWIO: every output element reads kh x kw x (input channels per group) weights
        if isinstance(w, TensorType) and w.is_static:
            return 2.0 * out_elems * prod(w.shape[:3])
    if node.op_type in ("Conv", "ConvTranspose", "ConvInteger", "QLinearConv") and len(types) > 1:
        w = types[1] if node.op_type != "QLinearConv" else types[3]
        if isinstance(w, TensorType) and w.is_static:
            kernel = prod(w.shape[1:])
            if node.op_type == "ConvTranspose":
                return 2.0 * _elements(types[0]) * prod(w.shape[1:])
            return 2.0 * out_elems * kernel
    if node.op_type in ("MatMul", "Gemm", "MatMulInteger") and len(types) > 1:
        a = types[0]
        if isinstance(a, TensorType) and a.is_static and a.shape:
            k = a.shape[0] if node.op_type == "Gemm" and node.attr("transA", 0) else a.shape[-1]
            return 2.0 * out_elems * k
    if node.op_type in ("MaxPool", "AveragePool", "LpPool"):
        return float(out_elems * prod(node.attr("kernel_shape", (1,))))
    if node.op_type.startswith("Reduce") or node.op_type.startswith("Global"):
        return float(sum(_elements(t) for t in types[:1]))
    return float(out_elems)


def node_bytes(node: Node, graph: Graph) -> float:
    """Bytes read plus bytes written, assuming nothing stays in cache."""
    values = [v for v in node.inputs if v] + [v for v in node.outputs if v]
    return float(sum(_elements(graph.type_of(v)) * _itemsize(graph.type_of(v)) for v in values))


def extend(graph: Graph) -> ExtendedGraph:
    """Builds the extended computational graph of a settled graph."""
    producer = {out: i for i, n in enumerate(graph.nodes) for out in n.outputs if out}
    consumers: dict[str, list[int]] = {}
    for i, n in enumerate(graph.nodes):
        for value in n.inputs:
            if value in producer:
                consumers.setdefault(value, []).append(i)
    outputs = set(graph.outputs)
    infos, succ, pred = [], [], []
    for i, node in enumerate(graph.nodes):
        spec = spec_for(node, graph)
        uses = [c for out in node.outputs for c in consumers.get(out, [])]
        removable = not any(o in outputs for o in node.outputs) and len(set(uses)) == 1
        infos.append(NodeInfo(
            index=i,
            node=node,
            mapping=spec.mapping,
            removable=removable,
            properties=ALGEBRAIC_PROPERTIES.get(node.op_type, frozenset()),
            out_elements=sum(_elements(graph.type_of(o)) for o in node.outputs if o),
            flops=node_flops(node, graph),
            bytes=node_bytes(node, graph),
        ))
        succ.append(tuple(sorted(set(uses))))
        pred.append(tuple(sorted({producer[v] for v in node.inputs if v in producer})))
    return ExtendedGraph(graph, tuple(infos), tuple(succ), tuple(pred))
