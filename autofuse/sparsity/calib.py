"""Calibration data: read it, and run a settled model over it in batches.

A settled model is compiled for one input shape (batch size included), while
calibration sets hold many samples. `run_batched` cuts the inputs along axis 0
into the model's batch size, pads the last batch by repeating its final sample,
and drops the padded rows again, so any number of samples runs through the same
executable. It assumes samples are independent along axis 0 (true for every
inference model autofuse imports).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from autofuse.errors import AutofuseError
from autofuse.executable import Executable
from autofuse.ir import Model, TensorType

LABELS_KEY = "labels"


def load_npz(path: str | Path, model: Model) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Inputs by name (and optional integer 'labels') from an .npz file."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except Exception as error:
        raise AutofuseError(f"--calib {path}: cannot read it as .npz: {error}") from None
    labels = arrays.pop(LABELS_KEY, None)
    missing = set(model.graph.inputs) - set(arrays)
    if missing:
        raise AutofuseError(f"--calib {path}: no array for model input(s) {sorted(missing)}; "
                            f"it holds {sorted(arrays)}")
    return {k: arrays[k] for k in model.graph.inputs}, labels


def _batch_size(model: Model) -> int:
    sizes = set()
    for name in model.graph.inputs:
        t = model.graph.type_of(name)
        if isinstance(t, TensorType) and t.is_static and t.shape:
            sizes.add(int(t.shape[0]))
    if len(sizes) != 1:
        raise AutofuseError(f"{model.source}: inputs disagree on the batch size (axis 0): {sorted(sizes)}")
    return sizes.pop()


def sample_count(inputs: Mapping[str, np.ndarray], what: str = "calibration inputs") -> int:
    """The common axis-0 length of the inputs; an error when they disagree."""
    counts = {len(np.asarray(v)) for v in inputs.values()}
    if len(counts) != 1:
        raise AutofuseError(f"{what}: arrays disagree on the number of samples (axis 0): {sorted(counts)}")
    return counts.pop()


def run_batched(model: Model, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None,
                executable: Callable[[Mapping[str, np.ndarray]], Sequence[np.ndarray]] | None = None
                ) -> list[np.ndarray]:
    """The named values (default: the graph outputs) over all samples, concatenated on axis 0.

    `executable` runs one batch of the model (default: the model compiled here).
    """
    if outputs is not None:
        model = Model(model.graph.replace(outputs=tuple(outputs)), model.weights, model.source)
    executable = executable or Executable(model).compile()
    batch = _batch_size(model)
    total = sample_count(inputs)
    pieces: list[list[np.ndarray]] = []
    for start in range(0, total, batch):
        chunk = {}
        for name in model.graph.inputs:
            part = np.asarray(inputs[name])[start:start + batch]
            if len(part) < batch:
                part = np.concatenate([part, np.repeat(part[-1:], batch - len(part), axis=0)])
            chunk[name] = part
        values = [np.asarray(v) for v in executable(chunk)]
        taken = total - start
        if taken < batch:  # drop the padding (values of a padded batch are batch-major)
            values = [v[:taken] if v.ndim else v for v in values]
        pieces.append(values)
    return [np.concatenate(parts) for parts in zip(*pieces)]
