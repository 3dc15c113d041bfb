"""Fusion plan generation as in DNNFusion.

Seeds are One-to-One ops, smallest intermediate result first. A block grows
through its successors, then its predecessors, one edge at a time, by the
fusion table: green edges fuse, red edges break, and each yellow edge is a
`YellowDecision` whose value the search may set (the default fuses). A merge
is refused when it would make the plan cyclic, when a fused producer's result
is also needed outside the block (multi-consumer) and the producer is not
cheap to recompute, or when the block would exceed `max_block`.

One constraint is specific to XLA: convolutions and matrix products compile to
library calls that read materialised inputs, so XLA cannot fuse a producer into
them. An edge into such an op never fuses (the group boundary would only cut a
fusion XLA can make elsewhere, e.g. BatchNorm with the Relu after it).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping as TMapping

from autofuse.fusion.extended import ExtendedGraph
from autofuse.fusion.table import Verdict, fuse
from autofuse.ops.registry import Mapping

DEFAULT_MAX_BLOCK = 24
# Ops XLA lowers to library calls whose inputs cannot be fused into them.
LIBRARY_CALLS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm", "Einsum", "ConvInteger",
                           "MatMulInteger", "QLinearConv", "QLinearMatMul", "DeformConv"})


@dataclass(frozen=True)
class YellowDecision:
    """One yellow edge: fuse `consumer` with `producer` only if measured faster."""

    producer: str
    consumer: str
    first: str
    second: str
    fuse: bool

    @property
    def key(self) -> str:
        return f"{self.producer}->{self.consumer}"


@dataclass(frozen=True)
class FusionPlan:
    """Groups of node indices (each one XLA region) and the yellow decisions taken."""

    groups: tuple[tuple[int, ...], ...]
    decisions: tuple[YellowDecision, ...] = ()
    group_types: tuple[str, ...] = field(default=())

    def group_of(self) -> dict[int, int]:
        return {n: g for g, members in enumerate(self.groups) for n in members}


class _Groups:
    """Union of nodes into groups with a cycle check on the contracted graph."""

    def __init__(self, eg: ExtendedGraph) -> None:
        self.eg = eg
        self.group = list(range(len(eg.infos)))
        self.members: dict[int, set[int]] = {i: {i} for i in range(len(eg.infos))}

    def merge_is_acyclic(self, a: int, b: int) -> bool:
        """Merging groups a and b keeps the group graph acyclic."""
        joint = self.members[a] | self.members[b]
        # Walk from the joint group's successors outside it; reaching it again is a cycle.
        stack = [s for n in joint for s in self.eg.successors[n] if s not in joint]
        seen: set[int] = set()
        while stack:
            node = stack.pop()
            g = self.group[node]
            if g in seen:
                continue
            seen.add(g)
            for member in self.members[g]:
                for s in self.eg.successors[member]:
                    if s in joint:
                        return False
                    if self.group[s] not in seen:
                        stack.append(s)
        return True

    def merge(self, a: int, b: int) -> int:
        for n in self.members[b]:
            self.group[n] = a
        self.members[a] |= self.members.pop(b)
        return a


def plan_fusion(
    eg: ExtendedGraph,
    overrides: TMapping[str, bool] | None = None,
    *,
    max_block: int = DEFAULT_MAX_BLOCK,
) -> FusionPlan:
    """Generates DNNFusion's plan; `overrides` sets yellow decisions by key."""
    overrides = dict(overrides or {})
    infos = eg.infos
    groups = _Groups(eg)
    block_type: dict[int, Mapping] = {i: info.mapping for i, info in enumerate(infos)}
    assigned: set[int] = set()
    decisions: dict[str, YellowDecision] = {}

    def verdict(first: int, second: int, t_first: Mapping, t_second: Mapping) -> tuple[bool, Mapping | None]:
        cell = fuse(t_first, t_second)
        if cell.verdict is Verdict.RED:
            return False, None
        if cell.verdict is Verdict.YELLOW:
            d = YellowDecision(infos[first].node.name, infos[second].node.name,
                               t_first.name, t_second.name, True)
            choice = overrides.get(d.key, d.fuse)
            decisions[d.key] = YellowDecision(d.producer, d.consumer, d.first, d.second, choice)
            if not choice:
                return False, None
        return True, cell.fused

    def try_join(block: int, node: int, block_is_first: bool) -> int:
        g_node = groups.group[node]
        if g_node == block or node in assigned:
            return block
        if len(groups.members[block]) + len(groups.members[g_node]) > max_block:
            return block
        if block_is_first:
            if infos[node].node.op_type in LIBRARY_CALLS:
                return block
            anchor = next(m for m in groups.members[block] if node in eg.successors[m])
            ok, fused = verdict(anchor, node, block_type[block], infos[node].mapping)
        else:
            # The producer's result must not be needed outside the block unless it is cheap.
            outside = [s for s in eg.successors[node] if groups.group[s] != block]
            if outside and infos[node].mapping is not Mapping.ONE_TO_ONE:
                return block
            anchor = next(m for m in groups.members[block] if m in eg.successors[node])
            if infos[anchor].node.op_type in LIBRARY_CALLS:
                return block
            ok, fused = verdict(node, anchor, infos[node].mapping, block_type[block])
        if not ok or not groups.merge_is_acyclic(block, g_node):
            return block
        merged = groups.merge(block, g_node)
        block_type[merged] = fused
        assigned.add(node)
        return merged

    def grow(seed: int) -> None:
        block = groups.group[seed]
        assigned.add(seed)
        changed = True
        while changed:
            changed = False
            for member in sorted(groups.members[block]):
                for succ in eg.successors[member]:
                    before = len(groups.members[block])
                    block = try_join(block, succ, block_is_first=True)
                    changed |= len(groups.members[block]) != before
            for member in sorted(groups.members[block]):
                for pred in eg.predecessors[member]:
                    before = len(groups.members[block])
                    block = try_join(block, pred, block_is_first=False)
                    changed |= len(groups.members[block]) != before

    one_to_one = [i for i, info in enumerate(infos) if info.mapping is Mapping.ONE_TO_ONE]
    others = [i for i, info in enumerate(infos) if info.mapping is not Mapping.ONE_TO_ONE]
    for seed in sorted(one_to_one, key=lambda i: (infos[i].out_elements, i)) + sorted(
        others, key=lambda i: (infos[i].out_elements, i)
    ):
        if seed not in assigned:
            grow(seed)

    final = sorted((tuple(sorted(m)) for m in groups.members.values()), key=lambda g: g[0])
    types = tuple(block_type[groups.group[g[0]]].name for g in final)
    return FusionPlan(tuple(final), tuple(sorted(decisions.values(), key=lambda d: d.key)), types)
