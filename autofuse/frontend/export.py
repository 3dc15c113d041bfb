"""Writing ONNX: small models trained in JAX, and models with replaced weights.

The rest of autofuse never touches protobufs; these functions take numpy arrays
and paths and return or write ONNX files.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from autofuse.errors import AutofuseError
from autofuse.frontend.loader import read_model
from autofuse.frontend.materialize import save_model

MLP_OPSET = 17


def mlp_onnx(layers: Sequence[tuple[np.ndarray, np.ndarray]], *, input_name: str = "x",
             output_name: str = "logits", name: str = "mlp") -> onnx.ModelProto:
    """A ReLU MLP as Gemm nodes: layers are (W (in, out), b (out,)); the batch dim is symbolic 'N'."""
    nodes, initializers = [], []
    value = input_name
    for k, (w, b) in enumerate(layers):
        w_name, b_name, out = f"fc{k}.weight", f"fc{k}.bias", f"fc{k}"
        initializers += [numpy_helper.from_array(np.asarray(w, np.float32), w_name),
                         numpy_helper.from_array(np.asarray(b, np.float32), b_name)]
        last = k == len(layers) - 1
        nodes.append(helper.make_node("Gemm", [value, w_name, b_name], [output_name if last else out], name=f"fc{k}"))
        if not last:
            nodes.append(helper.make_node("Relu", [out], [f"relu{k}"], name=f"relu{k}"))
            value = f"relu{k}"
    graph = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["N", int(np.shape(layers[0][0])[0])])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["N", int(np.shape(layers[-1][0])[1])])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", MLP_OPSET)], producer_name="autofuse")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def write_model(model: onnx.ModelProto, path: str | os.PathLike) -> Path:
    """Writes an ONNX model atomically."""
    return save_model(model, path)


def initializer_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """Initializer name -> shape of an ONNX file (read and checked as `read_model` does)."""
    return {t.name: tuple(int(d) for d in t.dims) for t in read_model(path).graph.initializer}


def with_initializers(path: str | os.PathLike, arrays: Mapping[str, np.ndarray],
                      target: str | os.PathLike) -> Path:
    """Copies the ONNX file at `path` to `target` with the named initializers replaced.

    Each replacement must keep its initializer's shape; the graph is unchanged.
    """
    model = read_model(path)
    pending = dict(arrays)
    for tensor in model.graph.initializer:
        if tensor.name not in pending:
            continue
        array = np.asarray(pending.pop(tensor.name))
        if tuple(array.shape) != tuple(tensor.dims):
            raise AutofuseError(f"{path}: initializer '{tensor.name}' has shape {list(tensor.dims)}, "
                                f"the replacement {list(array.shape)}")
        replacement = numpy_helper.from_array(array.astype(helper.tensor_dtype_to_np_dtype(tensor.data_type)),
                                              tensor.name)
        tensor.CopyFrom(replacement)
    if pending:
        raise AutofuseError(f"{path}: no initializer named {sorted(pending)[:5]} to replace")
    return write_model(model, target)
