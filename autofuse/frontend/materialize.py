"""Light ONNX models made real: seeded random weights in place of ConstantOfShape.

The onnx package's light zoo and `shared/models` store every large weight as a
`ConstantOfShape` node fed by an int64 initializer named `<weight>__SHAPE`, whose
value is 0.02 everywhere. Constant weights hide bugs (every channel alike) and
flatter some kernels, so benchmarks and parity checks replace them with seeded
random tensors whose scale suits each weight's role, read from the node and
input slot that consume it.
"""
from __future__ import annotations

import os
import tempfile
import zlib
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from autofuse.frontend.importer import tensor_to_array

# Bump when the generated values change, so caches keyed on it are refreshed.
MATERIALIZE_VERSION = 2
SHAPE_SUFFIX = "__SHAPE"
SMALL_STD = 0.02
# Ops that pass a weight through unchanged in value (only its layout or dtype).
PASS_THROUGH = frozenset({"Identity", "Unsqueeze", "Squeeze", "Reshape", "Flatten", "Cast", "Transpose"})
# Minimum IR version whose initializers need not be listed as graph inputs.
MIN_IR_VERSION = 4

# (consumer op, input slot) -> role; anything else is "other".
ROLES: dict[tuple[str, int], str] = {
    ("Conv", 1): "conv_kernel",
    ("ConvTranspose", 1): "conv_kernel",
    ("Conv", 2): "bias",
    ("ConvTranspose", 2): "bias",
    ("Gemm", 0): "dense",
    ("Gemm", 1): "dense",
    ("Gemm", 2): "bias",
    ("MatMul", 0): "dense",
    ("MatMul", 1): "dense",
    ("Gather", 0): "embedding",
    ("BatchNormalization", 1): "norm_scale",
    ("BatchNormalization", 2): "bias",
    ("BatchNormalization", 3): "bn_mean",
    ("BatchNormalization", 4): "bn_var",
    ("LayerNormalization", 1): "norm_scale",
    ("LayerNormalization", 2): "bias",
    ("InstanceNormalization", 1): "norm_scale",
    ("InstanceNormalization", 2): "bias",
    ("Mul", 0): "norm_scale",
    ("Mul", 1): "norm_scale",
    ("Add", 0): "bias",
    ("Add", 1): "bias",
}

Generator = Callable[[np.random.Generator, tuple[int, ...]], np.ndarray]


def _normal(std: float, mean: float = 0.0) -> Generator:
    return lambda rng, shape: mean + std * rng.standard_normal(shape)


def _he_normal(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """He initialisation: std sqrt(2 / fan_in), fan_in = in-channels x kernel area."""
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    return np.sqrt(2.0 / max(fan_in, 1)) * rng.standard_normal(shape)


GENERATORS: dict[str, Generator] = {
    "conv_kernel": _he_normal,
    "dense": _normal(SMALL_STD),
    "embedding": _normal(SMALL_STD),
    "bias": _normal(SMALL_STD),
    "norm_scale": _normal(0.1, mean=1.0),
    "bn_mean": _normal(SMALL_STD),
    "bn_var": lambda rng, shape: rng.uniform(0.5, 1.5, shape),
    "other": _normal(SMALL_STD),
}


Consumers = dict[str, list[tuple[onnx.NodeProto, int]]]


def _consumers(graph: onnx.GraphProto) -> Consumers:
    """Value name -> the (node, input slot) pairs that read it."""
    result: Consumers = {}
    for node in graph.node:
        for slot, value in enumerate(node.input):
            result.setdefault(value, []).append((node, slot))
    return result


def weight_role(graph: onnx.GraphProto, name: str) -> str:
    """The role of value `name`, from the first real consumer (following pass-throughs)."""
    return _role_from(_consumers(graph), name, set())


def _role_from(consumers: Consumers, name: str, seen: set[str]) -> str:
    seen.add(name)
    for node, slot in consumers.get(name, ()):
        if node.op_type in PASS_THROUGH and slot == 0:
            if node.output[0] not in seen:
                role = _role_from(consumers, node.output[0], seen)
                if role != "other":
                    return role
            continue
        role = ROLES.get((node.op_type, slot))
        if role is not None:
            return role
    return "other"


def _names_read(nodes: Sequence[onnx.NodeProto]) -> set[str]:
    """Every value name the nodes read, subgraphs included."""
    names: set[str] = set()
    for node in nodes:
        names.update(node.input)
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                names |= _names_read(sub.node) | {o.name for o in sub.output}
    return names


def _rng(seed: int, name: str) -> np.random.Generator:
    """A generator per weight, so its values depend only on the seed and its name."""
    return np.random.default_rng([seed, zlib.crc32(name.encode("utf-8"))])


def _light_weights(graph: onnx.GraphProto) -> list[tuple[onnx.NodeProto, np.ndarray]]:
    """The ConstantOfShape nodes fed by a `*__SHAPE` initializer, with their shapes."""
    shapes = {t.name: t for t in graph.initializer if t.name.endswith(SHAPE_SUFFIX)}
    found = []
    for node in graph.node:
        if node.op_type == "ConstantOfShape" and node.input and node.input[0] in shapes:
            found.append((node, tensor_to_array(shapes[node.input[0]]).astype(np.int64)))
    return found


def _fill_dtype(node: onnx.NodeProto) -> np.dtype:
    """The element type ConstantOfShape would produce (its `value`, default float32)."""
    for attr in node.attribute:
        if attr.name == "value":
            return tensor_to_array(attr.t).dtype
    return np.dtype(np.float32)


def materialize(model: onnx.ModelProto, *, seed: int = 0) -> onnx.ModelProto:
    """A copy of a light model with every `ConstantOfShape` weight a seeded random initializer.

    Initializers nothing reads (the `__SHAPE` tensors among them) are removed, and
    initializers are dropped from `graph.input` (the IR version raised to one that
    allows it), so runtimes may treat every weight as a constant.
    """
    result = onnx.ModelProto()
    result.CopyFrom(model)
    graph = result.graph
    original_initializers = {t.name for t in graph.initializer}
    light = _light_weights(graph)
    replaced = {node.output[0] for node, _ in light}
    consumers = _consumers(graph)
    new_initializers = []
    for node, shape in light:
        name = node.output[0]
        role = _role_from(consumers, name, set())
        array = GENERATORS[role](_rng(seed, name), tuple(int(d) for d in shape))
        new_initializers.append(numpy_helper.from_array(np.asarray(array, _fill_dtype(node)), name))
    kept_nodes = [n for n in graph.node if not (n.op_type == "ConstantOfShape" and n.output[0] in replaced)]
    still_read = _names_read(kept_nodes) | {o.name for o in graph.output}
    kept_initializers = [t for t in graph.initializer if t.name in still_read]
    del graph.node[:]
    graph.node.extend(kept_nodes)
    del graph.initializer[:]
    graph.initializer.extend(kept_initializers + new_initializers)
    dropped = original_initializers | replaced
    kept_inputs = [i for i in graph.input if i.name not in dropped]
    del graph.input[:]
    graph.input.extend(kept_inputs)
    result.ir_version = max(result.ir_version, MIN_IR_VERSION)
    return result


def batchnorm_statistics(model: onnx.ModelProto) -> list[tuple[str, str, str]]:
    """(input, mean, variance) names of each BatchNormalization whose statistics
    are initializers, in graph (topological) order."""
    initializers = {t.name for t in model.graph.initializer}
    return [
        (n.input[0], n.input[3], n.input[4])
        for n in model.graph.node
        if n.op_type == "BatchNormalization" and n.input[3] in initializers and n.input[4] in initializers
    ]


def initializer_arrays(model: onnx.ModelProto, names: Sequence[str]) -> dict[str, np.ndarray]:
    """The values of the named initializers."""
    wanted = set(names)
    return {t.name: tensor_to_array(t) for t in model.graph.initializer if t.name in wanted}


def probe_bytes(model: onnx.ModelProto, *, as_inputs: Sequence[str], outputs: Sequence[str]) -> bytes:
    """A serialized copy in which the named initializers are graph inputs (so a
    runtime can feed new values) and the named values are extra graph outputs."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    graph = probe.graph
    moved = {t.name: t for t in graph.initializer if t.name in set(as_inputs)}
    kept = [t for t in graph.initializer if t.name not in moved]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    for name, tensor in moved.items():
        graph.input.append(onnx.helper.make_tensor_value_info(name, tensor.data_type, list(tensor.dims)))
    for name in outputs:
        graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return model_bytes(probe)


def replace_initializers(model: onnx.ModelProto, arrays: Mapping[str, np.ndarray]) -> onnx.ModelProto:
    """A copy with the named initializers set to new values (same dtype)."""
    result = onnx.ModelProto()
    result.CopyFrom(model)
    for tensor in result.graph.initializer:
        if tensor.name in arrays:
            dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
            tensor.CopyFrom(numpy_helper.from_array(np.asarray(arrays[tensor.name], dtype), tensor.name))
    return result


def save_model(model: onnx.ModelProto, path: str | os.PathLike) -> Path:
    """Writes a model atomically (a temporary file renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(model_bytes(model))
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def model_bytes(model: onnx.ModelProto) -> bytes:
    """The serialized model, e.g. for `onnxruntime.InferenceSession(bytes)`."""
    return model.SerializeToString()
