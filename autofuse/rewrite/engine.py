"""The rewrite engine: rules as data, rule sets combined with `+`, a fixed-point driver.

A `Rule` is pattern -> check -> rewrite. `match` looks at one root node and
returns the matched nodes (root last) or None; `check` returns None to accept or
a reason to decline; `rewrite` returns a `Replacement` for the matched nodes.
The driver applies rules until none fires (or the budget runs out), re-settling
the model after every pass so that new values are typed again.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, NamedTuple, Sequence

import numpy as np

from autofuse.errors import AutofuseError
from autofuse.ir import (
    SMALL_CONSTANT_ELEMENTS,
    Const,
    Model,
    Node,
    TensorType,
    live_nodes,
    subgraph_free_values,
    topological_order,
)
from autofuse.settle import settle

Match = tuple[Node, ...]
ANY_OP = "*"


class RewriteError(AutofuseError):
    """A rule produced a graph that reads an undefined value (a bug in the rule)."""


@dataclass(frozen=True)
class Replacement:
    """What replaces the matched nodes: new nodes, new tensors, renamed values.

    `tensors` become weights or constants by size (as in `settle`); `aliases`
    make every reader of the key read the value instead.
    """

    nodes: tuple[Node, ...] = ()
    tensors: Mapping[str, np.ndarray] = field(default_factory=dict)
    aliases: Mapping[str, str] = field(default_factory=dict)


class View:
    """A read-only look at a model for rules: producers, consumers, tensors, types."""

    def __init__(self, model: Model) -> None:
        self.model = model
        self.graph = model.graph
        self.producers = self.graph.producers()
        self.consumer_map = self.graph.consumers()
        self._constants = self.graph.constant_map
        self._outputs = set(self.graph.outputs)
        self._free = subgraph_free_values(self.graph.nodes)
        self._names = set(self.producers) | set(self._constants) | set(model.weights) | set(self.graph.inputs)
        self._issued = 0

    def tensor(self, value: str) -> np.ndarray | None:
        """The array of a weight or constant, None for computed values."""
        if value in self.model.weights:
            return np.asarray(self.model.weights[value])
        return self._constants.get(value)

    def producer(self, value: str, op_type: str | None = None) -> Node | None:
        node = self.producers.get(value)
        return node if node is not None and (op_type is None or node.op_type == op_type) else None

    def consumers(self, value: str) -> list[Node]:
        return self.consumer_map.get(value, [])

    def is_output(self, value: str) -> bool:
        return value in self._outputs

    def read_by_subgraph(self, value: str) -> bool:
        return value in self._free

    def type(self, value: str) -> TensorType | None:
        t = self.graph.type_of(value)
        return t if isinstance(t, TensorType) and t.is_static else None

    def shape(self, value: str) -> tuple[int, ...] | None:
        t = self.type(value)
        return tuple(t.shape) if t is not None else None

    def fresh(self, base: str) -> str:
        """A value name not used in the graph yet."""
        while True:
            self._issued += 1
            name = f"{base}__rw{self._issued}"
            if name not in self._names:
                self._names.add(name)
                return name

    def only_feeds(self, node: Node, consumer: Node) -> str | None:
        """None when every output of `node` is read by `consumer` alone, else why not."""
        for out in node.outputs:
            if not out:
                continue
            if self.is_output(out):
                return f"{node.op_type} output '{out}' is also a graph output"
            if self.read_by_subgraph(out):
                return f"{node.op_type} output '{out}' is read by a subgraph"
            if any(c is not consumer for c in self.consumers(out)):
                return f"{node.op_type} output '{out}' has another consumer"
        return None


MatchFn = Callable[[Node, View], Match | None]
CheckFn = Callable[[Match, View], str | None]
RewriteFn = Callable[[Match, View], Replacement]


@dataclass(frozen=True)
class Rule:
    """One rewrite: root op types ("*" for any), match, check (None or a reason), rewrite."""

    name: str
    family: str
    op_types: frozenset[str]
    match: MatchFn
    check: CheckFn
    rewrite: RewriteFn

    def __repr__(self) -> str:
        return f"Rule({self.family}/{self.name})"


@dataclass(frozen=True)
class RuleSet:
    """A named, ordered collection of rules; `a + b` concatenates."""

    name: str
    rules: tuple[Rule, ...]

    def __add__(self, other: "RuleSet") -> "RuleSet":
        return RuleSet(f"{self.name}+{other.name}", self.rules + other.rules)

    def __iter__(self):
        return iter(self.rules)

    def __len__(self) -> int:
        return len(self.rules)


# Decides, per match, whether a rule may fire there (the search's per-op choices).
WhereFn = Callable[[Rule, Match], bool]


class RewriteResult(NamedTuple):
    """The rewritten (settled) model, fires per rule, and final declines per rule and reason."""

    model: Model
    fired: dict[str, int]
    declined: dict[str, dict[str, int]]


def rewrite(model: Model, rule_sets: RuleSet | Sequence[RuleSet], *, budget: int = 100_000,
            max_passes: int = 50, where: WhereFn | None = None) -> RewriteResult:
    """Applies rules to a fixed point (at most `budget` fires); the result is settled.

    A sequence of rule sets is a pipeline: each set runs to its own fixed point,
    in order (combine sets with `+` to let their rules compete in one). `where`,
    if given, lets a rule fire only at the matches it accepts.
    """
    steps = [rule_sets] if isinstance(rule_sets, RuleSet) else list(rule_sets)
    model = settle(model)
    fired: Counter[str] = Counter()
    declined: dict[str, dict[str, int]] = {}
    for step in steps:
        model, step_declined = _fixed_point(model, step, fired, budget, max_passes, where)
        declined.update(step_declined)
    return RewriteResult(model, dict(fired), declined)


def _fixed_point(model: Model, rule_set: RuleSet, fired: Counter, budget: int,
                 max_passes: int, where: WhereFn | None = None) -> tuple[Model, dict[str, dict[str, int]]]:
    by_op: dict[str, list[Rule]] = {}
    for rule in rule_set:
        for op in rule.op_types:
            by_op.setdefault(op, []).append(rule)
    declined: dict[str, Counter] = {}
    for _ in range(max_passes):
        declined = {}
        model, changed = _one_pass(model, by_op, fired, declined, budget, where)
        if not changed:
            break
        model = settle(model)
        if sum(fired.values()) >= budget:
            break
    return model, {k: dict(v) for k, v in declined.items()}


def _one_pass(model: Model, by_op: Mapping[str, list[Rule]], fired: Counter,
              declined: dict[str, Counter], budget: int,
              where: WhereFn | None = None) -> tuple[Model, bool]:
    """One sweep over the nodes; a fired rule's replacement is looked at again."""
    changed = False
    view = View(model)
    index = 0
    while index < len(view.graph.nodes):
        node = view.graph.nodes[index]
        applied = False
        for rule in by_op.get(node.op_type, []) + by_op.get(ANY_OP, []):
            if sum(fired.values()) >= budget:
                return view.model, changed
            match = rule.match(node, view)
            if match is None or (where is not None and not where(rule, match)):
                continue
            reason = rule.check(match, view)
            if reason is not None:
                declined.setdefault(rule.name, Counter())[reason] += 1
                continue
            view = View(apply(view.model, match, rule.rewrite(match, view)))
            fired[rule.name] += 1
            changed = applied = True
            break
        if not applied:
            index += 1
    return view.model, changed


def apply(model: Model, match: Match, replacement: Replacement) -> Model:
    """Removes the matched nodes, inserts the replacement where the root was."""
    graph = model.graph
    matched = {id(n) for n in match}
    root = max(i for i, n in enumerate(graph.nodes) if id(n) in matched)
    nodes = [n for n in graph.nodes[:root] if id(n) not in matched]
    nodes += list(replacement.nodes)
    nodes += [n for n in graph.nodes[root + 1:] if id(n) not in matched]
    nodes = [_renamed(n, replacement.aliases) for n in nodes]
    outputs = tuple(replacement.aliases.get(o, o) for o in graph.outputs)
    if outputs != graph.outputs:
        raise RewriteError(f"a rewrite renamed graph outputs {graph.outputs} -> {outputs}")
    weights = dict(model.weights)
    constants = dict(graph.constants)
    types = dict(graph.types)
    for name, array in replacement.tensors.items():
        array = np.asarray(array)
        if array.size > SMALL_CONSTANT_ELEMENTS and array.dtype.kind == "f":
            weights[name] = array
        else:
            constants[name] = Const(array)
        types[name] = TensorType(str(array.dtype), tuple(int(d) for d in array.shape))
    nodes = live_nodes(nodes, graph.outputs)
    used = {i for n in nodes for i in n.inputs if i} | set(graph.outputs) | subgraph_free_values(nodes)
    weights = {k: v for k, v in weights.items() if k in used}
    constants = {k: v for k, v in constants.items() if k in used}
    defined = set(graph.inputs) | set(weights) | set(constants) | {o for n in nodes for o in n.outputs}
    try:
        _check_defined(nodes, graph.outputs, defined)
    except RewriteError:
        # A replacement of matches spread over the graph (siblings merged into one node)
        # sits where the last one was: readers of the earlier ones move after it.
        try:
            nodes = list(topological_order(nodes, set(graph.inputs) | set(weights) | set(constants)))
        except ValueError:
            raise RewriteError(f"after a rewrite the graph has a cycle or undefined values") from None
        _check_defined(nodes, graph.outputs, defined)
    types = {k: v for k, v in types.items() if k in defined}
    new_graph = graph.replace(
        nodes=tuple(nodes),
        types=tuple(sorted(types.items())),
        constants=tuple(sorted(constants.items())),
        weights=tuple(sorted(weights)),
    )
    return Model(new_graph, weights, model.source)


def _renamed(node: Node, aliases: Mapping[str, str]) -> Node:
    if not aliases or not any(i in aliases for i in node.inputs):
        return node
    return node.replace(inputs=tuple(aliases.get(i, i) for i in node.inputs))


def _check_defined(nodes: list[Node], outputs: Iterable[str], defined: set[str]) -> None:
    ready = set(defined) - {o for n in nodes for o in n.outputs}
    for node in nodes:
        missing = [i for i in node.inputs if i and i not in ready]
        if missing:
            raise RewriteError(f"after a rewrite {node.label} reads undefined or later values {missing}")
        ready.update(o for o in node.outputs if o)
    missing = [o for o in outputs if o not in ready]
    if missing:
        raise RewriteError(f"after a rewrite graph outputs {missing} are never produced")
