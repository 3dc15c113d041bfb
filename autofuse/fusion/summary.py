"""What `autofuse analyze` reports: mapping types, groups, fusion rate, kernels."""
from __future__ import annotations

import collections
from dataclasses import asdict, dataclass

from autofuse.fusion.extended import extend
from autofuse.fusion.lower import compile_plan, kernel_count, op_by_op_plan
from autofuse.fusion.planner import FusionPlan, plan_fusion
from autofuse.ir import Model


@dataclass(frozen=True)
class PlanSummary:
    """A model's fusion analysis; kernels are counted in XLA's optimised HLO."""

    model: str
    onnx_ops: int
    compute_ops: int
    ops_per_mapping: dict[str, int]
    groups: list[list[str]]
    group_types: list[str]
    yellow_decisions: list[dict]
    kernels_plan: int | None
    kernels_xla: int | None
    kernels_op_by_op: int | None

    @property
    def fusion_rate(self) -> float:
        """ONNX ops per fused group (DNNFusion's fusion rate)."""
        return self.onnx_ops / max(len(self.groups), 1)

    def as_dict(self) -> dict:
        return {**asdict(self), "fusion_rate": self.fusion_rate}


def summarize(model: Model, onnx_ops: int, *, count_kernels: bool = True) -> tuple[PlanSummary, FusionPlan]:
    """Plans `model` with DNNFusion's defaults and counts kernels three ways."""
    eg = extend(model.graph)
    plan = plan_fusion(eg)
    kernels = (None, None, None)
    if count_kernels:
        kernels = tuple(
            kernel_count(compile_plan(model, p).optimized_hlo())
            for p in (plan, None, op_by_op_plan(model))
        )
    nodes = model.graph.nodes
    summary = PlanSummary(
        model=model.source,
        onnx_ops=onnx_ops,
        compute_ops=len(nodes),
        ops_per_mapping=dict(sorted(collections.Counter(i.mapping.name for i in eg.infos).items())),
        groups=[[f"{nodes[i].op_type}:{nodes[i].name}" for i in g] for g in plan.groups],
        group_types=list(plan.group_types),
        yellow_decisions=[{"key": d.key, "edge": f"{d.first}->{d.second}", "fuse": d.fuse} for d in plan.decisions],
        kernels_plan=kernels[0],
        kernels_xla=kernels[1],
        kernels_op_by_op=kernels[2],
    )
    return summary, plan
