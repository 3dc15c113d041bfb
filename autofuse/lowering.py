"""Evaluate a Graph with the registry's JAX lowerings.

The same interpreter serves three purposes:
  * tracing under `jax.jit` to build one XLA executable (weights are arguments);
  * `jax.eval_shape` to infer every value's shape and dtype;
  * constant folding: a node whose inputs are all concrete (numpy) is evaluated
    at trace time under `jax.ensure_compile_time_eval`, so shape subgraphs
    (Shape -> Gather -> Concat -> Reshape) never reach XLA.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import numpy as np

from autofuse.errors import AutofuseError, LoweringError, UnsupportedOpError
from autofuse.ir import Graph, Node, SequenceType, TensorType, ValueType, subgraph_free_values
from autofuse.ops import registry
from autofuse.ops.registry import Ctx, OpSpec

Recorder = Callable[[str, Any], None]


def is_concrete(value: Any) -> bool:
    """True for values known at trace time (numpy arrays, lists of them, None)."""
    if value is None or isinstance(value, (np.ndarray, np.generic)):
        return True
    if isinstance(value, (list, tuple)):
        return all(is_concrete(v) for v in value)
    return False


def _to_numpy(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return [_to_numpy(v) for v in value]
    return np.asarray(value)


def spec_for(node: Node, graph: Graph, source: str = "") -> OpSpec:
    """The registry entry for a node, or an error naming the node and op."""
    spec = registry.lookup(node.op_type, graph.opset_of(node.domain), node.domain)
    if spec is None:
        where = f"{source}: " if source else ""
        domain = f" in domain '{node.domain}'" if node.domain else ""
        raise UnsupportedOpError(f"{where}{node.label}: op '{node.op_type}'{domain} is not supported by autofuse")
    return spec


def _cast_to_declared(value: Any, declared: ValueType | None) -> Any:
    if not isinstance(declared, TensorType) or value is None or isinstance(value, (list, tuple)):
        return value
    want = np.dtype(declared.dtype)
    if want == object or value.dtype == want:
        return value
    return value.astype(want)


def apply_node(
    node: Node,
    graph: Graph,
    env: Mapping[str, Any],
    *,
    source: str = "",
    fold: bool = True,
) -> list[Any]:
    """Runs one node's lowering on values from `env`; returns one value per output."""
    spec = spec_for(node, graph, source)
    values = [env[name] if name else None for name in node.inputs]
    types = graph.type_map
    ctx = Ctx(
        node=node,
        opset=graph.opset_of(node.domain),
        input_types=[types.get(n) for n in node.inputs],
        output_types=[types.get(n) for n in node.outputs],
        run_subgraph=lambda sub, inputs, _env=env: evaluate(sub, dict(zip(sub.inputs, inputs)), outer=_env, source=source),
        outer=dict(env),
    )
    try:
        for index in spec.static:
            if index < len(values) and values[index] is not None:
                values[index] = ctx.static(values[index], what=f"input {index} ('{node.inputs[index]}')")
        concrete = (
            fold
            and not spec.nondeterministic
            and all(is_concrete(v) for v in values)
            and all(is_concrete(env.get(v)) for v in subgraph_free_values([node]))
        )
        if concrete:
            ctx.eager = True
            with jax.ensure_compile_time_eval():
                result = spec.lower(ctx, *values)
        else:
            result = spec.lower(ctx, *values)
    except AutofuseError:
        raise
    except Exception as error:  # a lowering bug or a bad attribute: name the node
        where = f"{source}: " if source else ""
        raise LoweringError(f"{where}{node.label}: {type(error).__name__}: {error}") from error
    outputs = list(result) if isinstance(result, tuple) else [result]
    if len(node.outputs) == 1 and not isinstance(result, tuple):
        outputs = [result]
    outputs = [_cast_to_declared(v, types.get(n)) for v, n in zip(outputs, node.outputs)]
    if concrete:
        outputs = [_to_numpy(v) for v in outputs]
    return outputs


def evaluate(
    graph: Graph,
    inputs: Mapping[str, Any],
    weights: Mapping[str, Any] | None = None,
    *,
    outer: Mapping[str, Any] | None = None,
    record: Recorder | None = None,
    source: str = "",
    fold: bool = True,
    barriers: frozenset[str] = frozenset(),
) -> list[Any]:
    """Evaluates `graph` on named inputs and weights; returns its outputs in order.

    Values named in `barriers` pass through `jax.lax.optimization_barrier`, so XLA
    cannot fuse their producer with their consumers (a fusion plan's boundaries).
    """
    env: dict[str, Any] = dict(outer or {})
    env.update(graph.constant_map)
    env.update(weights or {})
    env.update(inputs)
    for node in graph.nodes:
        outputs = apply_node(node, graph, env, source=source, fold=fold)
        for name, value in zip(node.outputs, outputs):
            if name:
                if name in barriers and not is_concrete(value):
                    value = jax.lax.optimization_barrier(value)
                env[name] = value
                if record is not None:
                    record(name, value)
    missing = [o for o in graph.outputs if o not in env]
    if missing:
        raise LoweringError(f"{source}: graph outputs {missing} are never produced")
    return [env[o] for o in graph.outputs]


def value_type(value: Any) -> ValueType | None:
    """The IR type of a traced or concrete value."""
    if isinstance(value, (list, tuple)):
        elem = value_type(value[0]) if value else None
        return SequenceType(elem if isinstance(elem, TensorType) else None)
    if value is None or not hasattr(value, "shape"):
        return None
    return TensorType(str(np.dtype(value.dtype)), tuple(int(d) for d in value.shape))
