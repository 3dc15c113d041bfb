"""Tasks: the subgraphs the search tunes, each keyed structurally (as in Ansor).

A task is one fused group of DNNFusion's plan that holds a heavy op (a
convolution or matrix product) - the place where a lowering decision changes
the speed. Its subgraph is cut out as a standalone `Model` (its runtime inputs
are the values it reads from outside; the weights it reads come along), so it
can be compiled and measured alone. Identical groups (same ops, attributes,
shapes, dtypes; weights excluded) share one workload key and are tuned once;
`occurrences` lists where each one appears in the model.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from autofuse.fusion.extended import ExtendedGraph, extend
from autofuse.fusion.planner import FusionPlan, plan_fusion
from autofuse.ir import Graph, Model, Node, TensorType

# Ops whose lowering the search chooses (algorithm, layout of weights).
ANCHOR_OPS = frozenset({"Conv", "ConvNHWC", "MatMul", "Gemm"})


@dataclass(frozen=True)
class Occurrence:
    """Where a task appears in the model: the output value of each task node, in task order."""

    node_outputs: tuple[str, ...]


@dataclass(frozen=True)
class Task:
    """A workload: its standalone subgraph model, its key, and where it occurs."""

    key: str
    model: Model
    occurrences: tuple[Occurrence, ...]
    flops: float
    bytes: float

    @property
    def nodes(self) -> tuple[Node, ...]:
        return self.model.graph.nodes

    @property
    def weight(self) -> int:
        """How many times the task runs per model inference."""
        return len(self.occurrences)

    def describe(self) -> dict[str, Any]:
        """A JSON-able description of the subgraph, stored with the workload for the cost model."""
        return describe_graph(self.model.graph)


def _static_shape(graph: Graph, value: str) -> list[int]:
    t = graph.type_of(value)
    if isinstance(t, TensorType) and t.shape is not None:
        return [d if isinstance(d, int) else -1 for d in t.shape]
    return []


def _json_attr(value: Any) -> Any:
    if isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (tuple, list)) and all(isinstance(v, (int, float, str)) for v in value):
        return list(value)
    return None


def describe_graph(graph: Graph) -> dict[str, Any]:
    """Nodes (op, mapping type, shapes, dtype, FLOPs, bytes, plain attributes) and edges.

    The format is the cost model's input: node `i` of `nodes` is node `i` of
    the graph; `edges` are [producer, consumer] index pairs.
    """
    eg = extend(graph)
    nodes = []
    for info in eg.infos:
        node = info.node
        out_type = graph.type_of(node.outputs[0]) if node.outputs else None
        attrs = {k: _json_attr(v) for k, v in node.attrs}
        nodes.append({
            "op": node.op_type,
            "domain": node.domain,
            "mapping": info.mapping.name.lower(),
            "in_shapes": [_static_shape(graph, v) for v in node.inputs if v],
            "out_shape": _static_shape(graph, node.outputs[0]) if node.outputs else [],
            "dtype": out_type.dtype if isinstance(out_type, TensorType) else "",
            "flops": info.flops,
            "bytes": info.bytes,
            "attrs": {k: v for k, v in attrs.items() if v is not None},
        })
    edges = [[p, c] for c, preds in enumerate(eg.predecessors) for p in preds]
    return {
        "nodes": nodes,
        "edges": edges,
        "inputs": [_static_shape(graph, v) for v in graph.inputs],
        "outputs": [_static_shape(graph, v) for v in graph.outputs],
    }


def subgraph_model(model: Model, members: tuple[int, ...], name: str = "task") -> Model:
    """Cuts the nodes `members` (indices into the model's graph) out as a standalone model.

    Its inputs are the values it reads that another node computes or the model
    takes as input; weights and constants it reads come along; its outputs are
    the values read outside it (or model outputs). Values are renamed by first
    appearance, so identical subgraphs cut from different places are equal.
    """
    graph = model.graph
    nodes = [graph.nodes[i] for i in members]
    produced = {o for n in nodes for o in n.outputs if o}
    read = [v for n in nodes for v in n.inputs if v]
    # Float tensors (biases, scales) do not change the work, only the numbers:
    # they travel as weights, so blocks that differ only in them share a key.
    constants = {k: c for k, c in graph.constants if not (c.array.dtype.kind == "f" and c.array.size > 1)}
    all_weights = dict(model.weights)
    all_weights.update({k: c.array for k, c in graph.constants if k not in constants})
    inputs = []
    for v in read:
        if v not in produced and v not in constants and v not in all_weights and v not in inputs:
            inputs.append(v)
    member_set = set(members)
    outside_reads = {v for i, n in enumerate(graph.nodes) if i not in member_set for v in n.inputs}
    outside_reads |= set(graph.outputs)
    outputs = [o for n in nodes for o in n.outputs if o and o in outside_reads]
    used = set(read) | set(outputs)
    ordered = tuple(nodes)  # members index a topologically ordered graph
    canon = _canonical_names(inputs, ordered, constants, all_weights)
    rename = lambda v: canon.get(v, v)  # noqa: E731
    sub = Graph(
        nodes=tuple(n.replace(inputs=tuple(rename(v) for v in n.inputs),
                              outputs=tuple(rename(v) for v in n.outputs)) for n in ordered),
        inputs=tuple(rename(v) for v in inputs),
        outputs=tuple(rename(v) for v in outputs),
        types=tuple(sorted((rename(k), t) for k, t in graph.types if k in used or k in produced)),
        constants=tuple(sorted((rename(k), c) for k, c in constants.items() if k in used)),
        weights=tuple(sorted(rename(k) for k in all_weights if k in used)),
        opsets=graph.opsets,
        name=name,
    )
    weights = {rename(k): all_weights[k] for k in all_weights if k in used}
    return Model(sub, weights, f"{model.source}#{name}")


def _canonical_names(inputs: list[str], nodes: tuple[Node, ...], constants: dict,
                     weights: dict) -> dict[str, str]:
    """Names by first appearance (x: inputs, w: weights, c: constants, t: computed),
    so identical subgraphs cut from different places are identical graphs."""
    names: dict[str, str] = {v: f"x{i}" for i, v in enumerate(inputs)}
    counts = {"w": 0, "c": 0, "t": 0}
    for node in nodes:
        for v in list(node.inputs) + list(node.outputs):
            if not v or v in names:
                continue
            kind = "w" if v in weights else "c" if v in constants else "t"
            names[v] = f"{kind}{counts[kind]}"
            counts[kind] += 1
    return names


def _has_anchor(eg: ExtendedGraph, members: tuple[int, ...]) -> bool:
    return any(eg.infos[i].node.op_type in ANCHOR_OPS for i in members)


def extract_tasks(model: Model, plan: FusionPlan | None = None) -> list[Task]:
    """The model's tasks, one per distinct workload, heaviest (FLOPs x occurrences) first."""
    eg = extend(model.graph)
    plan = plan or plan_fusion(eg)
    by_key: dict[str, tuple[Model, list[Occurrence], float, float]] = {}
    for members in plan.groups:
        if not _has_anchor(eg, members):
            continue
        sub = subgraph_model(model, members)
        key = sub.graph.structural_key()
        occurrence = Occurrence(tuple(model.graph.nodes[i].outputs[0] for i in members))
        if key in by_key:
            by_key[key][1].append(occurrence)
            continue
        flops = sum(eg.infos[i].flops for i in members)
        moved = sum(eg.infos[i].bytes for i in members)
        by_key[key] = (sub, [occurrence], flops, moved)
    tasks = [Task(key, sub, tuple(occ), flops, moved) for key, (sub, occ, flops, moved) in by_key.items()]
    return sorted(tasks, key=lambda t: -t.flops * t.weight)


def random_inputs(model: Model, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded inputs for a task model (floats in [-1, 1), integers small)."""
    rng = np.random.default_rng(seed)
    inputs = {}
    for name in model.graph.inputs:
        t = model.graph.type_of(name)
        dtype = np.dtype(t.dtype)
        shape = tuple(t.shape)
        if dtype.kind == "f":
            inputs[name] = rng.uniform(-1, 1, shape).astype(dtype)
        elif dtype.kind == "b":
            inputs[name] = rng.integers(0, 2, shape).astype(dtype)
        else:
            inputs[name] = rng.integers(0, 4, shape).astype(dtype)
    return inputs


