"""onnxruntime, the reference for correctness and the baseline for speed.

Sessions take a path or the serialized model bytes
(`autofuse.frontend.materialize.model_bytes`), so nothing here touches onnx.
"""
from __future__ import annotations

import os
from typing import Mapping

import numpy as np
import onnxruntime as ort

from autofuse.errors import AutofuseError

ModelSource = str | os.PathLike | bytes


def _session(model: ModelSource, level: ort.GraphOptimizationLevel, threads: int | None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    if threads is not None:
        options.intra_op_num_threads = threads
    source = model if isinstance(model, bytes) else os.fspath(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def reference_session(model: ModelSource, optimize: bool = False) -> ort.InferenceSession:
    """The numerical reference: graph optimisations disabled unless `optimize`."""
    level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return _session(model, level, None)


def baseline_session(model: ModelSource, threads: int | None = None) -> ort.InferenceSession:
    """The speed baseline: every graph optimisation, as many intra-op threads as autofuse."""
    return _session(model, ort.GraphOptimizationLevel.ORT_ENABLE_ALL, threads or os.cpu_count() or 1)


def run_session(session: ort.InferenceSession, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Runs on the inputs the session declares; outputs in graph order."""
    names = [i.name for i in session.get_inputs()]
    missing = [n for n in names if n not in inputs]
    if missing:
        raise AutofuseError(f"onnxruntime session: missing inputs {missing}; it takes {names}")
    feed = {name: np.asarray(inputs[name]) for name in names}
    return [np.asarray(v) for v in session.run(None, feed)]
