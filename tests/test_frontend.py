"""The front end refuses bad input with one clear line naming the file, node or op."""
from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from autofuse.errors import ModelLoadError, ShapeError, UnsupportedOpError
from autofuse.frontend import import_model, read_model
from autofuse.settle import settle
from conftest import make_model


def test_tiny_model_imports_and_runs(tiny_model_path):
    model = autofuse_import(tiny_model_path)
    from autofuse.executable import Executable

    out = Executable(model)({"x": np.ones((1, 4), np.float32)})[0]
    np.testing.assert_array_equal(out, [[0, 0, 1, 2]])


def autofuse_import(path, shapes=None):
    return settle(import_model(read_model(path), source=str(path)), shapes)


def test_missing_file(tmp_path):
    with pytest.raises(ModelLoadError, match="no such file"):
        read_model(tmp_path / "nope.onnx")


def test_truncated_file_names_the_file(tmp_path, tiny_model_path):
    data = tiny_model_path.read_bytes()
    bad = tmp_path / "truncated.onnx"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError) as info:
        read_model(bad)
    message = str(info.value)
    assert "truncated.onnx" in message and "\n" not in message


def test_garbage_file(tmp_path):
    bad = tmp_path / "garbage.onnx"
    bad.write_bytes(os.urandom(256))
    with pytest.raises(ModelLoadError, match="garbage.onnx"):
        read_model(bad)


def _model_with_external_weight(tmp_path, location):
    w = numpy_helper.from_array(np.ones((64, 64), np.float32), "w")
    w.data_location = TensorProto.EXTERNAL
    for key, value in {"location": location, "offset": "0", "length": str(64 * 64 * 4)}.items():
        entry = w.external_data.add()
        entry.key, entry.value = key, value
    w.ClearField("raw_data")
    model = make_model(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])],
        [w],
    )
    folder = tmp_path / "model"
    folder.mkdir(exist_ok=True)
    path = folder / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path


@pytest.mark.parametrize("location", ["../secret.bin", "/etc/passwd", "sub/../../secret.bin"])
def test_external_data_cannot_escape_the_model_folder(tmp_path, location):
    (tmp_path / "secret.bin").write_bytes(np.ones(64 * 64, np.float32).tobytes())
    path = _model_with_external_weight(tmp_path, location)
    with pytest.raises(ModelLoadError) as info:
        read_model(path)
    assert "model.onnx" in str(info.value) and "'w'" in str(info.value)


def test_external_data_symlink_escape_is_refused(tmp_path):
    (tmp_path / "secret.bin").write_bytes(np.ones(64 * 64, np.float32).tobytes())
    path = _model_with_external_weight(tmp_path, "weights.bin")
    os.symlink(tmp_path / "secret.bin", path.parent / "weights.bin")
    with pytest.raises(ModelLoadError, match="outside the model's folder"):
        read_model(path)


def test_external_data_inside_the_folder_loads(tmp_path):
    path = _model_with_external_weight(tmp_path, "weights.bin")
    (path.parent / "weights.bin").write_bytes(np.full(64 * 64, 0.5, np.float32).tobytes())
    model = autofuse_import(path)
    np.testing.assert_array_equal(model.weights["w"], np.full((64, 64), 0.5, np.float32))


def test_unknown_op_names_node_and_op(tmp_path):
    model = make_model(
        [helper.make_node("FancyOp", ["x"], ["y"], domain="com.example", name="fancy_1")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    path = tmp_path / "custom.onnx"
    onnx.save(model, path)
    with pytest.raises(UnsupportedOpError) as info:
        autofuse_import(path)
    message = str(info.value)
    assert "custom.onnx" in message and "fancy_1" in message and "FancyOp" in message


def test_dynamic_input_shape_asks_for_a_shape(tmp_path):
    model = make_model(
        [helper.make_node("Relu", ["x"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
    )
    path = tmp_path / "dyn.onnx"
    onnx.save(model, path)
    with pytest.raises(ShapeError, match=r"--shape x=Nx4"):
        autofuse_import(path)
    settled = autofuse_import(path, {"x": (3, 4)})
    assert settled.graph.type_of("y").shape == (3, 4)


def test_shape_subgraph_folds_at_import(tmp_path):
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("ReduceProd", ["s"], ["n"], keepdims=1),
        helper.make_node("Reshape", ["x", "n"], ["y"]),
    ]
    model = make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [6])],
    )
    path = tmp_path / "shape.onnx"
    onnx.save(model, path)
    settled = autofuse_import(path)
    assert [n.op_type for n in settled.graph.nodes] == ["Reshape"]
