"""The cost model interface, an analytic roofline baseline, and a random model for tests.

A cost model scores candidates of a task: `predict` returns one score per
sample, lower means faster. Scores are log-latency-like, but only their order
within one task (one workload on one target) is promised. `update` folds new
measurements into the model (a fine-tune for learned models, nothing for the
others). Everything a model sees is a `Sample`: the task's JSON description
(`search.task.describe_graph`), the candidate's decision dict and the target's
fields — exactly what the tuning database stores, so any record can be replayed.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Mapping, Protocol, Sequence

import numpy as np


@dataclass(frozen=True)
class Sample:
    """One candidate of one task on one target, as the cost model sees it."""

    workload_key: str
    description: Mapping[str, Any]
    candidate: Mapping[str, Any]
    target: Mapping[str, Any]


class CostModel(Protocol):
    """Ranks candidates: lower scores are predicted faster."""

    def predict(self, samples: Sequence[Sample]) -> np.ndarray:
        """Predicted log-latency scores, one per sample."""
        ...

    def update(self, samples: Sequence[Sample], latencies_s: Sequence[float], *,
               time_budget_s: float = 10.0) -> None:
        """Learns from measured latencies (seconds), within `time_budget_s`."""
        ...


def algorithm_of(candidate: Mapping[str, Any], node: int) -> str:
    """The algorithm decision for node `node` ("default" when the candidate has none)."""
    return str(candidate.get(f"node:{node}/algorithm", "default"))


def edge_split(candidate: Mapping[str, Any], producer: int, consumer: int) -> bool:
    """Whether the candidate keeps a boundary (a separate kernel) on this edge."""
    return candidate.get(f"edge:{producer}->{consumer}/fuse") == "split"


# The analytic model's machine: a fp32 CPU core pair (see shared/DESIGN.md).
PEAK_FLOPS = 2.0e11
BANDWIDTH = 2.0e10
KERNEL_OVERHEAD_S = 2e-6
_OP_EFFICIENCY = {"Conv": 0.4, "ConvNHWC": 0.5, "MatMul": 0.9, "Gemm": 0.9}
# algorithm (autofuse.rewrite.algorithm rule names) -> (FLOP factor, efficiency, extra bytes as a
# multiple of the node's bytes; negative: traffic a one-node pattern saves).
_ALGORITHMS = {
    "conv_im2col": (1.0, 0.8, 2.0),
    "nhwc_conv_im2col": (1.0, 0.8, 2.0),
    "winograd_f2x2_3x3": (1 / 2.25, 0.5, 1.0),
    "winograd_f4x4_3x3": (1 / 4.0, 0.45, 1.5),
    "winograd_3x3": (1 / 3.0, 0.5, 1.2),
    "depthwise_conv_nhwc": (1.0, 0.3, 0.0),
    "matmul_weight_nk": (1.0, 0.95, 0.0),
    "gemm_weight_nk": (1.0, 0.95, 0.0),
    "attention_unit": (1.0, 0.9, -0.5),
    "gelu_erf_unit": (1.0, 0.25, -0.5),
    "gelu_tanh_unit": (1.0, 0.25, -0.5),
    "layernorm_unit": (1.0, 0.25, -0.5),
}


def _dtype_size(dtype: str) -> int:
    try:
        return np.dtype(dtype).itemsize
    except TypeError:
        return 2 if "16" in dtype else 4


def _output_bytes(node: Mapping[str, Any]) -> float:
    shape = [max(int(d), 1) for d in node.get("out_shape") or []]
    return float(math.prod(shape)) * _dtype_size(str(node.get("dtype") or "float32"))


class AnalyticModel:
    """A roofline estimate: fused groups run at max(FLOP time, memory time) plus a launch cost.

    Edges the candidate splits cost a round trip of the producer's output
    through memory and a kernel launch; algorithm decisions change a node's
    FLOPs, efficiency and scratch traffic by fixed factors. It needs no data,
    which makes it the tuner's model until a learned one is available.
    """

    def predict(self, samples: Sequence[Sample]) -> np.ndarray:
        return np.array([math.log(self.estimate_seconds(s)) for s in samples], dtype=np.float64)

    def update(self, samples: Sequence[Sample], latencies_s: Sequence[float], *,
               time_budget_s: float = 10.0) -> None:
        """The analytic model does not learn."""

    def estimate_seconds(self, sample: Sample) -> float:
        """The roofline latency estimate of one sample, in seconds."""
        nodes = list(sample.description.get("nodes", []))
        if not nodes:
            return KERNEL_OVERHEAD_S
        group = list(range(len(nodes)))

        def find(i: int) -> int:
            while group[i] != i:
                group[i] = group[group[i]]
                i = group[i]
            return i

        saved_bytes = [0.0] * len(nodes)
        for producer, consumer in sample.description.get("edges", []):
            if not (0 <= producer < len(nodes) and 0 <= consumer < len(nodes)):
                continue
            if not edge_split(sample.candidate, producer, consumer):
                group[find(consumer)] = find(producer)
                saved_bytes[producer] += 2 * _output_bytes(nodes[producer])
        compute: dict[int, float] = {}
        memory: dict[int, float] = {}
        for i, node in enumerate(nodes):
            op = str(node.get("op", ""))
            flop_factor, efficiency, extra = _ALGORITHMS.get(algorithm_of(sample.candidate, i),
                                                             (1.0, _OP_EFFICIENCY.get(op, 0.25), 0.0))
            node_bytes = float(node.get("bytes", 0.0))
            g = find(i)
            compute[g] = compute.get(g, 0.0) + flop_factor * float(node.get("flops", 0.0)) / (PEAK_FLOPS * efficiency)
            memory[g] = memory.get(g, 0.0) + max(node_bytes * (1 + extra) - saved_bytes[i], 0.0) / BANDWIDTH
        return sum(max(compute[g], memory[g]) + KERNEL_OVERHEAD_S for g in compute)


class RandomModel:
    """Seeded random scores: the baseline a learned model must beat, and a fast fake for tests."""

    def __init__(self, seed: int = 0) -> None:
        self._rng = np.random.default_rng(seed)

    def predict(self, samples: Sequence[Sample]) -> np.ndarray:
        return self._rng.standard_normal(len(samples))

    def update(self, samples: Sequence[Sample], latencies_s: Sequence[float], *,
               time_budget_s: float = 10.0) -> None:
        """Random ranking does not learn."""


def default_cost_model() -> CostModel:
    """The pretrained GNN shipped with the package; the analytic model (with a warning) if it is missing."""
    from autofuse.costmodel.gnn import GNNModel, pretrained_path
    from autofuse.errors import AutofuseError

    path = pretrained_path()
    try:
        return GNNModel.load(path)
    except (OSError, AutofuseError) as error:
        warnings.warn(f"pretrained cost model unavailable ({error}); falling back to the analytic model",
                      stacklevel=2)
        return AnalyticModel()
