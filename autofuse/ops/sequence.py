"""Sequences and optionals.

An ONNX sequence is a Python list of arrays and an empty optional is `None`, so
sequence ops are list manipulations at trace time; positions and split sizes
must therefore be known at compile time (`static=`).
"""
from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

from autofuse.ops.registry import MANY_TO_MANY, ONE_TO_ONE, REORGANIZE, Ctx, op


def _position(value: Any, length: int, default: int, *, inserting: bool = False) -> int:
    """A sequence position (negative counts from the end), range-checked."""
    if value is None:
        return default
    pos = int(np.asarray(value).reshape(-1)[0])
    limit = length + 1 if inserting else length
    if pos < 0:
        pos += length
    if not 0 <= pos < limit:
        raise IndexError(f"position {value} is out of range for a sequence of {length}")
    return pos


@op("SequenceConstruct", mapping=ONE_TO_ONE)
def sequence_construct(ctx: Ctx, *tensors):
    return list(tensors)


@op("SequenceEmpty", mapping=ONE_TO_ONE)
def sequence_empty(ctx: Ctx):
    return []


@op("SequenceInsert", mapping=ONE_TO_ONE, static=(2,))
def sequence_insert(ctx: Ctx, seq, tensor, position=None):
    seq = list(seq)
    seq.insert(_position(position, len(seq), len(seq), inserting=True), tensor)
    return seq


@op("SequenceAt", mapping=ONE_TO_ONE, static=(1,))
def sequence_at(ctx: Ctx, seq, position):
    return seq[_position(position, len(seq), 0)]


@op("SequenceErase", mapping=ONE_TO_ONE, static=(1,))
def sequence_erase(ctx: Ctx, seq, position=None):
    seq = list(seq)
    del seq[_position(position, len(seq), len(seq) - 1)]
    return seq


@op("SequenceLength", mapping=ONE_TO_ONE)
def sequence_length(ctx: Ctx, seq):
    return np.asarray(len(seq), np.int64)


@op("ConcatFromSequence", mapping=MANY_TO_MANY)
def concat_from_sequence(ctx: Ctx, seq):
    axis = int(ctx.attr("axis"))
    if int(ctx.attr("new_axis", 0)):
        return jnp.stack(seq, axis=axis)
    return jnp.concatenate(seq, axis=axis)


@op("SplitToSequence", mapping=REORGANIZE, static=(1,))
def split_to_sequence(ctx: Ctx, x, split=None):
    axis = int(ctx.attr("axis", 0)) % x.ndim
    size = x.shape[axis]
    if split is None:
        pieces = [jnp.take(x, jnp.asarray([i]), axis=axis) for i in range(size)]
        if int(ctx.attr("keepdims", 1)):
            return pieces
        return [jnp.squeeze(p, axis) for p in pieces]
    split = np.asarray(split).astype(np.int64)
    if split.ndim == 0:
        step = int(split)
        sizes = [step] * (size // step) + ([size % step] if size % step else [])
    else:
        sizes = [int(s) for s in split]
    bounds = np.cumsum([0] + sizes)
    return [jnp.asarray(x)[(slice(None),) * axis + (slice(int(a), int(b)),)] for a, b in zip(bounds[:-1], bounds[1:])]


@op("SequenceMap", mapping=MANY_TO_MANY)
def sequence_map(ctx: Ctx, seq, *extra):
    body = ctx.attr("body")
    outputs: list[list[Any]] = [[] for _ in body.outputs]
    for i in range(len(seq)):
        args = [seq[i]] + [e[i] if isinstance(e, list) else e for e in extra]
        for k, value in enumerate(ctx.run_subgraph(body, args)):
            outputs[k].append(value)
    return tuple(outputs)


@op("Optional", mapping=ONE_TO_ONE)
def optional(ctx: Ctx, value=None):
    return value


@op("OptionalHasElement", mapping=ONE_TO_ONE)
def optional_has_element(ctx: Ctx, value=None):
    return np.asarray(value is not None)


@op("OptionalGetElement", mapping=ONE_TO_ONE)
def optional_get_element(ctx: Ctx, value):
    if value is None:
        raise ValueError("OptionalGetElement of an empty optional")
    return value
