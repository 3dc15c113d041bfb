"""The graph IR: immutable, hashable, and free of weight values.

A `Graph` is a tuple of `Node`s in topological order plus the types of its values.
Small constants (shapes, axes, scalars) are part of the structure, because they
decide what a graph computes; large tensors are *weights*, held beside the graph
in `Model.weights` and passed to the compiled executable as arguments, so the
structural key of a graph never depends on weight values.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Mapping

import numpy as np

# Constants at or below this many elements are structure; larger ones are weights.
SMALL_CONSTANT_ELEMENTS = 64


@dataclass(frozen=True, eq=False)
class Const:
    """A hashable wrapper around a numpy array (hash and equality by value)."""

    array: np.ndarray

    def __post_init__(self) -> None:
        array = np.asarray(self.array)
        array.setflags(write=False)
        object.__setattr__(self, "array", array)

    def _digest(self) -> str:
        a = self.array
        payload = repr(a.tolist()).encode() if a.dtype == object else np.ascontiguousarray(a).tobytes()
        return hashlib.sha1(f"{a.dtype}{a.shape}".encode() + payload).hexdigest()

    def __hash__(self) -> int:
        return hash(self._digest())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Const) and self._digest() == other._digest()

    def __repr__(self) -> str:
        a = self.array
        if a.size <= 8:
            return f"Const({a.tolist()!r}, {a.dtype})"
        return f"Const(<{a.dtype} {list(a.shape)}>)"


@dataclass(frozen=True)
class TensorType:
    """Element dtype (numpy name) and shape; a dim is an int, a symbol name, or None."""

    dtype: str
    shape: tuple[int | str | None, ...] | None = None

    @property
    def is_static(self) -> bool:
        return self.shape is not None and all(isinstance(d, int) for d in self.shape)


@dataclass(frozen=True)
class SequenceType:
    """An ONNX sequence of tensors (elem is the element type, if known)."""

    elem: TensorType | None = None


@dataclass(frozen=True)
class OptionalType:
    """An ONNX optional value."""

    elem: "ValueType | None" = None


ValueType = TensorType | SequenceType | OptionalType


@dataclass(frozen=True)
class Node:
    """One operator application. Attributes are a sorted tuple of (name, value)."""

    op_type: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: tuple[tuple[str, Any], ...] = ()
    domain: str = ""
    name: str = ""

    def attr(self, name: str, default: Any = None) -> Any:
        for key, value in self.attrs:
            if key == name:
                return value
        return default

    @property
    def label(self) -> str:
        return f"node '{self.name or self.outputs[0] if self.outputs else '?'}' ({self.op_type})"

    def replace(self, **changes: Any) -> "Node":
        return replace(self, **changes)


@dataclass(frozen=True)
class Graph:
    """A computation: nodes in topological order, typed values, small constants.

    `inputs` are the runtime inputs, `weights` the names of large constant tensors
    supplied from `Model.weights`, and `constants` the small constants that are
    part of the structure. `opsets` maps each domain to its opset version.
    """

    nodes: tuple[Node, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    types: tuple[tuple[str, ValueType], ...] = ()
    constants: tuple[tuple[str, Const], ...] = ()
    weights: tuple[str, ...] = ()
    opsets: tuple[tuple[str, int], ...] = (("", 21),)
    name: str = "graph"

    @property
    def opset(self) -> int:
        return dict(self.opsets).get("", 21)

    def opset_of(self, domain: str) -> int:
        d = dict(self.opsets)
        return d.get(domain, d.get("", 21))

    def type_of(self, value: str) -> ValueType | None:
        return self.type_map.get(value)

    @property
    def type_map(self) -> dict[str, ValueType]:
        cached = self.__dict__.get("_type_map")
        if cached is None:
            cached = dict(self.types)
            object.__setattr__(self, "_type_map", cached)
        return cached

    @property
    def constant_map(self) -> dict[str, np.ndarray]:
        return {k: c.array for k, c in self.constants}

    def producers(self) -> dict[str, Node]:
        return {out: n for n in self.nodes for out in n.outputs if out}

    def consumers(self) -> dict[str, list[Node]]:
        result: dict[str, list[Node]] = {}
        for n in self.nodes:
            for i in n.inputs:
                if i:
                    result.setdefault(i, []).append(n)
        return result

    def replace(self, **changes: Any) -> "Graph":
        return replace(self, **changes)

    def structural_key(self) -> str:
        """A stable hash of ops, attributes, shapes, dtypes and small constants."""
        return hashlib.sha256(_canonical(self).encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Model:
    """A graph together with its weights and where it came from."""

    graph: Graph
    weights: Mapping[str, np.ndarray] = field(default_factory=dict, hash=False, compare=False)
    source: str = ""

    @property
    def input_types(self) -> dict[str, ValueType | None]:
        return {name: self.graph.type_of(name) for name in self.graph.inputs}


def _canonical(graph: Graph) -> str:
    """Renames values by position so that names do not change the key."""
    names: dict[str, str] = {}

    def rename(value: str) -> str:
        if not value:
            return ""
        if value not in names:
            names[value] = f"v{len(names)}"
        return names[value]

    types = graph.type_map
    consts = dict(graph.constants)
    weight_set = set(graph.weights)
    parts = [f"opsets={sorted(graph.opsets)}"]
    for value in graph.inputs:
        parts.append(f"in {rename(value)}:{types.get(value)}")
    for value in sorted(weight_set):
        parts.append(f"w {rename(value)}:{types.get(value)}")
    for node in graph.nodes:
        ins = []
        for value in node.inputs:
            if value in consts and value not in names:
                ins.append(f"const{consts[value]._digest()}")
            else:
                ins.append(rename(value))
        outs = [f"{rename(o)}:{types.get(o)}" for o in node.outputs]
        attrs = [(k, _attr_key(v)) for k, v in node.attrs]
        parts.append(f"{node.domain}::{node.op_type}({','.join(ins)})->{','.join(outs)} {attrs}")
    parts.append(f"out {[rename(o) for o in graph.outputs]}")
    return "\n".join(parts)


def _attr_key(value: Any) -> Any:
    if isinstance(value, Graph):
        return _canonical(value)
    if isinstance(value, Const):
        return value._digest()
    if isinstance(value, tuple):
        return tuple(_attr_key(v) for v in value)
    return value


def topological_order(nodes: Iterable[Node], available: Iterable[str]) -> tuple[Node, ...]:
    """Nodes sorted so that each comes after the producers of its inputs."""
    ready = set(available)
    pending = list(nodes)
    ordered: list[Node] = []
    while pending:
        progress = False
        rest = []
        for node in pending:
            if all((not i) or i in ready for i in node.inputs):
                ordered.append(node)
                ready.update(node.outputs)
                progress = True
            else:
                rest.append(node)
        if not progress:
            missing = sorted({i for n in rest for i in n.inputs if i and i not in ready})
            raise ValueError(f"graph has a cycle or undefined values: {missing[:5]}")
        pending = rest
    return tuple(ordered)


def subgraph_free_values(nodes: Iterable[Node]) -> set[str]:
    """Outer-scope names read by the subgraph attributes of these nodes."""
    free: set[str] = set()
    for node in nodes:
        for _, value in node.attrs:
            for sub in value if isinstance(value, tuple) else (value,):
                if isinstance(sub, Graph):
                    free |= free_values(sub)
    return free


def free_values(graph: Graph) -> set[str]:
    """Names a (sub)graph reads from its enclosing scope."""
    defined = set(graph.inputs) | set(graph.weights) | {k for k, _ in graph.constants}
    free: set[str] = set()
    for node in graph.nodes:
        free |= {i for i in node.inputs if i and i not in defined}
        free |= subgraph_free_values([node]) - defined
        defined.update(node.outputs)
    return free | (set(graph.outputs) - defined)


def live_nodes(nodes: Iterable[Node], outputs: Iterable[str]) -> list[Node]:
    """Drops nodes whose outputs nothing uses (dead code), keeping the order."""
    needed = set(outputs)
    live: list[Node] = []
    for node in reversed(list(nodes)):
        if any(o in needed for o in node.outputs if o):
            live.append(node)
            needed.update(i for i in node.inputs if i)
            needed.update(subgraph_free_values([node]))
    return list(reversed(live))
