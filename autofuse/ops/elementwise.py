"""Elementwise ops: unary math, binary arithmetic, comparisons, logic, activations."""
from __future__ import annotations

import jax.numpy as jnp

from autofuse.ops.registry import ONE_TO_MANY, ONE_TO_ONE, Ctx, op


@op("Abs", mapping=ONE_TO_ONE)
def abs_(ctx: Ctx, x):
    return jnp.abs(x)


@op("Relu", mapping=ONE_TO_ONE)
def relu(ctx: Ctx, x):
    return jnp.maximum(x, jnp.zeros((), x.dtype))


@op("Add", mapping=ONE_TO_MANY)
def add(ctx: Ctx, a, b):
    return jnp.add(a, b)
