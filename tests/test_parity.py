"""Every zoo model, materialised with seed 0, matches onnxruntime (no graph optimisations).

ResNet-50 and BERT-base run by default; the rest are `slow` (`pytest -m slow`).
Run with `-s` to see each model's error and compile time in line.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

from autofuse.api import compile_model, import_onnx
from autofuse.datasets.zoo import example_inputs, list_models, zoo_path
from autofuse.errors import ModelLoadError
from autofuse.runners.onnxruntime import reference_session, run_session

DEFAULT = {"zoo:resnet50", "zoo:bert_base"}
# fp32: max |ours - reference| <= RTOL * max |reference|, per output.
RTOL = 1e-4


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=() if n in DEFAULT else pytest.mark.slow) for n in list_models()]
)
def test_zoo_model_matches_onnxruntime(name: str, capsys: pytest.CaptureFixture) -> None:
    try:
        path = zoo_path(name, seed=0)
    except ModelLoadError as error:
        if os.environ.get("CI"):  # CI has shared/ beside the clone: a missing model is a failure
            raise
        pytest.skip(str(error))
    model = import_onnx(path)
    inputs = example_inputs(model, seed=0)
    executable = compile_model(model)
    ours = executable(inputs)
    reference = run_session(reference_session(path), inputs)
    assert len(ours) == len(reference)
    worst = []
    for index, (got, want) in enumerate(zip(ours, reference)):
        assert got.dtype == want.dtype, f"output {index}: dtype {got.dtype}, onnxruntime {want.dtype}"
        assert got.shape == want.shape, f"output {index}: shape {got.shape}, onnxruntime {want.shape}"
        error = float(np.max(np.abs(got.astype(np.float64) - want)))
        scale = float(np.max(np.abs(want)))
        worst.append((error, scale))
    with capsys.disabled():
        summary = ", ".join(f"max |diff| {e:.2e} (max |ref| {s:.2e})" for e, s in worst)
        print(f"\n{name}: {summary}, compile {executable.compile_seconds:.1f} s")
    for index, (error, scale) in enumerate(worst):
        assert error <= RTOL * scale, f"{name} output {index}: max |diff| {error:.3e} > {RTOL} x {scale:.3e}"
