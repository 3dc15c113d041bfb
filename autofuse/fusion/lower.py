"""Lowering a fusion plan: one XLA region per group, boundaries held by barriers,
and the kernel count read back from XLA's optimised HLO."""
from __future__ import annotations

import re
from typing import Any, Mapping

from autofuse.executable import Executable
from autofuse.fusion.planner import FusionPlan
from autofuse.ir import Model

# HLO instructions that are bookkeeping, not kernels.
_NOT_KERNELS = {
    "parameter", "constant", "tuple", "get-tuple-element", "bitcast", "opt-barrier", "after-all",
}
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*[^=]*?\s([a-z][a-z\-]*)\(", re.M)


def boundary_values(model: Model, plan: FusionPlan) -> frozenset[str]:
    """Values produced in one group and read by another group (or the caller)."""
    graph = model.graph
    group_of = plan.group_of()
    producer = {out: i for i, n in enumerate(graph.nodes) for out in n.outputs if out}
    crossing = set()
    for i, node in enumerate(graph.nodes):
        for value in node.inputs:
            if value in producer and group_of[producer[value]] != group_of[i]:
                crossing.add(value)
    return frozenset(crossing)


def op_by_op_plan(model: Model) -> FusionPlan:
    """Every node in its own group: XLA may fuse nothing."""
    return FusionPlan(tuple((i,) for i in range(len(model.graph.nodes))))


def compile_plan(
    model: Model, plan: FusionPlan | None, *, compiler_options: Mapping[str, Any] | None = None
) -> Executable:
    """Compiles `model` so that it runs as `plan` says (None: XLA's own fusion)."""
    barriers = boundary_values(model, plan) if plan is not None else frozenset()
    return Executable(model, compiler_options=compiler_options, barriers=barriers).compile()


def kernel_count(hlo_text: str) -> int:
    """Kernels in the entry computation of optimised HLO: fusions, library calls, the rest."""
    entry = hlo_text[hlo_text.find("ENTRY"):]
    end = entry.find("\n}")
    body = entry[: end if end >= 0 else len(entry)]
    ops = _INSTRUCTION.findall(body)
    return sum(1 for op in ops if op not in _NOT_KERNELS)
