"""Control flow: If, Loop and Scan, whose bodies are subgraph attributes.

A branch or loop whose deciding value is known at trace time runs in Python (only
the taken branch, as many iterations as needed). Otherwise If becomes
`jax.lax.cond` and Loop `jax.lax.while_loop`, which need every branch/iteration to
keep the same shapes; when they do not, a `ShapeError` sends the backend to its
op-by-op path, where every value is concrete. Scan is always `jax.lax.scan`.
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from autofuse.errors import ShapeError
from autofuse.lowering import is_concrete
from autofuse.ops.registry import MANY_TO_MANY, Ctx, op


def _truth(value: Any) -> bool | None:
    """The Python truth of a concrete scalar condition, or None if traced."""
    if value is None:
        return True
    if is_concrete(value):
        return bool(np.asarray(value).reshape(-1)[0])
    return None


def _same_structure(a: Sequence[Any], b: Sequence[Any]) -> bool:
    """True when two output lists have the same tree structure, shapes and dtypes."""
    ta, tb = jax.tree_util.tree_structure(list(a)), jax.tree_util.tree_structure(list(b))
    if ta != tb:
        return False
    la, lb = jax.tree_util.tree_leaves(list(a)), jax.tree_util.tree_leaves(list(b))
    return all(np.shape(x) == np.shape(y) and jnp.result_type(x) == jnp.result_type(y) for x, y in zip(la, lb))


def _as_jax(tree: Any) -> Any:
    return jax.tree_util.tree_map(jnp.asarray, tree)


@op("If", mapping=MANY_TO_MANY)
def if_(ctx: Ctx, cond):
    then_graph, else_graph = ctx.attr("then_branch"), ctx.attr("else_branch")
    taken = _truth(cond)
    if taken is not None:
        outputs = ctx.run_subgraph(then_graph if taken else else_graph, [])
        return tuple(outputs)
    # Traced condition: both branches must agree on shapes for lax.cond.
    then_shapes = jax.eval_shape(lambda: ctx.run_subgraph(then_graph, []))
    else_shapes = jax.eval_shape(lambda: ctx.run_subgraph(else_graph, []))
    if not _same_structure(then_shapes, else_shapes):
        raise ShapeError(f"{ctx.node.label}: branches produce different shapes, "
                         "so the condition must be known at compile time")
    pred = jnp.reshape(jnp.asarray(cond), (-1,))[0].astype(bool)
    outputs = jax.lax.cond(
        pred,
        lambda: _as_jax(list(ctx.run_subgraph(then_graph, []))),
        lambda: _as_jax(list(ctx.run_subgraph(else_graph, []))),
    )
    return tuple(outputs)


def _stack_scan_outputs(per_step: list[list[Any]], count: int, body_types: Sequence[Any]) -> list[Any]:
    """Stacks each scan output over the iterations (axis 0)."""
    stacked = []
    for k in range(count):
        items = [step[k] for step in per_step]
        if items and all(is_concrete(v) for v in items):
            stacked.append(np.stack([np.asarray(v) for v in items]))
        elif items:
            stacked.append(jnp.stack(items))
        else:
            t = body_types[k]
            dtype = np.dtype(t.dtype) if t is not None else np.float32
            shape = tuple(d if isinstance(d, int) else 0 for d in (t.shape or ())) if t is not None else ()
            stacked.append(np.zeros((0,) + shape, dtype))
    return stacked


@op("Loop", mapping=MANY_TO_MANY)
def loop(ctx: Ctx, max_trip, cond, *carried):
    body = ctx.attr("body")
    n_carried = len(carried)
    n_scan = len(body.outputs) - 1 - n_carried
    trips = None if max_trip is None else (int(np.asarray(max_trip).reshape(-1)[0]) if is_concrete(max_trip) else None)
    if max_trip is not None and trips is None:
        return _while_loop(ctx, body, max_trip, cond, list(carried), n_scan)
    state = list(carried)
    keep_going = _truth(cond)
    per_step: list[list[Any]] = []
    i = 0
    while (trips is None or i < trips):
        if keep_going is None:  # the condition became a traced value
            if per_step:
                raise ShapeError(f"{ctx.node.label}: the loop condition depends on runtime values "
                                 "and the loop has scan outputs, whose length would be dynamic")
            rest = None if trips is None else np.asarray(trips - i, np.int64)
            return tuple(_while_loop(ctx, body, rest, cond, state, n_scan, start=i))
        if not keep_going:
            break
        outputs = ctx.run_subgraph(body, [np.asarray(i, np.int64), np.asarray(True), *state])
        cond = outputs[0]
        keep_going = _truth(cond)
        state = list(outputs[1:1 + n_carried])
        per_step.append(list(outputs[1 + n_carried:]))
        i += 1
    body_types = [body.type_of(o) for o in body.outputs[1 + n_carried:]]
    return tuple(state + _stack_scan_outputs(per_step, n_scan, body_types))


def _while_loop(ctx: Ctx, body, max_trip, cond, state: list[Any], n_scan: int, start: int = 0) -> list[Any]:
    """A Loop with a runtime trip count or condition: `jax.lax.while_loop`."""
    if n_scan:
        raise ShapeError(f"{ctx.node.label}: a loop with scan outputs needs its trip count "
                         "and condition at compile time")
    limit = jnp.asarray(np.iinfo(np.int64).max if max_trip is None else max_trip, jnp.int64).reshape(())
    go = jnp.asarray(True if cond is None else cond).reshape(()).astype(bool)
    init = (jnp.asarray(0, jnp.int64), go, _as_jax(state))

    def keep(carry):
        i, alive, _ = carry
        return jnp.logical_and(alive, i < limit)

    def step(carry):
        i, alive, values = carry
        outputs = ctx.run_subgraph(body, [i + start, alive, *values])
        new_values = _as_jax(list(outputs[1:1 + len(values)]))
        if not _same_structure(new_values, values):
            raise ShapeError(f"{ctx.node.label}: loop-carried values change shape, "
                             "so the trip count and condition must be known at compile time")
        return i + 1, jnp.asarray(outputs[0]).reshape(()).astype(bool), new_values

    _, _, final = jax.lax.while_loop(keep, step, init)
    return list(final)


def _scan_run(ctx: Ctx, body, states: list[Any], xs: list[Any], in_axes: Sequence[int],
              in_dirs: Sequence[int], out_axes: Sequence[int], out_dirs: Sequence[int]) -> list[Any]:
    """One ONNX scan over the given inputs; returns final states then scan outputs."""
    seqs = []
    for x, axis, direction in zip(xs, in_axes, in_dirs):
        x = jnp.moveaxis(jnp.asarray(x), axis % x.ndim, 0)
        seqs.append(jnp.flip(x, 0) if direction else x)
    n_state = len(states)

    def step(carry, slices):
        outputs = ctx.run_subgraph(body, [*carry, *slices])
        return _as_jax(list(outputs[:n_state])), _as_jax(list(outputs[n_state:]))

    final, ys = jax.lax.scan(step, _as_jax(list(states)), seqs)
    results = []
    for k, y in enumerate(ys):
        if k < len(out_dirs) and out_dirs[k]:
            y = jnp.flip(y, 0)
        axis = out_axes[k] if k < len(out_axes) else 0
        results.append(jnp.moveaxis(y, 0, axis % y.ndim))
    return list(final) + results


@op("Scan", mapping=MANY_TO_MANY, since=9)
def scan(ctx: Ctx, *inputs):
    body = ctx.attr("body")
    n_in = int(ctx.attr("num_scan_inputs"))
    states, xs = list(inputs[:len(inputs) - n_in]), list(inputs[len(inputs) - n_in:])
    n_out = len(body.outputs) - len(states)
    in_axes = ctx.attr("scan_input_axes") or (0,) * n_in
    in_dirs = ctx.attr("scan_input_directions") or (0,) * n_in
    out_axes = ctx.attr("scan_output_axes") or (0,) * n_out
    out_dirs = ctx.attr("scan_output_directions") or (0,) * n_out
    return tuple(_scan_run(ctx, body, states, xs, in_axes, in_dirs, out_axes, out_dirs))


@op("Scan", mapping=MANY_TO_MANY, since=8)
def scan8(ctx: Ctx, sequence_lens, *inputs):
    """Opset 8: a leading batch axis on every input; scan axis 1."""
    if sequence_lens is not None:
        ctx.static(sequence_lens, "sequence_lens")
    body = ctx.attr("body")
    n_in = int(ctx.attr("num_scan_inputs"))
    states, xs = list(inputs[:len(inputs) - n_in]), list(inputs[len(inputs) - n_in:])
    n_out = len(body.outputs) - len(states)
    in_dirs = ctx.attr("directions") or (0,) * n_in
    batch = int(np.shape(states[0] if states else xs[0])[0])
    per_batch = []
    for b in range(batch):
        per_batch.append(_scan_run(ctx, body, [s[b] for s in states], [x[b] for x in xs],
                                   (0,) * n_in, in_dirs, (0,) * n_out, (0,) * n_out))
    return tuple(jnp.stack([run[k] for run in per_batch]) for k in range(len(per_batch[0])))
