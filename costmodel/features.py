"""Graph features of a candidate: a task's description under its decisions, on a target.

Each sample becomes a small directed graph (nodes = the task's ops, edges = its
data flow) with node, edge and graph-level (global) feature vectors, computed
from the sample's description, candidate and target dicts only. Open
vocabularies (op types, algorithm names, unknown decision keys, ISA flags) are
hashed into fixed buckets with a stable hash, so new names never change the
feature width and never crash featurisation. Samples are batched into a
`GraphBatch` padded to power-of-two sizes, so a jitted network sees few shapes.
"""
from __future__ import annotations

import math
import zlib
from dataclasses import replace
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np

from autofuse.costmodel.base import AnalyticModel, Sample
from autofuse.costmodel.work import node_work, resolved_algorithm

FEATURE_VERSION = 3
OP_BUCKETS = 32
# The words algorithm choices are named with (`conv_packed`, `winograd_f4x4_3x3`, ...): one
# feature each, so that no two choices share a feature (hashed names did) and a new
# choice such as `foo_packed` still says what it is; words outside the list count in one more.
ALGORITHM_WORDS = ("default", "packed", "im2col", "winograd", "f2x2", "f4x4", "3x3", "weight", "nk", "unit",
                   "attention", "gelu", "erf", "tanh", "layernorm", "depthwise", "conv", "nhwc", "matmul", "gemm",
                   "blas", "sparse")
NODE_DECISION_BUCKETS = 8
GLOBAL_BUCKETS = 32
ISA_BUCKETS = 16
MAPPINGS = ("one_to_one", "one_to_many", "many_to_many", "reorganize", "shuffle")
DTYPES = ("float32", "float16", "bfloat16", "float64")
TARGET_KINDS = ("cpu", "gpu", "tpu")
MIN_NODES, MIN_EDGES, MIN_GRAPHS = 16, 16, 4

_ANALYTIC = AnalyticModel()


def bucket(token: str, buckets: int) -> int:
    """A stable hash of `token` into [0, buckets)."""
    return zlib.crc32(token.encode()) % buckets


def _log2(x: float) -> float:
    return math.log2(max(float(x), 0.0) + 1.0)


def _dims(shape: Sequence[Any], n: int = 4) -> list[float]:
    """The last `n` dimensions, right-aligned, log-scaled (unknown dims count as 1)."""
    dims = [d if isinstance(d, int) and d > 0 else 1 for d in (shape or [])][-n:]
    return [0.0] * (n - len(dims)) + [_log2(d) / 16 for d in dims]


def _numel(shape: Sequence[Any]) -> float:
    return float(math.prod(d if isinstance(d, int) and d > 0 else 1 for d in (shape or [])))


def _one_hot(value: str, vocabulary: Sequence[str]) -> list[float]:
    """One-hot over `vocabulary` plus a last slot for anything else."""
    vec = [0.0] * (len(vocabulary) + 1)
    vec[vocabulary.index(value) if value in vocabulary else len(vocabulary)] = 1.0
    return vec


def _attr_features(attrs: Mapping[str, Any]) -> list[float]:
    def ints(name: str) -> list[int]:
        value = attrs.get(name)
        if isinstance(value, (list, tuple)):
            return [v for v in value if isinstance(v, (int, float))]
        return [value] if isinstance(value, (int, float)) else []

    kernel = ints("kernel_shape")
    return [
        _log2(math.prod(kernel)) / 8 if kernel else 0.0,
        max(ints("strides") or [1]) / 4,
        max(ints("dilations") or [1]) / 4,
        sum(ints("pads")) / 8,
        _log2(max(ints("group") or [1])) / 10,
        float(bool(ints("transA") and ints("transA")[0])),
        float(bool(ints("transB") and ints("transB")[0])),
    ]


def _node_features(node: Mapping[str, Any], decisions: Mapping[str, Any]) -> list[float]:
    op = str(node.get("op", ""))
    op_vec = [0.0] * OP_BUCKETS
    op_vec[bucket(f"{node.get('domain', '')}::{op}", OP_BUCKETS)] = 1.0
    in_shapes = list(node.get("in_shapes") or [])
    ins = [_log2(_numel(s)) / 32 for s in in_shapes[:3]] + [0.0] * (3 - min(len(in_shapes), 3))
    first = _dims(in_shapes[0]) if in_shapes else [0.0] * 4
    second = _dims(in_shapes[1]) if len(in_shapes) > 1 else [0.0] * 4
    out_shape = node.get("out_shape") or []
    flops, moved = float(node.get("flops") or 0.0), float(node.get("bytes") or 0.0)
    algorithm = [0.0] * (len(ALGORITHM_WORDS) + 1)
    for word in str(decisions.get("algorithm", "default")).split("_"):
        algorithm[ALGORITHM_WORDS.index(word) if word in ALGORITHM_WORDS else -1] += 1.0
    other = [0.0] * NODE_DECISION_BUCKETS
    for name, value in decisions.items():
        if name != "algorithm":
            other[bucket(f"{name}={value}", NODE_DECISION_BUCKETS)] += 1.0
    return (
        op_vec
        + _one_hot(str(node.get("mapping", "")), MAPPINGS)
        + _one_hot(str(node.get("dtype", "")), DTYPES)
        + [len(out_shape) / 8, _log2(_numel(out_shape)) / 32] + _dims(out_shape)
        + ins + first + second
        + [math.log10(flops + 1) / 12, math.log10(moved + 1) / 10, math.log10(flops / max(moved, 1.0) + 1) / 3]
        + _attr_features(node.get("attrs") or {})
        + algorithm + [float("algorithm" in decisions)] + other
        + _work_features(node, str(decisions.get("algorithm", "default")))
    )


def _work_features(node: Mapping[str, Any], algorithm: str) -> list[float]:
    """The matrix products the node runs under its algorithm (`work.node_work`), log-scaled."""
    work = node_work(node, algorithm)
    if work is None:
        return [0.0] * 9
    flops = 2.0 * work.products * work.m * work.k * work.n
    return [1.0, _log2(work.products) / 16, _log2(work.m) / 16, _log2(work.k) / 16, _log2(work.n) / 16,
            math.log10(flops + 1) / 12, math.log10(work.scratch_bytes + 1) / 10,
            math.log10(work.weight_bytes + 1) / 10, work.tile / 4]


def _target_features(target: Mapping[str, Any]) -> list[float]:
    isa = [0.0] * ISA_BUCKETS
    flags = target.get("isa") or ()
    if isinstance(flags, str):
        flags = flags.replace(" ", ",").split(",")
    for flag in flags:
        if flag:
            isa[bucket(str(flag), ISA_BUCKETS)] = 1.0
    return _one_hot(str(target.get("kind", "")), TARGET_KINDS) + isa


def _split_decisions(candidate: Mapping[str, Any], n_nodes: int) -> tuple[
        list[dict[str, Any]], dict[tuple[int, int], str], dict[str, Any]]:
    """Per-node decisions, per-edge fuse choices and the rest (global or unrecognised keys)."""
    per_node: list[dict[str, Any]] = [{} for _ in range(n_nodes)]
    per_edge: dict[tuple[int, int], str] = {}
    rest: dict[str, Any] = {}
    for key, value in candidate.items():
        key = str(key)
        scope, _, name = key.partition("/")
        if scope.startswith("node:") and scope[5:].isdigit() and int(scope[5:]) < n_nodes and name:
            per_node[int(scope[5:])][name] = value
            continue
        if scope.startswith("edge:") and name == "fuse":
            producer, arrow, consumer = scope[5:].partition("->")
            if arrow and producer.isdigit() and consumer.isdigit():
                per_edge[(int(producer), int(consumer))] = str(value)
                continue
        rest[key] = value
    return per_node, per_edge, rest


def _resolve_algorithms(sample: Sample) -> Sample:
    """The sample with each algorithm decision named after the rule that runs (`work.resolved_algorithm`),
    so two names of one program read the same."""
    nodes = list(sample.description.get("nodes") or [])
    candidate = dict(sample.candidate)
    for i, node in enumerate(nodes):
        key = f"node:{i}/algorithm"
        if key in candidate:
            candidate[key] = resolved_algorithm(node, str(candidate[key]))
    return replace(sample, candidate=candidate)


class GraphArrays(NamedTuple):
    """One sample's graph: node, edge and global features with its edge list."""

    nodes: np.ndarray      # [n, NODE_FEATURES]
    edges: np.ndarray      # [e, EDGE_FEATURES]
    senders: np.ndarray    # [e] producer node index
    receivers: np.ndarray  # [e] consumer node index
    globals: np.ndarray    # [GLOBAL_FEATURES]


def featurize(sample: Sample) -> GraphArrays:
    """The sample's graph features (see the module docstring)."""
    sample = _resolve_algorithms(sample)
    description = sample.description
    raw_nodes = list(description.get("nodes") or [])
    per_node, per_edge, rest = _split_decisions(sample.candidate, len(raw_nodes))
    nodes = [_node_features(node, per_node[i]) for i, node in enumerate(raw_nodes)]
    senders, receivers, edges = [], [], []
    for pair in description.get("edges") or []:
        p, c = int(pair[0]), int(pair[1])
        if not (0 <= p < len(raw_nodes) and 0 <= c < len(raw_nodes)):
            continue
        choice = per_edge.get((p, c), "")
        out_shape = raw_nodes[p].get("out_shape") or []
        edges.append(_one_hot(choice, ("fuse", "split")) + [_log2(_numel(out_shape)) / 32])
        senders.append(p)
        receivers.append(c)
    decisions = [0.0] * GLOBAL_BUCKETS
    for key, value in rest.items():
        decisions[bucket(f"{key}={value}", GLOBAL_BUCKETS)] += 1.0
    splits = sum(1 for v in per_edge.values() if v == "split")
    total_flops = sum(float(n.get("flops") or 0.0) for n in raw_nodes)
    total_bytes = sum(float(n.get("bytes") or 0.0) for n in raw_nodes)
    analytic = _ANALYTIC.estimate_seconds(sample)
    glob = (
        _target_features(sample.target) + decisions
        + [len(raw_nodes) / 16, len(edges) / 16, splits / 8, splits / max(len(edges), 1),
           math.log10(total_flops + 1) / 12, math.log10(total_bytes + 1) / 10, -math.log10(analytic) / 8]
    )
    return GraphArrays(
        np.asarray(nodes, np.float32).reshape(len(nodes), NODE_FEATURES),
        np.asarray(edges, np.float32).reshape(len(edges), EDGE_FEATURES),
        np.asarray(senders, np.int32),
        np.asarray(receivers, np.int32),
        np.asarray(glob, np.float32),
    )


NODE_FEATURES = len(_node_features({}, {}))
EDGE_FEATURES = 4
GLOBAL_FEATURES = len(_target_features({})) + GLOBAL_BUCKETS + 7


class GraphBatch(NamedTuple):
    """Graphs batched into one padded graph (jraph's GraphsTuple, reduced to what the GNN uses).

    Padding nodes and edges belong to the last graph, which is always padding
    (`graph_mask` False); padding edges connect the last node to itself.
    """

    nodes: np.ndarray       # [N, NODE_FEATURES]
    edges: np.ndarray       # [E, EDGE_FEATURES]
    senders: np.ndarray     # [E]
    receivers: np.ndarray   # [E]
    node_graph: np.ndarray  # [N] graph index of each node
    globals: np.ndarray     # [G, GLOBAL_FEATURES]
    graph_mask: np.ndarray  # [G] True for real graphs


def pow2(n: int, minimum: int = 1) -> int:
    """The smallest power of two >= max(n, minimum)."""
    return max(minimum, 1 << max(n - 1, 0).bit_length())


def batch(graphs: Sequence[GraphArrays], *, min_nodes: int = MIN_NODES, min_edges: int = MIN_EDGES,
          min_graphs: int = MIN_GRAPHS) -> GraphBatch:
    """Concatenates graphs into one `GraphBatch` padded to power-of-two node, edge and graph
    counts (at least the given minimums, so a training loop can fix its shapes)."""
    n_nodes = sum(len(g.nodes) for g in graphs)
    n_edges = sum(len(g.senders) for g in graphs)
    N, E = pow2(n_nodes + 1, min_nodes), pow2(n_edges, min_edges)
    G = pow2(len(graphs) + 1, min_graphs)
    nodes = np.zeros((N, NODE_FEATURES), np.float32)
    edges = np.zeros((E, EDGE_FEATURES), np.float32)
    senders = np.full(E, N - 1, np.int32)
    receivers = np.full(E, N - 1, np.int32)
    node_graph = np.full(N, G - 1, np.int32)
    globals_ = np.zeros((G, GLOBAL_FEATURES), np.float32)
    graph_mask = np.zeros(G, bool)
    n = e = 0
    for i, g in enumerate(graphs):
        k, m = len(g.nodes), len(g.senders)
        nodes[n:n + k] = g.nodes
        edges[e:e + m] = g.edges
        senders[e:e + m] = g.senders + n
        receivers[e:e + m] = g.receivers + n
        node_graph[n:n + k] = i
        globals_[i] = g.globals
        graph_mask[i] = True
        n, e = n + k, e + m
    return GraphBatch(nodes, edges, senders, receivers, node_graph, globals_, graph_mask)
