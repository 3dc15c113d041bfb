"""The ONNX Backend API (`prepare(model) -> rep`, `rep.run(inputs)`) over autofuse.

Each `run` settles the model for the shapes it is given and compiles it through
XLA with one `jit`; executables are cached per input signature. Inputs whose
*values* decide shapes (a Reshape's target, a Slice's bounds ...) are bound as
compile-time constants. A graph whose output shapes depend on runtime data
(NonZero, Unique ...) cannot be staged into one executable; it runs op by op,
each op still compiled by XLA, and `rep.last_mode` says which path ran.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import onnx
from onnx.backend.base import Backend, BackendRep

from autofuse.errors import LoweringError, ShapeError
from autofuse.executable import Executable
from autofuse.frontend import import_model, read_model_bytes
from autofuse.ir import Const, Model, TensorType
from autofuse.lowering import evaluate, spec_for
from autofuse.settle import settle

JIT = "jit"
EAGER = "eager"


def static_inputs(model: Model) -> set[str]:
    """Graph inputs whose values must be known at compile time."""
    graph = model.graph
    producers = graph.producers()
    needed: set[str] = set()
    stack = []
    for node in graph.nodes:
        spec = spec_for(node, graph, model.source)
        slots = range(len(node.inputs)) if spec.dynamic_shape else spec.static
        stack.extend(node.inputs[i] for i in slots if i < len(node.inputs) and node.inputs[i])
    while stack:
        value = stack.pop()
        if value in needed:
            continue
        needed.add(value)
        producer = producers.get(value)
        if producer is not None:
            stack.extend(i for i in producer.inputs if i)
    return needed & set(graph.inputs)


class AutofuseRep(BackendRep):
    """A prepared model: compiles per input signature and runs through XLA."""

    def __init__(self, model: Model) -> None:
        self.model = model
        self.static_names = static_inputs(model)
        self._cache: dict[Any, Executable] = {}
        self.last_mode: str | None = None

    def run(self, inputs: Any, **kwargs: Any) -> tuple[np.ndarray, ...]:
        named = self._name_inputs(inputs)
        try:
            if any(not isinstance(self.model.graph.type_of(k), TensorType) for k in named):
                raise ShapeError("sequence and optional inputs run op by op")
            if any(getattr(self.model.graph.type_of(k), "dtype", None) == "object" for k in (*named, *self.model.graph.outputs)):
                raise ShapeError("string tensors run op by op")
            executable = self._executable(named)
            self.last_mode = JIT
            return tuple(executable({k: v for k, v in named.items() if k not in self.static_names}))
        except (ShapeError, LoweringError):
            self.last_mode = EAGER
            outputs = evaluate(self.model.graph, {k: _to_host(v) for k, v in named.items()},
                               self.model.weights, source=self.model.source)
            return tuple(_to_host(v) for v in outputs)

    def _name_inputs(self, inputs: Any) -> dict[str, Any]:
        names = self.model.graph.inputs
        if isinstance(inputs, dict):
            return dict(inputs)
        if not isinstance(inputs, (list, tuple)):
            inputs = [inputs]
        return dict(zip(names, inputs))

    def _executable(self, named: dict[str, Any]) -> Executable:
        key = tuple(
            (k, Const(np.asarray(v))) if k in self.static_names else (k, np.shape(v), np.asarray(v).dtype.str)
            for k, v in sorted(named.items())
        )
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        model = self.model
        graph = model.graph
        for name in self.static_names:
            graph = graph.replace(
                inputs=tuple(i for i in graph.inputs if i != name),
                constants=graph.constants + ((name, Const(np.asarray(named[name]))),),
            )
        shapes = {k: np.shape(v) for k, v in named.items() if k not in self.static_names}
        types = dict(graph.types)
        for k, v in named.items():
            if k in shapes:
                types[k] = TensorType(str(np.asarray(v).dtype), tuple(np.shape(v)))
        graph = graph.replace(types=tuple(sorted(types.items())))
        settled = settle(Model(graph, model.weights, model.source), shapes)
        executable = Executable(settled).compile()
        self._cache[key] = executable
        return executable


def _to_host(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_to_host(v) for v in value]
    return None if value is None else np.asarray(value)


class AutofuseBackend(Backend):
    """ONNX backend whose every model runs through autofuse's XLA lowering."""

    @classmethod
    def prepare(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: Any) -> AutofuseRep:
        source = model.graph.name or "<model>"
        proto = read_model_bytes(model.SerializeToString(), source=source)
        return AutofuseRep(import_model(proto, source=source))

    @classmethod
    def run_model(cls, model: onnx.ModelProto, inputs: Any, device: str = "CPU", **kwargs: Any) -> Sequence[Any]:
        return cls.prepare(model, device).run(inputs)

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return device in ("CPU", "CUDA")


prepare = AutofuseBackend.prepare
run_model = AutofuseBackend.run_model
supports_device = AutofuseBackend.supports_device
