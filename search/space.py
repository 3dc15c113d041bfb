"""The candidate space of a task: frozen, serialisable decisions and how to apply them.

A candidate is a dict of decisions, JSON-able and replayable from the database:

- ``"node:<i>/algorithm"``: the rewrite rule that lowers task node ``i`` (or
  ``"default"``): im2col, Winograd, depthwise taps, pre-transposed weights ...
- ``"edge:<i>-><j>/fuse"``: ``"fuse"`` or ``"split"`` for a yellow edge of
  DNNFusion's table inside the task (a split holds the value in an
  optimization barrier, so XLA keeps the two ops in separate kernels).
- ``"node:<i>/sparsity"``: ``"dense"`` or a pattern (``"balanced:4/16"``) that
  prunes the node's weight and runs it as a SparseMatMul. Offered only for the
  levels an accuracy budget admitted (`task_space(..., sparsity=...)`); a sparse
  node keeps the default algorithm, the two being alternative lowerings.

The same decisions apply to every occurrence of the task in the model:
`model_choices` maps them onto the model's value names, and `apply_choices`
realises them on a model (rules fired only where chosen, barriers returned).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable, Mapping, Sequence

from autofuse.database.base import candidate_key  # noqa: F401  (re-exported for the search)
from autofuse.fusion.extended import extend
from autofuse.fusion.table import Verdict, fuse
from autofuse.ir import Model
from autofuse.rewrite import Rule, RuleSet, View, rewrite
from autofuse.search.task import Task

if TYPE_CHECKING:
    from autofuse.sparsity.prune import PruneResult

DEFAULT = "default"
FUSE, SPLIT = "fuse", "split"
DENSE = "dense"
Candidate = dict[str, str]


def choice_rules() -> dict[str, Rule]:
    """Every per-op lowering alternative the search may choose, by rule name.

    The OpenBLAS forms (`autofuse.rewrite.blas`) are not among them: the packed
    GEMM does the same products faster, and every extra choice costs measurements.
    """
    from autofuse.rewrite.algorithm import ALTERNATIVES, RULES
    from autofuse.rewrite.packed import PACKED_ALTERNATIVES, PACKED_RULES

    rules = {name: RULES[name] for names in ALTERNATIVES.values() for name in names}
    rules.update({name: PACKED_RULES[name] for names in PACKED_ALTERNATIVES.values() for name in names})
    return rules


def epilogues() -> RuleSet:
    """The folds of a bias, residual or ReLU into a product a choice made native (BLAS, packed GEMM)."""
    from autofuse.rewrite.blas import BLAS_EPILOGUE
    from autofuse.rewrite.packed import PACKED_EPILOGUE

    return RuleSet("epilogues", BLAS_EPILOGUE.rules + PACKED_EPILOGUE.rules)


@dataclass(frozen=True)
class Space:
    """The decisions of one task and the choices each one has (the first is the default)."""

    decisions: tuple[tuple[str, tuple[str, ...]], ...]

    def default(self) -> Candidate:
        return {name: choices[0] for name, choices in self.decisions}

    def size(self) -> int:
        total = 1
        for _, choices in self.decisions:
            total *= len(choices)
        return total

    def canonical(self, candidate: Mapping[str, str]) -> Candidate:
        """Fills missing decisions with defaults and drops unknown ones; a sparse node's
        algorithm is the default (its lowering is the sparse kernel)."""
        result = {name: candidate.get(name, choices[0]) if candidate.get(name) in choices else choices[0]
                  for name, choices in self.decisions}
        for i in sparsity_decisions(result):
            if f"node:{i}/algorithm" in result:
                result[f"node:{i}/algorithm"] = DEFAULT
        return result

    def all_candidates(self, limit: int = 4096) -> list[Candidate]:
        """Every distinct canonical candidate (up to `limit`), default first."""
        result: list[Candidate] = [{}]
        for name, choices in self.decisions:
            result = [dict(c, **{name: choice}) for c in result for choice in choices][:limit]
        unique = {candidate_key(c): c for c in map(self.canonical, result)}
        return list(unique.values())

    def offers(self, candidate: Mapping[str, str]) -> bool:
        """False when the candidate takes a sparsity level this space does not offer
        (a record of a run under another accuracy budget, or of one with none)."""
        choices = dict(self.decisions)
        return all(pattern in choices.get(f"node:{i}/sparsity", ())
                   for i, pattern in sparsity_decisions(candidate).items())


def sparsity_decisions(candidate: Mapping[str, str]) -> dict[int, str]:
    """Task node index -> pattern, for every sparsity decision of a candidate that is not dense."""
    found = {}
    for name, choice in candidate.items():
        kind, _, what = name.partition(":")
        target, _, decision = what.partition("/")
        if kind == "node" and decision == "sparsity" and choice != DENSE:
            found[int(target)] = choice
    return found


def task_space(task: Task, rules: Mapping[str, Rule] | None = None,
               sparsity: Mapping[str, Sequence[str]] | None = None) -> Space:
    """The decisions that apply to a task: per-node algorithm choices whose rule
    accepts the node, per-node sparsity levels, and one fuse/split decision per yellow edge.

    `sparsity` maps a model value (a layer's output) to the patterns an accuracy
    budget admitted for that layer; a task node is offered the levels admitted
    for it in at least one occurrence. Without it no sparsity is offered.
    """
    rules = choice_rules() if rules is None else rules
    graph = task.model.graph
    view = View(task.model)
    decisions: list[tuple[str, tuple[str, ...]]] = []
    for i, node in enumerate(graph.nodes):
        applicable = []
        for name, rule in rules.items():
            if node.op_type not in rule.op_types:
                continue
            match = rule.match(node, view)
            if match is not None and match[-1] is node and rule.check(match, view) is None:
                applicable.append(name)
        if applicable:
            decisions.append((f"node:{i}/algorithm", (DEFAULT, *sorted(applicable))))
        levels = {p for occurrence in task.occurrences for p in (sparsity or {}).get(occurrence.node_outputs[i], ())}
        if levels:
            decisions.append((f"node:{i}/sparsity", (DENSE, *sorted(levels))))
    eg = extend(graph)
    for consumer, producers in enumerate(eg.predecessors):
        for producer in producers:
            cell = fuse(eg.infos[producer].mapping, eg.infos[consumer].mapping)
            if cell.verdict is Verdict.YELLOW:
                decisions.append((f"edge:{producer}->{consumer}/fuse", (FUSE, SPLIT)))
    return Space(tuple(decisions))


@dataclass(frozen=True)
class Choices:
    """Decisions mapped onto one model's values: rule per root output, values to split at,
    sparsity pattern per layer output."""

    algorithms: Mapping[str, str] = field(default_factory=dict)
    splits: frozenset[str] = frozenset()
    sparsity: Mapping[str, str] = field(default_factory=dict)


def model_choices(pairs: Iterable[tuple[Task, Mapping[str, str]]]) -> Choices:
    """Maps each task's chosen candidate onto every occurrence of the task."""
    algorithms: dict[str, str] = {}
    splits: set[str] = set()
    sparsity: dict[str, str] = {}
    for task, candidate in pairs:
        for occurrence in task.occurrences:
            _collect(candidate, occurrence.node_outputs, algorithms, splits, sparsity)
    return Choices(algorithms, frozenset(splits), sparsity)


def task_choices(task: Task, candidate: Mapping[str, str]) -> Choices:
    """A candidate mapped onto the task's own standalone model."""
    algorithms: dict[str, str] = {}
    splits: set[str] = set()
    sparsity: dict[str, str] = {}
    _collect(candidate, tuple(n.outputs[0] for n in task.nodes), algorithms, splits, sparsity)
    return Choices(algorithms, frozenset(splits), sparsity)


def _collect(candidate: Mapping[str, str], outputs: tuple[str, ...], algorithms: dict[str, str],
             splits: set[str], sparsity: dict[str, str]) -> None:
    for name, choice in candidate.items():
        kind, _, what = name.partition(":")
        target, _, decision = what.partition("/")
        if kind == "node" and decision == "algorithm" and choice != DEFAULT:
            algorithms[outputs[int(target)]] = choice
        elif kind == "edge" and decision == "fuse" and choice == SPLIT:
            producer = int(target.split("->")[0])
            splits.add(outputs[producer])
        elif kind == "node" and decision == "sparsity" and choice != DENSE:
            sparsity[outputs[int(target)]] = choice


def _pruned(model: Model, sparsity: Mapping[str, str]) -> "PruneResult":
    """The layers producing the chosen values pruned by magnitude to their patterns (dense storage)."""
    from autofuse.sparsity import parse_pattern, prune_model
    from autofuse.sparsity.targets import node_key

    keys = {n.outputs[0]: node_key(n) for n in model.graph.nodes if n.outputs}
    return prune_model(model, {keys[v]: parse_pattern(p) for v, p in sparsity.items() if v in keys})


def masked_model(model: Model, choices: Choices) -> Model:
    """The model with its chosen sparse layers' weights masked, still dense MatMul/Gemm:
    what a sparse candidate must compute. Magnitude pruning of an already masked
    weight keeps it as it is, so a model whose weights were pruned (and refit) before
    passes through unchanged."""
    return _pruned(model, choices.sparsity).model if choices.sparsity else model


def apply_choices(model: Model, choices: Choices, rules: Mapping[str, Rule] | None = None
                  ) -> tuple[Model, frozenset[str]]:
    """The model with each chosen layer made sparse (SparseMatMul on its masked weight), each
    chosen rule fired at its node, and the values to hold in barriers."""
    if choices.sparsity:
        from autofuse.sparsity.rewrite import to_sparse_ops

        model = to_sparse_ops(_pruned(model, choices.sparsity)).model
    if choices.algorithms:
        rules = choice_rules() if rules is None else rules
        chosen = RuleSet("chosen", tuple(rules[name] for name in sorted(set(choices.algorithms.values()))))

        def where(rule: Rule, match: tuple) -> bool:
            return choices.algorithms.get(match[-1].outputs[0]) == rule.name

        model = rewrite(model, chosen, where=where).model
        model = rewrite(model, epilogues()).model
    produced = {o for n in model.graph.nodes for o in n.outputs}
    return model, frozenset(v for v in choices.splits if v in produced)
