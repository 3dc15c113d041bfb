"""Binding input shapes, folding what is constant, and typing every value.

`settle` runs the interpreter once under `jax.eval_shape`. Nodes whose inputs are
all known fold to constants on the way (shape subgraphs, ConstantOfShape weights),
and every remaining value gets a static shape and dtype. Large folded tensors
become weights (executable arguments); small ones stay constants (structure).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import numpy as np

from autofuse.errors import ShapeError
from autofuse.ir import (
    SMALL_CONSTANT_ELEMENTS,
    Const,
    Model,
    TensorType,
    ValueType,
    live_nodes,
    subgraph_free_values,
)
from autofuse.lowering import evaluate, value_type

Shapes = Mapping[str, Sequence[int]]


def bind_input_shapes(model: Model, shapes: Shapes | None = None) -> Model:
    """Replaces symbolic input dims with the given sizes; errors name what is missing."""
    shapes = dict(shapes or {})
    unknown = set(shapes) - set(model.graph.inputs)
    if unknown:
        raise ShapeError(
            f"{model.source}: no input named {sorted(unknown)}; inputs are {list(model.graph.inputs)}"
        )
    types = dict(model.graph.types)
    for name in model.graph.inputs:
        declared = types.get(name)
        if name in shapes:
            dtype = declared.dtype if isinstance(declared, TensorType) else "float32"
            types[name] = TensorType(dtype, tuple(int(d) for d in shapes[name]))
            continue
        if not isinstance(declared, TensorType) or declared.shape is None:
            raise ShapeError(f"{model.source}: input '{name}' has no declared shape; pass --shape {name}=DxDx...")
        dynamic = [d for d in declared.shape if not isinstance(d, int) or d <= 0]
        if dynamic:
            raise ShapeError(
                f"{model.source}: input '{name}' has dynamic dimension(s) {dynamic} in shape "
                f"{list(declared.shape)}; pass --shape {name}=" + "x".join(
                    str(d) if isinstance(d, int) and d > 0 else "N" for d in declared.shape)
            )
    return Model(model.graph.replace(types=tuple(sorted(types.items()))), model.weights, model.source)


def _abstract(t: ValueType | None, name: str, source: str) -> jax.ShapeDtypeStruct:
    if not isinstance(t, TensorType) or not t.is_static:
        raise ShapeError(f"{source}: input '{name}' needs a static shape, got {t}")
    return jax.ShapeDtypeStruct(tuple(t.shape), np.dtype(t.dtype))


def settle(model: Model, shapes: Shapes | None = None) -> Model:
    """Folds constants and infers a static type for every value of the model."""
    model = bind_input_shapes(model, shapes)
    graph = model.graph
    concrete: dict[str, np.ndarray] = {}
    inferred: dict[str, ValueType] = {}

    def record(name: str, value: Any) -> None:
        if isinstance(value, np.ndarray):
            concrete[name] = value
        t = value_type(value)
        if t is not None:
            inferred[name] = t

    abstract_inputs = {n: _abstract(graph.type_of(n), n, model.source) for n in graph.inputs}
    abstract_weights = {n: jax.ShapeDtypeStruct(w.shape, w.dtype) for n, w in model.weights.items()}
    jax.eval_shape(
        lambda w, x: evaluate(graph, x, w, record=record, source=model.source),
        abstract_weights,
        abstract_inputs,
    )
    return _rebuild(model, concrete, inferred)


def _rebuild(model: Model, concrete: dict[str, np.ndarray], inferred: dict[str, ValueType]) -> Model:
    graph = model.graph
    kept = [n for n in graph.nodes if not (n.outputs and all((not o) or o in concrete for o in n.outputs))]
    kept = live_nodes(kept, graph.outputs)
    used = {i for n in kept for i in n.inputs if i} | set(graph.outputs) | subgraph_free_values(kept)
    constants = dict(graph.constants)
    weights = {k: v for k, v in model.weights.items() if k in used}
    for name, array in concrete.items():
        if name not in used:
            continue
        if array.size > SMALL_CONSTANT_ELEMENTS and array.dtype.kind == "f":
            weights[name] = array
        else:
            constants[name] = Const(array)
    constants = {k: v for k, v in constants.items() if k in used}
    types = dict(graph.types)
    types.update(inferred)
    new_graph = graph.replace(
        nodes=tuple(kept),
        types=tuple(sorted(types.items())),
        constants=tuple(sorted(constants.items())),
        weights=tuple(sorted(weights)),
    )
    return Model(new_graph, weights, model.source)
