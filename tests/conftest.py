"""Shared fixtures: tiny ONNX models built in memory."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import autofuse  # noqa: F401  (x64 and the registry)


def make_model(nodes, inputs, outputs, initializers=(), opset=17, name="tiny"):
    graph = helper.make_graph(list(nodes), name, list(inputs), list(outputs), list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


@pytest.fixture
def tiny_model_path(tmp_path):
    """x (1x4) -> Relu(x + w) with a 4-element weight."""
    w = numpy_helper.from_array(np.arange(4, dtype=np.float32).reshape(1, 4) - 2, "w")
    model = make_model(
        [helper.make_node("Add", ["x", "w"], ["s"]), helper.make_node("Relu", ["s"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [w],
    )
    path = tmp_path / "tiny.onnx"
    onnx.save(model, path)
    return path


def pytest_terminal_summary(terminalreporter):
    """Prints the conformance count at the end of every run that computed it."""
    import test_conformance

    for line in test_conformance.SUMMARY:
        terminalreporter.write_line(line)
