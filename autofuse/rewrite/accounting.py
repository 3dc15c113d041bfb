"""FLOPs and bytes moved, before and after rewriting: per model, per family, per rule.

A rule's share is measured by firing that rule alone, at every place it
applies, on the model as the preceding families left it (so folding is
counted on the imported model, layout after folding, and so on); the family's
line is the whole family at once, and the model's line the whole pipeline.
FLOPs and bytes are the extended graph's static counts (multiply-adds count
two; bytes are every node's inputs plus outputs, as if nothing stayed in cache).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

from autofuse.fusion.extended import node_bytes, node_flops
from autofuse.ir import Model
from autofuse.rewrite.engine import RuleSet, rewrite


@dataclass(frozen=True)
class Cost:
    """Static work of a model."""

    flops: float
    bytes: float
    nodes: int


@dataclass(frozen=True)
class Account:
    """One line: what a rule, a family or the pipeline fired and what it removed."""

    scope: str          # "rule", "family" or "model"
    name: str
    fires: int
    before: Cost
    after: Cost

    @property
    def flops_removed(self) -> float:
        return self.before.flops - self.after.flops

    @property
    def bytes_removed(self) -> float:
        return self.before.bytes - self.after.bytes


def cost(model: Model) -> Cost:
    """Total FLOPs, bytes moved and node count of a settled model."""
    graph = model.graph
    return Cost(sum(node_flops(n, graph) for n in graph.nodes),
                sum(node_bytes(n, graph) for n in graph.nodes), len(graph.nodes))


def account(model: Model, families: Mapping[str, RuleSet] | Sequence[tuple[str, RuleSet]]) -> list[Account]:
    """Per rule, per family and for the whole pipeline, in pipeline order."""
    steps = list(families.items()) if isinstance(families, Mapping) else list(families)
    lines: list[Account] = []
    start = current = rewrite(model, []).model
    total_fires = 0
    for family, rule_set in steps:
        before = cost(current)
        for rule in rule_set:
            alone = rewrite(current, RuleSet(rule.name, (rule,)))
            fires = alone.fired.get(rule.name, 0)
            if fires:
                lines.append(Account("rule", f"{family}/{rule.name}", fires, before, cost(alone.model)))
        result = rewrite(current, rule_set)
        fires = sum(result.fired.values())
        total_fires += fires
        current = result.model
        lines.append(Account("family", family, fires, before, cost(current)))
    lines.append(Account("model", model.source or "model", total_fires, cost(start), cost(current)))
    return lines
