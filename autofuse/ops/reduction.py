"""Op lowerings: reduction family (see registry.py for the conventions).

Reduce*, ArgMax/ArgMin, CumSum/CumProd, TopK, Det and the two classification
losses (NegativeLogLikelihoodLoss, SoftmaxCrossEntropyLoss).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from autofuse.ops.registry import MANY_TO_MANY, Ctx, op

# ---------------------------------------------------------------- Reduce* ---

Reducer = Callable[[jax.Array, tuple[int, ...], bool], jax.Array]


def _lowest(dtype: np.dtype):
    """The identity of max: False, the smallest integer, or -inf."""
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return False
    if np.issubdtype(dtype, np.integer):
        return np.iinfo(dtype).min
    return -np.inf


def _highest(dtype: np.dtype):
    """The identity of min: True, the largest integer, or +inf."""
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return True
    if np.issubdtype(dtype, np.integer):
        return np.iinfo(dtype).max
    return np.inf


def _is_int(dtype: np.dtype) -> bool:
    return np.issubdtype(np.dtype(dtype), np.integer) or np.dtype(dtype) == np.bool_


def _sum(x, axes, keep):
    return jnp.sum(x, axis=axes, keepdims=keep, dtype=x.dtype)


def _mean(x, axes, keep):
    if _is_int(x.dtype):
        count = int(np.prod([x.shape[a] for a in axes])) if axes else 1
        total = jnp.sum(x, axis=axes, keepdims=keep, dtype=x.dtype)
        return jnp.trunc(total / count).astype(x.dtype) if count else total
    return jnp.mean(x, axis=axes, keepdims=keep, dtype=x.dtype)


def _max(x, axes, keep):
    return jnp.max(x, axis=axes, keepdims=keep, initial=jnp.asarray(_lowest(x.dtype), x.dtype))


def _min(x, axes, keep):
    return jnp.min(x, axis=axes, keepdims=keep, initial=jnp.asarray(_highest(x.dtype), x.dtype))


def _prod(x, axes, keep):
    return jnp.prod(x, axis=axes, keepdims=keep, dtype=x.dtype)


def _l1(x, axes, keep):
    return _sum(jnp.abs(x), axes, keep)


def _l2(x, axes, keep):
    squares = _sum(x * x, axes, keep)
    if _is_int(x.dtype):
        return jnp.sqrt(squares.astype(np.float64)).astype(x.dtype)
    return jnp.sqrt(squares)


def _log_sum(x, axes, keep):
    return jnp.log(_sum(x, axes, keep))


def _log_sum_exp(x, axes, keep):
    """log(sum(exp(x))), shifted by the max for stability; -inf over nothing."""
    if not axes:
        return jnp.log(jnp.exp(x))
    peak = jax.lax.stop_gradient(_max(x, axes, True))
    peak = jnp.where(jnp.isfinite(peak), peak, jnp.zeros((), x.dtype))
    total = jnp.sum(jnp.exp(x - peak), axis=axes, keepdims=True, dtype=x.dtype)
    result = jnp.log(total) + peak
    return result if keep else jnp.squeeze(result, axis=axes)


def _sum_square(x, axes, keep):
    return _sum(x * x, axes, keep)


def _reduce_axes(x, axes, noop_with_empty_axes: int) -> tuple[int, ...]:
    """Normalised axes to reduce; () means the identity (noop_with_empty_axes)."""
    listed = [] if axes is None else [int(a) for a in np.asarray(axes).reshape(-1)]
    if not listed:
        return () if noop_with_empty_axes else tuple(range(x.ndim))
    return tuple(sorted({a % x.ndim if x.ndim else 0 for a in listed}))


def _reduce(ctx: Ctx, x, axes, reducer: Reducer):
    keep = bool(ctx.attr("keepdims", 1))
    chosen = _reduce_axes(x, axes, ctx.attr("noop_with_empty_axes", 0))
    x = jnp.asarray(x)
    return reducer(x, chosen, keep)


def _register_reduce(name: str, reducer: Reducer, input_since: int) -> None:
    """Registers `name` with axes as an attribute, then as a static input."""

    def with_attr(ctx: Ctx, x):
        return _reduce(ctx, x, ctx.attr("axes"), reducer)

    def with_input(ctx: Ctx, x, axes=None):
        return _reduce(ctx, x, axes, reducer)

    with_attr.__doc__ = f"{name} (axes attribute)."
    with_input.__doc__ = f"{name} (axes input, from opset {input_since})."
    op(name, mapping=MANY_TO_MANY, since=1)(with_attr)
    op(name, mapping=MANY_TO_MANY, since=input_since, static=(1,))(with_input)


for _name, _reducer, _since in (
    ("ReduceSum", _sum, 13),
    ("ReduceMean", _mean, 18),
    ("ReduceMax", _max, 18),
    ("ReduceMin", _min, 18),
    ("ReduceProd", _prod, 18),
    ("ReduceL1", _l1, 18),
    ("ReduceL2", _l2, 18),
    ("ReduceLogSum", _log_sum, 18),
    ("ReduceLogSumExp", _log_sum_exp, 18),
    ("ReduceSumSquare", _sum_square, 18),
):
    _register_reduce(_name, _reducer, _since)
del _name, _reducer, _since


# -------------------------------------------------------- ArgMax / ArgMin ---


def _arg_extreme(ctx: Ctx, x, find: Callable) -> jax.Array:
    """ArgMax/ArgMin along `axis`: int64, first (or last) index of ties."""
    x = jnp.asarray(x)
    axis = int(ctx.attr("axis", 0)) % max(x.ndim, 1)
    keep = bool(ctx.attr("keepdims", 1))
    if ctx.attr("select_last_index", 0):
        flipped = find(jnp.flip(x, axis=axis), axis=axis, keepdims=keep)
        index = (x.shape[axis] - 1) - flipped
    else:
        index = find(x, axis=axis, keepdims=keep)
    return index.astype(np.int64)


@op("ArgMax", mapping=MANY_TO_MANY)
def argmax(ctx: Ctx, x):
    return _arg_extreme(ctx, x, jnp.argmax)


@op("ArgMin", mapping=MANY_TO_MANY)
def argmin(ctx: Ctx, x):
    return _arg_extreme(ctx, x, jnp.argmin)


# ------------------------------------------------------- CumSum / CumProd ---


def _cumulative(ctx: Ctx, x, axis, scan: Callable, identity: int) -> jax.Array:
    """An inclusive or exclusive scan along a static axis, forwards or reversed."""
    x = jnp.asarray(x)
    axis = int(np.asarray(axis).reshape(-1)[0]) % x.ndim
    reverse = bool(ctx.attr("reverse", 0))
    result = scan(x, axis=axis, reverse=reverse)
    if ctx.attr("exclusive", 0) and x.shape[axis]:
        pad_shape = list(x.shape)
        pad_shape[axis] = 1
        fill = jnp.full(pad_shape, identity, x.dtype)
        n = x.shape[axis]
        if reverse:
            kept = jax.lax.slice_in_dim(result, 1, n, axis=axis)
            result = jnp.concatenate([kept, fill], axis=axis)
        else:
            kept = jax.lax.slice_in_dim(result, 0, n - 1, axis=axis)
            result = jnp.concatenate([fill, kept], axis=axis)
    return result


@op("CumSum", mapping=MANY_TO_MANY, since=11, static=(1,))
def cumsum(ctx: Ctx, x, axis):
    return _cumulative(ctx, x, axis, jax.lax.cumsum, 0)


@op("CumProd", mapping=MANY_TO_MANY, since=26, static=(1,))
def cumprod(ctx: Ctx, x, axis):
    return _cumulative(ctx, x, axis, jax.lax.cumprod, 1)


# ------------------------------------------------------------------- TopK ---


def _order_key(x: jax.Array, largest: bool) -> jax.Array:
    """A key whose descending order is the wanted order (ints flip bitwise: no overflow)."""
    if largest:
        return x
    if x.dtype == np.bool_:
        return jnp.logical_not(x)
    if _is_int(x.dtype):
        return jnp.bitwise_not(x)
    return -x


def _top_k(x, k: int, axis: int, largest: bool) -> tuple[jax.Array, jax.Array]:
    """The k largest (smallest) along `axis`, sorted, lower index first on ties."""
    x = jnp.asarray(x)
    axis = axis % x.ndim
    moved = jnp.moveaxis(x, axis, -1)
    _, indices = jax.lax.top_k(_order_key(moved, largest), k)
    values = jnp.take_along_axis(moved, indices, axis=-1)
    return jnp.moveaxis(values, -1, axis), jnp.moveaxis(indices, -1, axis).astype(np.int64)


@op("TopK", mapping=MANY_TO_MANY, since=1)
def topk_v1(ctx: Ctx, x):
    return _top_k(x, int(ctx.attr("k")), int(ctx.attr("axis", -1)), True)


@op("TopK", mapping=MANY_TO_MANY, since=10, static=(1,))
def topk(ctx: Ctx, x, k):
    count = int(np.asarray(k).reshape(-1)[0])
    return _top_k(x, count, int(ctx.attr("axis", -1)), bool(ctx.attr("largest", 1)))


# -------------------------------------------------------------------- Det ---


@op("Det", mapping=MANY_TO_MANY, since=11)
def det(ctx: Ctx, x):
    return jnp.linalg.det(x).astype(x.dtype)


# ----------------------------------------------------------------- Losses ---


def _nll(ctx: Ctx, log_prob, target, weight) -> jax.Array:
    """-log_prob[n, target[n, ...], ...] weighted, with ignore_index and reduction."""
    ignore = ctx.attr("ignore_index")
    reduction = ctx.attr("reduction", "mean")
    reduction = reduction.decode() if isinstance(reduction, bytes) else reduction
    target = jnp.asarray(target).astype(np.int64)
    valid = jnp.ones(target.shape, bool) if ignore is None else target != int(ignore)
    safe = jnp.where(valid, target, 0)
    picked = jnp.take_along_axis(log_prob, safe[:, None], axis=1)[:, 0]
    zero = jnp.zeros((), log_prob.dtype)
    if weight is None:
        w = valid.astype(log_prob.dtype)
    else:
        w = jnp.where(valid, jnp.asarray(weight)[safe], zero)
    loss = -picked * w
    if reduction == "none":
        return loss
    if reduction == "sum":
        return jnp.sum(loss)
    if reduction == "mean":
        return jnp.sum(loss) / jnp.sum(w)
    raise ValueError(f"unknown reduction '{reduction}'")


@op("NegativeLogLikelihoodLoss", mapping=MANY_TO_MANY, since=12)
def negative_log_likelihood_loss(ctx: Ctx, x, target, weight=None):
    return _nll(ctx, jnp.asarray(x), target, weight)


@op("SoftmaxCrossEntropyLoss", mapping=MANY_TO_MANY, since=12)
def softmax_cross_entropy_loss(ctx: Ctx, scores, labels, weights=None):
    log_prob = jax.nn.log_softmax(jnp.asarray(scores), axis=1)
    loss = _nll(ctx, log_prob, labels, weights)
    if len(ctx.node.outputs) > 1:  # the optional log_prob output
        return loss, log_prob
    return loss
