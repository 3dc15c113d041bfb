"""ONNX protobuf -> autofuse IR. Nothing outside `autofuse.frontend` sees a proto."""
from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from autofuse.dtypes import to_numpy_dtype
from autofuse.errors import ModelLoadError
from autofuse.ir import (
    SMALL_CONSTANT_ELEMENTS,
    Const,
    Graph,
    Model,
    Node,
    OptionalType,
    SequenceType,
    TensorType,
    ValueType,
    topological_order,
)


def tensor_to_array(tensor: onnx.TensorProto) -> np.ndarray:
    """A TensorProto as a numpy array of autofuse's dtype for its element type."""
    array = numpy_helper.to_array(tensor)
    want = to_numpy_dtype(tensor.data_type)
    if array.dtype != want and want != np.dtype(object):
        array = array.astype(want)
    return array


def import_type(type_proto: onnx.TypeProto) -> ValueType | None:
    """A TypeProto as an IR type; None when the proto carries no type."""
    kind = type_proto.WhichOneof("value")
    if kind == "tensor_type":
        t = type_proto.tensor_type
        if not t.elem_type:
            return None
        shape = None
        if t.HasField("shape"):
            shape = tuple(
                d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim
            )
        return TensorType(str(to_numpy_dtype(t.elem_type)), shape)
    if kind == "sequence_type":
        elem = import_type(type_proto.sequence_type.elem_type)
        return SequenceType(elem if isinstance(elem, TensorType) else None)
    if kind == "optional_type":
        return OptionalType(import_type(type_proto.optional_type.elem_type))
    return None


def import_attribute(attr: onnx.AttributeProto, outer: set[str], opsets: tuple) -> Any:
    """An AttributeProto as a hashable Python value (tuples, Const, Graph)."""
    A = onnx.AttributeProto
    kind = attr.type
    if kind == A.FLOAT:
        return float(attr.f)
    if kind == A.INT:
        return int(attr.i)
    if kind == A.STRING:
        return attr.s.decode("utf-8", errors="replace")
    if kind == A.TENSOR:
        return Const(tensor_to_array(attr.t))
    if kind == A.SPARSE_TENSOR:
        return Const(_sparse_to_dense(attr.sparse_tensor))
    if kind == A.GRAPH:
        return import_graph(attr.g, outer=outer, opsets=opsets)
    if kind == A.FLOATS:
        return tuple(float(v) for v in attr.floats)
    if kind == A.INTS:
        return tuple(int(v) for v in attr.ints)
    if kind == A.STRINGS:
        return tuple(s.decode("utf-8", errors="replace") for s in attr.strings)
    if kind == A.TENSORS:
        return tuple(Const(tensor_to_array(t)) for t in attr.tensors)
    if kind == A.GRAPHS:
        return tuple(import_graph(g, outer=outer, opsets=opsets) for g in attr.graphs)
    if kind == A.TYPE_PROTO:
        return import_type(attr.tp)
    if kind == A.TYPE_PROTOS:
        return tuple(import_type(t) for t in attr.type_protos)
    raise ModelLoadError(f"attribute '{attr.name}' has unsupported type {kind}")


def _sparse_to_dense(sparse: onnx.SparseTensorProto) -> np.ndarray:
    values = tensor_to_array(sparse.values)
    indices = tensor_to_array(sparse.indices).astype(np.int64)
    dense = np.zeros(int(np.prod(sparse.dims)), dtype=values.dtype)
    if indices.ndim == 2:
        indices = np.ravel_multi_index(tuple(indices.T), tuple(sparse.dims))
    dense[indices.reshape(-1)] = values.reshape(-1)
    return dense.reshape(tuple(sparse.dims))


def import_graph(
    g: onnx.GraphProto,
    *,
    outer: set[str] | None = None,
    opsets: tuple = (("", 21),),
    weights: dict[str, np.ndarray] | None = None,
) -> Graph:
    """Imports a GraphProto. Large initializers go to `weights` when it is given."""
    outer = set(outer or ())
    initializers = {t.name: tensor_to_array(t) for t in g.initializer}
    for sparse in g.sparse_initializer:
        initializers[sparse.values.name] = _sparse_to_dense(sparse)
    types: dict[str, ValueType] = {}
    for info in list(g.input) + list(g.value_info) + list(g.output):
        t = import_type(info.type)
        if t is not None:
            types[info.name] = t
    constants: dict[str, Const] = {}
    weight_names: list[str] = []
    for name, array in initializers.items():
        types.setdefault(name, TensorType(str(array.dtype), tuple(array.shape)))
        is_large = array.size > SMALL_CONSTANT_ELEMENTS and array.dtype.kind == "f"
        if weights is not None and is_large:
            weights[name] = array
            weight_names.append(name)
        else:
            constants[name] = Const(array)
    inputs = tuple(i.name for i in g.input if i.name not in initializers)
    scope = outer | set(inputs) | set(initializers)
    nodes = []
    for index, proto in enumerate(g.node):
        attrs = tuple(sorted(
            (a.name, import_attribute(a, scope | {o for n in g.node for o in n.output}, opsets))
            for a in proto.attribute
        ))
        nodes.append(Node(
            op_type=proto.op_type,
            inputs=tuple(proto.input),
            outputs=tuple(proto.output),
            attrs=attrs,
            domain="" if proto.domain == "ai.onnx" else proto.domain,
            name=proto.name or f"{proto.op_type}_{index}",
        ))
    try:
        ordered = topological_order(nodes, scope | {""})
    except ValueError as error:
        raise ModelLoadError(f"graph '{g.name}': {error}") from None
    return Graph(
        nodes=ordered,
        inputs=inputs,
        outputs=tuple(o.name for o in g.output),
        types=tuple(sorted(types.items())),
        constants=tuple(sorted(constants.items())),
        weights=tuple(weight_names),
        opsets=opsets,
        name=g.name or "graph",
    )


def import_model(model: onnx.ModelProto, *, source: str = "") -> Model:
    """Imports a checked, shape-inferred ModelProto into a Model."""
    opsets = tuple(sorted(
        ("" if o.domain == "ai.onnx" else o.domain, int(o.version)) for o in model.opset_import
    ))
    weights: dict[str, np.ndarray] = {}
    try:
        graph = import_graph(model.graph, opsets=opsets, weights=weights)
    except ModelLoadError as error:
        raise ModelLoadError(f"{source}: {error}") from None
    return Model(graph=graph, weights=weights, source=source)

