"""autofuse-internal ops (domain "autofuse"): channels-last forms of spatial ops.

They exist only in rewritten models (the layout rules put them there), never in
ONNX files. Each takes the attributes of its ONNX counterpart but reads and writes
(N, spatial..., C) tensors, so a conv network can stay channels-last between its
edges:

* `ConvNHWC(x, w, b?)`: x is NHWC, w is HWIO (converted once at rewrite time).
* `MaxPoolNHWC`, `AveragePoolNHWC`, `GlobalAveragePoolNHWC`, `GlobalMaxPoolNHWC`.
"""
from __future__ import annotations

from types import SimpleNamespace

import jax.numpy as jnp
from jax import lax

from autofuse.ops.nn import _lowest, _merge, _pool_window, _window_counts, _window_pads
from autofuse.ops.registry import MANY_TO_MANY, Ctx, op

DOMAIN = "autofuse"


def _channels_first_shape(x) -> SimpleNamespace:
    """A stand-in with x's NCHW shape, for the NCHW window helpers of `nn`."""
    shape = (x.shape[0], x.shape[-1]) + tuple(x.shape[1:-1])
    return SimpleNamespace(shape=shape, ndim=len(shape))


def _ints(value, count: int) -> list[int]:
    return [int(v) for v in value] if value else [1] * count


@op("ConvNHWC", mapping=MANY_TO_MANY, domain=DOMAIN)
def conv_nhwc(ctx: Ctx, x, w, b=None):
    """A channels-last convolution: NHWC input, HWIO kernel, NHWC output."""
    rank = x.ndim - 2
    strides = _ints(ctx.attr("strides"), rank)
    dilations = _ints(ctx.attr("dilations"), rank)
    pads = _window_pads(ctx, x.shape[1:-1], w.shape[:rank], strides, dilations)
    y = lax.conv_general_dilated(
        x, w.astype(x.dtype), window_strides=strides, padding=pads, rhs_dilation=dilations,
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=int(ctx.attr("group", 1)),
    )
    return y if b is None else y + b.astype(y.dtype)


def _reduce_window_nhwc(x, init, fn, kernel, strides, dilations, pads):
    """reduce_window over the spatial dims of an (N, spatial..., C) tensor."""
    return lax.reduce_window(
        x, jnp.asarray(init, x.dtype), fn, (1,) + tuple(kernel) + (1,), (1,) + tuple(strides) + (1,),
        [(0, 0)] + [tuple(p) for p in pads] + [(0, 0)], window_dilation=(1,) + tuple(dilations) + (1,),
    )


@op("MaxPoolNHWC", mapping=MANY_TO_MANY, domain=DOMAIN)
def max_pool_nhwc(ctx: Ctx, x):
    kernel, strides, dilations, pads, extra = _pool_window(ctx, _channels_first_shape(x))
    return _reduce_window_nhwc(x, _lowest(x.dtype), lax.max, kernel, strides, dilations, _merge(pads, extra))


@op("AveragePoolNHWC", mapping=MANY_TO_MANY, domain=DOMAIN)
def average_pool_nhwc(ctx: Ctx, x):
    kernel, strides, dilations, pads, extra = _pool_window(ctx, _channels_first_shape(x))
    total = _reduce_window_nhwc(x, 0, lax.add, kernel, strides, dilations, _merge(pads, extra))
    counts = _window_counts(x.shape[1:-1], kernel, strides, dilations, pads, extra,
                            bool(ctx.attr("count_include_pad", 0)))
    return total / jnp.asarray(counts.reshape(counts.shape[2:] + (1,)), x.dtype)


@op("GlobalAveragePoolNHWC", mapping=MANY_TO_MANY, domain=DOMAIN)
def global_average_pool_nhwc(ctx: Ctx, x):
    return jnp.mean(x, axis=tuple(range(1, x.ndim - 1)), keepdims=True)


@op("GlobalMaxPoolNHWC", mapping=MANY_TO_MANY, domain=DOMAIN)
def global_max_pool_nhwc(ctx: Ctx, x):
    return jnp.max(x, axis=tuple(range(1, x.ndim - 1)), keepdims=True)
