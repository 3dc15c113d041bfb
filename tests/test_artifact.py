"""The .afz artifact: save, load without the ONNX file, same outputs, clear errors."""
from __future__ import annotations

import zipfile

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from autofuse.artifact import ArtifactError, load_artifact, save_artifact
from autofuse.executable import Executable
from autofuse.frontend import import_model
from autofuse.settle import settle
from conftest import make_model


def _model():
    w = np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32)
    proto = make_model(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w")],
    )
    return settle(import_model(proto, source="tiny"))


def test_round_trip_runs_the_same_computation(tmp_path):
    model = _model()
    exe = Executable(model, barriers=frozenset({"h"})).compile()
    path = save_artifact(tmp_path / "m.afz", exe, source="tiny", decisions={"pipeline": []}, target={"kind": "cpu"},
                         median_ms={"autofuse tuned": 0.1})
    loaded = load_artifact(path)
    x = np.random.default_rng(1).standard_normal((2, 16)).astype(np.float32)
    expected = exe({"x": x})[0]
    np.testing.assert_array_equal(loaded({"x": x})[0], expected)
    np.testing.assert_array_equal(loaded(x)[0], expected)
    np.testing.assert_array_equal(loaded(x=x)[0], expected)
    assert loaded.input_names == ["x"] and loaded.manifest["decisions"] == {"pipeline": []}


def test_bad_inputs_and_files_get_clear_errors(tmp_path):
    exe = Executable(_model()).compile()
    loaded = load_artifact(save_artifact(tmp_path / "m.afz", exe, source="tiny", decisions={}, target={}))
    with pytest.raises(ArtifactError, match="input 'x' has shape \\[3, 16\\]"):
        loaded(np.zeros((3, 16), np.float32))
    with pytest.raises(ArtifactError, match="missing inputs"):
        loaded(y=np.zeros((2, 16), np.float32))
    bad = tmp_path / "bad.afz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ArtifactError, match="bad.afz: not an autofuse artifact"):
        load_artifact(bad)
    with zipfile.ZipFile(tmp_path / "new.afz", "w") as z:
        z.writestr("manifest.json", '{"format": "autofuse-artifact", "version": 99}')
        z.writestr("executable.bin", b"")
        z.writestr("weights.npz", b"")
    with pytest.raises(ArtifactError):
        load_artifact(tmp_path / "new.afz")
    with pytest.raises(ArtifactError, match="no such file"):
        load_artifact(tmp_path / "missing.afz")


def test_an_artifact_calling_the_blas_kernel_round_trips(tmp_path):
    from autofuse.blas import kernel_target
    from autofuse.rewrite import rewrite
    from autofuse.rewrite.blas import BLAS

    if kernel_target() is None:
        pytest.skip("no native BLAS kernel on this machine")
    model = rewrite(_model(), BLAS).model
    assert "BlasMatMul" in [n.op_type for n in model.graph.nodes]
    exe = Executable(model).compile()
    loaded = load_artifact(save_artifact(tmp_path / "b.afz", exe, source="tiny", decisions={}, target={}))
    x = np.random.default_rng(2).standard_normal((2, 16)).astype(np.float32)
    np.testing.assert_allclose(loaded(x)[0], exe({"x": x})[0], rtol=1e-6)
