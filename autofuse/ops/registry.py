"""The op registry: one entry per ONNX op (and opset range) with everything about it.

An entry holds the op's JAX lowering, its DNNFusion mapping type, which inputs must
be known at compile time, and its cost features. Lowerings are small pure functions
registered with `@op(...)`:

    @op("Add", mapping=ONE_TO_MANY)          # broadcasting elementwise
    def add(ctx: Ctx, a, b):
        return a + b

A lowering receives a `Ctx` (the node's attributes, opset, declared output types)
and the input values: jax arrays, numpy arrays for inputs listed in `static`
(guaranteed concrete), or None for omitted optional inputs. It returns one value or
a tuple/list of values, one per node output.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Callable, Sequence

import numpy as np

from autofuse.errors import ShapeError
from autofuse.ir import Node, TensorType, ValueType


class Mapping(IntEnum):
    """DNNFusion's mapping types, ordered from simplest to most complex."""

    ONE_TO_ONE = 0
    REORGANIZE = 1
    SHUFFLE = 2
    ONE_TO_MANY = 3
    MANY_TO_MANY = 4


ONE_TO_ONE = Mapping.ONE_TO_ONE
REORGANIZE = Mapping.REORGANIZE
SHUFFLE = Mapping.SHUFFLE
ONE_TO_MANY = Mapping.ONE_TO_MANY
MANY_TO_MANY = Mapping.MANY_TO_MANY


@dataclass
class Ctx:
    """What a lowering may know about its node besides the input values."""

    node: Node
    opset: int
    input_types: Sequence[ValueType | None]
    output_types: Sequence[ValueType | None]
    # Evaluates a subgraph attribute: (graph, outer values, inputs) -> outputs.
    run_subgraph: Callable[..., list[Any]] | None = None
    outer: dict[str, Any] = field(default_factory=dict)
    # True while folding constants eagerly: every input is concrete.
    eager: bool = False

    def attr(self, name: str, default: Any = None) -> Any:
        return self.node.attr(name, default)

    def out_dtype(self, index: int = 0) -> np.dtype | None:
        t = self.output_types[index] if index < len(self.output_types) else None
        return np.dtype(t.dtype) if isinstance(t, TensorType) else None

    def static(self, value: Any, what: str = "input") -> np.ndarray:
        """The concrete value of an input that decides a shape; a clear error if traced."""
        if value is None:
            return None
        try:
            return np.asarray(value)
        except Exception:  # a jax tracer refuses conversion
            raise ShapeError(
                f"{self.node.label}: {what} must be known at compile time, "
                "but it depends on a runtime input"
            ) from None


Lowering = Callable[..., Any]
CostFn = Callable[[Ctx, Sequence[TensorType | None], Sequence[TensorType | None]], float]


@dataclass(frozen=True)
class OpSpec:
    """Everything autofuse knows about one ONNX op over an opset range."""

    op_type: str
    domain: str
    since: int
    lower: Lowering
    mapping: Mapping
    static: tuple[int, ...] = ()
    # Output shapes depend on input *values* (NonZero, Unique ...): jit cannot stage it.
    dynamic_shape: bool = False
    # Op draws random numbers or has side effects: never folded as a constant.
    nondeterministic: bool = False
    flops: CostFn | None = None


_REGISTRY: dict[tuple[str, str], list[OpSpec]] = {}


def op(
    op_type: str | Sequence[str],
    *,
    mapping: Mapping,
    since: int = 1,
    domain: str = "",
    static: Sequence[int] = (),
    dynamic_shape: bool = False,
    nondeterministic: bool = False,
    flops: CostFn | None = None,
) -> Callable[[Lowering], Lowering]:
    """Registers a lowering for one or more op types from opset `since` on."""
    names = [op_type] if isinstance(op_type, str) else list(op_type)

    def register(fn: Lowering) -> Lowering:
        for name in names:
            spec = OpSpec(name, domain, since, fn, mapping, tuple(static), dynamic_shape,
                          nondeterministic, flops)
            versions = _REGISTRY.setdefault((domain, name), [])
            versions[:] = [v for v in versions if v.since != since] + [spec]
            versions.sort(key=lambda v: v.since)
        return fn

    return register


def lookup(op_type: str, opset: int, domain: str = "") -> OpSpec | None:
    """The entry in force for `op_type` at `opset`, or None if unsupported."""
    if domain == "ai.onnx":
        domain = ""
    versions = _REGISTRY.get((domain, op_type))
    if not versions:
        return None
    chosen = None
    for spec in versions:
        if spec.since <= opset:
            chosen = spec
    return chosen or versions[0]


def registered_ops() -> list[tuple[str, str]]:
    """All (domain, op_type) pairs with a lowering."""
    return sorted(_REGISTRY)
