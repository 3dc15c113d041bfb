"""Neural-network ops: convolution, matrix products, pooling, normalisation, softmax.

All spatial ops work in ONNX's NCHW layout directly: convolutions lower to one
`lax.conv_general_dilated` with the default (N, C, spatial...) / (O, I, spatial...)
dimension numbers, pooling to `lax.reduce_window`, so XLA sees no transposes.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from autofuse.ir import TensorType
from autofuse.ops.registry import MANY_TO_MANY, ONE_TO_MANY, Ctx, op

Pads = list[tuple[int, int]]


# ---------------------------------------------------------------- shared helpers


def _ints(value: Any, count: int, default: int) -> list[int]:
    """An int-list attribute, or `count` copies of `default` when absent."""
    return [int(v) for v in value] if value else [default] * count


def _onnx_pads(pads: Sequence[int] | None, rank: int) -> Pads:
    """ONNX [b1, b2, ..., e1, e2, ...] pads as (begin, end) pairs."""
    if not pads:
        return [(0, 0)] * rank
    return [(int(pads[i]), int(pads[i + rank])) for i in range(rank)]


def _span(kernel: int, dilation: int) -> int:
    """The extent of a dilated window."""
    return (kernel - 1) * dilation + 1


def _same_pads(auto_pad: str, size: int, span: int, stride: int) -> tuple[int, int]:
    """SAME_UPPER / SAME_LOWER padding: output = ceil(size / stride)."""
    out = -(-size // stride)
    total = max(0, (out - 1) * stride + span - size)
    small, big = total // 2, total - total // 2
    return (small, big) if auto_pad == "SAME_UPPER" else (big, small)


def _window_pads(ctx: Ctx, spatial: Sequence[int], kernel: Sequence[int],
                 strides: Sequence[int], dilations: Sequence[int]) -> Pads:
    """Explicit (begin, end) pads for a conv/pool window from `auto_pad` and `pads`."""
    auto_pad = ctx.attr("auto_pad", "NOTSET")
    rank = len(spatial)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        return [_same_pads(auto_pad, spatial[i], _span(kernel[i], dilations[i]), strides[i])
                for i in range(rank)]
    if auto_pad == "VALID":
        return [(0, 0)] * rank
    return _onnx_pads(ctx.attr("pads"), rank)


def _channel_shape(param, rank: int):
    """A per-channel vector reshaped to broadcast against an (N, C, ...) tensor."""
    return jnp.reshape(param, (1, -1) + (1,) * (rank - 2))


def _stash_dtype(dtype: Any) -> np.dtype:
    """The dtype normalisation statistics are computed in: at least float32."""
    return np.dtype(jnp.promote_types(dtype, jnp.float32))


def _static_dims(t: Any) -> tuple[int, ...] | None:
    if isinstance(t, TensorType) and t.is_static:
        return tuple(int(d) for d in t.shape)
    return None


# ---------------------------------------------------------------- cost features


def _conv_flops(ctx: Ctx, inputs: Sequence[Any], outputs: Sequence[Any]) -> float:
    """2 * output elements * input channels per group * kernel elements."""
    w = _static_dims(inputs[1]) if len(inputs) > 1 else None
    # ConvTranspose's W is (C_in, C_out / group, k...): count per input element instead.
    side = _static_dims(inputs[0] if ctx.node.op_type == "ConvTranspose" else outputs[0])
    if w is None or side is None:
        return 0.0
    return 2.0 * math.prod(side) * math.prod(w[1:])


def _matmul_flops(ctx: Ctx, inputs: Sequence[Any], outputs: Sequence[Any]) -> float:
    """2 * output elements * contracted length."""
    a = _static_dims(inputs[0]) if inputs else None
    y = _static_dims(outputs[0]) if outputs else None
    if a is None or y is None or not a:
        return 0.0
    trans_a = ctx.node.op_type == "Gemm" and ctx.attr("transA", 0)
    k = a[0] if trans_a else a[-1]
    return 2.0 * math.prod(y) * k


# ---------------------------------------------------------------- convolution


@op("Conv", mapping=MANY_TO_MANY, flops=_conv_flops)
def conv(ctx: Ctx, x, w, b=None):
    """One NCHW/OIHW convolution; `group` maps to feature_group_count (depthwise too)."""
    rank = x.ndim - 2
    kernel = w.shape[2:]
    strides = _ints(ctx.attr("strides"), rank, 1)
    dilations = _ints(ctx.attr("dilations"), rank, 1)
    pads = _window_pads(ctx, x.shape[2:], kernel, strides, dilations)
    y = lax.conv_general_dilated(
        x, w.astype(x.dtype), window_strides=strides, padding=pads, rhs_dilation=dilations,
        feature_group_count=int(ctx.attr("group", 1)),
    )
    return y if b is None else y + _channel_shape(b.astype(y.dtype), y.ndim)


def _conv_transpose_pads(ctx: Ctx, spatial: Sequence[int], kernel: Sequence[int],
                         strides: Sequence[int], dilations: Sequence[int],
                         out_pad: Sequence[int]) -> Pads:
    """ConvTranspose's (begin, end) crops of the full transposed-conv output."""
    rank = len(spatial)
    auto_pad = ctx.attr("auto_pad", "NOTSET")
    output_shape = ctx.attr("output_shape")
    if output_shape is None and auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
        return _onnx_pads(ctx.attr("pads"), rank)
    if output_shape is None:
        target = [spatial[i] * strides[i] for i in range(rank)]
    else:
        target = [int(v) for v in output_shape][-rank:]
    pads = []
    for i in range(rank):
        full = strides[i] * (spatial[i] - 1) + out_pad[i] + _span(kernel[i], dilations[i])
        total = full - target[i]
        small, big = total // 2, total - total // 2
        pads.append((small, big) if auto_pad == "SAME_UPPER" else (big, small))
    return pads


@op("ConvTranspose", mapping=MANY_TO_MANY, flops=_conv_flops)
def conv_transpose(ctx: Ctx, x, w, b=None):
    """The gradient of Conv: a stride-dilated input convolved with the flipped kernel."""
    rank = x.ndim - 2
    group = int(ctx.attr("group", 1))
    kernel = w.shape[2:]
    strides = _ints(ctx.attr("strides"), rank, 1)
    dilations = _ints(ctx.attr("dilations"), rank, 1)
    out_pad = _ints(ctx.attr("output_padding"), rank, 0)
    crops = _conv_transpose_pads(ctx, x.shape[2:], kernel, strides, dilations, out_pad)
    # ONNX W is (C_in, C_out / group, k...); conv wants (C_out, C_in / group, k...).
    c_in, c_out_g = w.shape[0], w.shape[1]
    w = w.astype(x.dtype).reshape((group, c_in // group, c_out_g) + tuple(kernel))
    w = jnp.swapaxes(w, 1, 2).reshape((group * c_out_g, c_in // group) + tuple(kernel))
    w = jnp.flip(w, axis=tuple(range(2, 2 + rank)))
    padding = []
    for i in range(rank):
        edge = (kernel[i] - 1) * dilations[i]
        padding.append((edge - crops[i][0], edge - crops[i][1] + out_pad[i]))
    y = lax.conv_general_dilated(
        x, w, window_strides=[1] * rank, padding=padding, lhs_dilation=strides,
        rhs_dilation=dilations, feature_group_count=group,
    )
    return y if b is None else y + _channel_shape(b.astype(y.dtype), y.ndim)


def _bilinear_gather(x, coords):
    """Samples x (N, G, Cg, *S) at fractional coords (N, G, D, M), zero outside.

    Returns (N, G, Cg, M): multilinear interpolation over the 2**D corners.
    """
    n, g, cg = x.shape[:3]
    spatial = x.shape[3:]
    flat = x.reshape((n, g, cg, -1))
    low = jnp.floor(coords)
    frac = coords - low
    low = low.astype(jnp.int32)
    result = 0
    for corner in np.ndindex(*(2,) * len(spatial)):
        weight = 1
        index = 0
        inside = True
        for d, bit in enumerate(corner):
            pos = low[:, :, d] + bit
            weight = weight * (frac[:, :, d] if bit else 1 - frac[:, :, d])
            inside = inside & (pos >= 0) & (pos < spatial[d])
            index = index * spatial[d] + jnp.clip(pos, 0, spatial[d] - 1)
        index = jnp.broadcast_to(index[:, :, None, :], (n, g, cg, index.shape[-1]))
        values = jnp.take_along_axis(flat, index, axis=3)
        result = result + values * jnp.where(inside, weight, 0)[:, :, None, :]
    return result


@op("DeformConv", mapping=MANY_TO_MANY, since=19, flops=_conv_flops)
def deform_conv(ctx: Ctx, x, w, offset, b=None, mask=None):
    """Conv whose kernel taps are displaced by learned offsets (bilinear sampling)."""
    n, c = x.shape[:2]
    rank = x.ndim - 2
    kernel = tuple(w.shape[2:])
    taps = math.prod(kernel)
    strides = _ints(ctx.attr("strides"), rank, 1)
    dilations = _ints(ctx.attr("dilations"), rank, 1)
    pads = _onnx_pads(ctx.attr("pads"), rank)
    group = int(ctx.attr("group", 1))
    og = int(ctx.attr("offset_group", 1))
    out = tuple(offset.shape[2:])
    # Undisplaced tap positions: (D, K, *out).
    grids = np.meshgrid(*[np.arange(k) for k in kernel], indexing="ij")
    outs = np.meshgrid(*[np.arange(o) for o in out], indexing="ij")
    base = np.stack([
        (grids[d].reshape((taps,) + (1,) * rank) * dilations[d]
         + outs[d][None] * strides[d] - pads[d][0])
        for d in range(rank)
    ]).astype(x.dtype)
    # ONNX offset layout: (N, og * K * D, *out) -> (N, og, K, D, *out).
    offset = offset.astype(x.dtype).reshape((n, og, taps, rank) + out)
    coords = jnp.moveaxis(offset, 3, 2) + base[None, None]
    coords = coords.reshape((n, og, rank, -1))
    sampled = _bilinear_gather(x.reshape((n, og, c // og) + x.shape[2:]), coords)
    sampled = sampled.reshape((n, og, c // og, taps, -1))
    if mask is not None:
        sampled = sampled * mask.astype(x.dtype).reshape((n, og, 1, taps, -1))
    cols = sampled.reshape((n, group, c // group, taps, -1))
    wg = w.astype(x.dtype).reshape((group, w.shape[0] // group, c // group, taps))
    y = jnp.einsum("gock,ngckm->ngom", wg, cols).reshape((n, w.shape[0]) + out)
    return y if b is None else y + _channel_shape(b.astype(y.dtype), y.ndim)


# ---------------------------------------------------------------- matrix products


@op("MatMul", mapping=MANY_TO_MANY, flops=_matmul_flops)
def matmul(ctx: Ctx, a, b):
    return jnp.matmul(a, b)


@op("Gemm", mapping=MANY_TO_MANY, flops=_matmul_flops)
def gemm(ctx: Ctx, a, b, c=None):
    """alpha * A' @ B' + beta * C; C broadcasts (opset < 7's `broadcast` included)."""
    if ctx.attr("transA", 0):
        a = a.T
    if ctx.attr("transB", 0):
        b = b.T
    y = jnp.matmul(a, b)
    alpha = ctx.attr("alpha", 1.0)
    if alpha != 1.0:
        y = y * jnp.asarray(alpha, y.dtype)
    if c is None:
        return y
    beta = ctx.attr("beta", 1.0)
    c = c.astype(y.dtype)
    if beta != 1.0:
        c = c * jnp.asarray(beta, y.dtype)
    return y + c


@op("Einsum", mapping=MANY_TO_MANY, since=12)
def einsum(ctx: Ctx, *operands):
    equation = ctx.attr("equation").replace(" ", "")
    return jnp.einsum(equation, *operands)


# ---------------------------------------------------------------- pooling


def _pool_window(ctx: Ctx, x) -> tuple[list[int], list[int], list[int], Pads, Pads]:
    """(kernel, strides, dilations, pads, ceil-mode extra end pads) of a pooling node."""
    rank = x.ndim - 2
    kernel = [int(k) for k in ctx.attr("kernel_shape")]
    strides = _ints(ctx.attr("strides"), rank, 1)
    dilations = _ints(ctx.attr("dilations"), rank, 1)
    pads = _window_pads(ctx, x.shape[2:], kernel, strides, dilations)
    extra = [(0, 0)] * rank
    if ctx.attr("ceil_mode", 0):
        extra = []
        for i in range(rank):
            size = x.shape[2 + i] + pads[i][0] + pads[i][1]
            span = _span(kernel[i], dilations[i])
            out = -(-(size - span) // strides[i]) + 1
            if (out - 1) * strides[i] >= x.shape[2 + i] + pads[i][0]:
                out -= 1  # the last window would start inside the end padding
            extra.append((0, max(0, (out - 1) * strides[i] + span - size)))
    return kernel, strides, dilations, pads, extra


def _reduce_window(x, init, fn, kernel, strides, dilations, pads: Pads):
    """reduce_window over the spatial dims of an (N, C, ...) tensor."""
    return lax.reduce_window(
        x, jnp.asarray(init, x.dtype), fn, (1, 1) + tuple(kernel), (1, 1) + tuple(strides),
        [(0, 0), (0, 0)] + [tuple(p) for p in pads], window_dilation=(1, 1) + tuple(dilations),
    )


def _lowest(dtype: Any):
    dtype = np.dtype(dtype)
    return -np.inf if jnp.issubdtype(dtype, jnp.floating) else np.iinfo(dtype).min


def _merge(pads: Pads, extra: Pads) -> Pads:
    return [(p[0] + e[0], p[1] + e[1]) for p, e in zip(pads, extra)]


def _max_pool_indices(x, kernel, strides, dilations, pads: Pads, storage_order: int):
    """MaxPool's second output: flat input indices of each window's first maximum."""
    spatial = x.shape[2:]
    rank = len(spatial)
    padded = jnp.pad(x, [(0, 0), (0, 0)] + pads, constant_values=_lowest(x.dtype))
    outs = [(padded.shape[2 + i] - _span(kernel[i], dilations[i])) // strides[i] + 1
            for i in range(rank)]
    # Per dim: the padded position of tap k at output o, (out, k).
    axes = [np.arange(outs[i])[:, None] * strides[i] + np.arange(kernel[i])[None] * dilations[i]
            for i in range(rank)]
    # Flat padded positions (out..., taps...) -> gather (N, C, out..., K).
    grid_p = np.zeros([1] * (2 * rank), np.int64)
    grid_s = np.zeros([1] * (2 * rank), np.int64)
    for i in range(rank):
        shape = [1] * (2 * rank)
        shape[i], shape[rank + i] = outs[i], kernel[i]
        pos = axes[i].reshape(shape)
        grid_p = grid_p * padded.shape[2 + i] + pos
        src = pos - pads[i][0]
        stride_s = (math.prod(spatial[:i]) if storage_order else math.prod(spatial[i + 1:]))
        grid_s = grid_s + src * stride_s
    taps = math.prod(kernel)
    grid_p = np.broadcast_to(grid_p, outs + kernel).reshape(outs + [taps])
    grid_s = np.broadcast_to(grid_s, outs + kernel).reshape(outs + [taps])
    flat = padded.reshape(x.shape[:2] + (-1,))
    windows = jnp.take(flat, jnp.asarray(grid_p.reshape(-1)), axis=2)
    windows = windows.reshape(x.shape[:2] + tuple(outs) + (taps,))
    best = jnp.argmax(windows, axis=-1)
    local = jnp.take_along_axis(jnp.asarray(grid_s)[None, None], best[..., None], axis=-1)[..., 0]
    plane = math.prod(spatial)
    nc = jnp.arange(x.shape[0] * x.shape[1], dtype=jnp.int64).reshape(x.shape[:2] + (1,) * rank)
    return (nc * plane + local).astype(jnp.int64)


@op("MaxPool", mapping=MANY_TO_MANY)
def max_pool(ctx: Ctx, x):
    kernel, strides, dilations, pads, extra = _pool_window(ctx, x)
    full = _merge(pads, extra)
    y = _reduce_window(x, _lowest(x.dtype), lax.max, kernel, strides, dilations, full)
    if len(ctx.node.outputs) < 2 or not ctx.node.outputs[1]:
        return y
    order = int(ctx.attr("storage_order", 0))
    return y, _max_pool_indices(x, kernel, strides, dilations, full, order)


def _window_counts(spatial: Sequence[int], kernel, strides, dilations, pads: Pads,
                   extra: Pads, include_pad: bool) -> np.ndarray:
    """How many elements each window averages (never the ceil-mode overhang)."""
    ones = np.ones((1, 1) + tuple(spatial), np.float64)
    if include_pad:
        ones = np.pad(ones, [(0, 0), (0, 0)] + pads, constant_values=1.0)
        pads = [(0, 0)] * len(spatial)
    with jax.ensure_compile_time_eval():
        counts = _reduce_window(jnp.asarray(ones), 0.0, lax.add, kernel, strides, dilations,
                                _merge(pads, extra))
    return np.asarray(counts)


@op("AveragePool", mapping=MANY_TO_MANY)
def average_pool(ctx: Ctx, x):
    kernel, strides, dilations, pads, extra = _pool_window(ctx, x)
    total = _reduce_window(x, 0, lax.add, kernel, strides, dilations, _merge(pads, extra))
    counts = _window_counts(x.shape[2:], kernel, strides, dilations, pads, extra,
                            bool(ctx.attr("count_include_pad", 0)))
    return total / jnp.asarray(counts, x.dtype)


@op("LpPool", mapping=MANY_TO_MANY)
def lp_pool(ctx: Ctx, x):
    kernel, strides, dilations, pads, extra = _pool_window(ctx, x)
    p = ctx.attr("p", 2)
    powered = jnp.abs(x) ** jnp.asarray(p, x.dtype)
    total = _reduce_window(powered, 0, lax.add, kernel, strides, dilations, _merge(pads, extra))
    return total ** jnp.asarray(1.0 / p, x.dtype)


def _spatial_axes(x) -> tuple[int, ...]:
    return tuple(range(2, x.ndim))


@op("GlobalAveragePool", mapping=MANY_TO_MANY)
def global_average_pool(ctx: Ctx, x):
    return jnp.mean(x, axis=_spatial_axes(x), keepdims=True)


@op("GlobalMaxPool", mapping=MANY_TO_MANY)
def global_max_pool(ctx: Ctx, x):
    return jnp.max(x, axis=_spatial_axes(x), keepdims=True)


@op("GlobalLpPool", mapping=MANY_TO_MANY)
def global_lp_pool(ctx: Ctx, x):
    p = ctx.attr("p", 2)
    total = jnp.sum(jnp.abs(x) ** jnp.asarray(p, x.dtype), axis=_spatial_axes(x), keepdims=True)
    return total ** jnp.asarray(1.0 / p, x.dtype)


@op("MaxUnpool", mapping=MANY_TO_MANY, static=(2,))
def max_unpool(ctx: Ctx, x, indices, output_shape=None):
    """Scatters pooled values back to their flat input positions; zeros elsewhere."""
    rank = x.ndim - 2
    kernel = [int(k) for k in ctx.attr("kernel_shape")]
    strides = _ints(ctx.attr("strides"), rank, 1)
    pads = _onnx_pads(ctx.attr("pads"), rank)
    inferred = tuple(x.shape[:2]) + tuple(
        (x.shape[2 + i] - 1) * strides[i] - pads[i][0] - pads[i][1] + kernel[i]
        for i in range(rank))
    flat = jnp.zeros(math.prod(inferred), x.dtype)
    flat = flat.at[indices.reshape(-1)].set(x.reshape(-1), mode="drop")
    y = flat.reshape(inferred)
    if output_shape is None:
        return y
    target = tuple(int(d) for d in output_shape)
    grow = [(0, t - s) for s, t in zip(inferred, target)]
    return jnp.pad(y, [(0, max(0, g)) for _, g in grow])[tuple(slice(0, t) for t in target)]


# ---------------------------------------------------------------- normalisation


def _standardize(x, axes: tuple[int, ...], epsilon: float):
    """(x - mean) * rsqrt(var + eps) in the stash dtype; returns (y, mean, inv_std)."""
    xs = x.astype(_stash_dtype(x.dtype))
    mean = jnp.mean(xs, axis=axes, keepdims=True)
    centered = xs - mean
    var = jnp.mean(centered * centered, axis=axes, keepdims=True)
    inv_std = lax.rsqrt(var + jnp.asarray(epsilon, xs.dtype))
    return centered * inv_std, mean, inv_std


def _outputs(ctx: Ctx, values: Sequence[Any]):
    """As many of `values` as the node has outputs (a lone value when just one)."""
    count = max(1, len(ctx.node.outputs))
    return values[0] if count == 1 else tuple(values[:count])


# Inference BatchNormalization is a per-channel affine map: broadcasting, One-to-Many.
@op("BatchNormalization", mapping=ONE_TO_MANY)
def batch_normalization(ctx: Ctx, x, scale, bias, mean, var):
    """Inference form, plus opset-14 training_mode (batch statistics, running updates).

    Per-channel parameters broadcast over axis 1; the pre-opset-9 `spatial=0` form
    has parameters shaped like one sample (C, D1, ...).
    """
    dtype = x.dtype
    eps = jnp.asarray(ctx.attr("epsilon", 1e-5), dtype)

    def shaped(p):
        p = p.astype(dtype)
        return p[None] if p.ndim > 1 else _channel_shape(p, x.ndim)

    # Before opset 14 a node asks for training by declaring the statistics outputs.
    declared = len([o for o in ctx.node.outputs if o])
    training = (ctx.attr("training_mode", 0) if ctx.opset >= 14
                else declared > 1 and not ctx.attr("is_test", 0))
    if not training:
        y = (x - shaped(mean)) * lax.rsqrt(shaped(var) + eps) * shaped(scale) + shaped(bias)
        return _outputs(ctx, [y])
    axes = (0,) + _spatial_axes(x)
    batch_mean = jnp.mean(x, axis=axes)
    batch_var = jnp.var(x, axis=axes)
    y = ((x - shaped(batch_mean)) * lax.rsqrt(shaped(batch_var) + eps) * shaped(scale)
         + shaped(bias))
    momentum = jnp.asarray(ctx.attr("momentum", 0.9), dtype)
    running_mean = mean.astype(dtype) * momentum + batch_mean * (1 - momentum)
    running_var = var.astype(dtype) * momentum + batch_var * (1 - momentum)
    return _outputs(ctx, [y, running_mean, running_var, batch_mean, batch_var])


@op("InstanceNormalization", mapping=MANY_TO_MANY)
def instance_normalization(ctx: Ctx, x, scale, bias):
    y, _, _ = _standardize(x, _spatial_axes(x), ctx.attr("epsilon", 1e-5))
    y = y.astype(x.dtype)
    return y * _channel_shape(scale.astype(x.dtype), x.ndim) + _channel_shape(bias.astype(x.dtype), x.ndim)


@op("LayerNormalization", mapping=MANY_TO_MANY, since=17)
def layer_normalization(ctx: Ctx, x, scale, bias=None):
    """Standardise over axes [axis, rank); outputs Y, Mean, InvStdDev."""
    axis = int(ctx.attr("axis", -1)) % x.ndim
    y, mean, inv_std = _standardize(x, tuple(range(axis, x.ndim)), ctx.attr("epsilon", 1e-5))
    y = y.astype(x.dtype) * scale.astype(x.dtype)
    if bias is not None:
        y = y + bias.astype(x.dtype)
    return _outputs(ctx, [y, mean, inv_std])


def _group_normalization(ctx: Ctx, x, scale, bias, per_channel: bool):
    groups = int(ctx.attr("num_groups"))
    n, c = x.shape[:2]
    grouped = x.reshape((n, groups, -1))
    y, _, _ = _standardize(grouped, (2,), ctx.attr("epsilon", 1e-5))
    y = y.astype(x.dtype).reshape(x.shape)
    if not per_channel:  # opset 18: one scale and bias per group
        scale = jnp.repeat(scale, c // groups)
        bias = jnp.repeat(bias, c // groups)
    return y * _channel_shape(scale.astype(x.dtype), x.ndim) + _channel_shape(bias.astype(x.dtype), x.ndim)


@op("GroupNormalization", mapping=MANY_TO_MANY, since=18)
def group_normalization_18(ctx: Ctx, x, scale, bias):
    return _group_normalization(ctx, x, scale, bias, per_channel=False)


@op("GroupNormalization", mapping=MANY_TO_MANY, since=21)
def group_normalization(ctx: Ctx, x, scale, bias):
    return _group_normalization(ctx, x, scale, bias, per_channel=True)


@op("RMSNormalization", mapping=MANY_TO_MANY, since=23)
def rms_normalization(ctx: Ctx, x, scale):
    """x / sqrt(mean(x^2 over [axis, rank)) + eps) * scale."""
    axis = int(ctx.attr("axis", -1)) % x.ndim
    xs = x.astype(_stash_dtype(x.dtype))
    ms = jnp.mean(xs * xs, axis=tuple(range(axis, x.ndim)), keepdims=True)
    y = xs * lax.rsqrt(ms + jnp.asarray(ctx.attr("epsilon", 1e-5), xs.dtype))
    return y.astype(x.dtype) * scale.astype(x.dtype)


@op("LRN", mapping=MANY_TO_MANY)
def lrn(ctx: Ctx, x):
    """Local response normalisation across a window of `size` channels."""
    size = int(ctx.attr("size"))
    alpha = ctx.attr("alpha", 1e-4)
    beta = ctx.attr("beta", 0.75)
    bias = ctx.attr("bias", 1.0)
    window = (1, size) + (1,) * (x.ndim - 2)
    pad = [(0, 0), ((size - 1) // 2, size - 1 - (size - 1) // 2)] + [(0, 0)] * (x.ndim - 2)
    square_sum = lax.reduce_window(x * x, jnp.asarray(0, x.dtype), lax.add, window,
                                   (1,) * x.ndim, pad)
    scale = jnp.asarray(bias, x.dtype) + jnp.asarray(alpha / size, x.dtype) * square_sum
    return x / scale ** jnp.asarray(beta, x.dtype)


@op("LpNormalization", mapping=MANY_TO_MANY)
def lp_normalization(ctx: Ctx, x):
    """x / ||x||_p along `axis`; zero where the norm is zero."""
    axis = int(ctx.attr("axis", -1))
    p = int(ctx.attr("p", 2))
    if p == 1:
        norm = jnp.sum(jnp.abs(x), axis=axis, keepdims=True)
    else:
        norm = jnp.sqrt(jnp.sum(x * x, axis=axis, keepdims=True))
    safe = jnp.where(norm == 0, jnp.ones((), x.dtype), norm)
    return jnp.where(norm == 0, jnp.zeros((), x.dtype), x / safe)


@op("MeanVarianceNormalization", mapping=MANY_TO_MANY)
def mean_variance_normalization(ctx: Ctx, x):
    """(x - E[x]) / (sqrt(E[x^2] - E[x]^2) + 1e-9) over `axes` (default N, H, W)."""
    axes = tuple(int(a) for a in ctx.attr("axes", (0, 2, 3)))
    mean = jnp.mean(x, axis=axes, keepdims=True)
    var = jnp.mean(x * x, axis=axes, keepdims=True) - mean * mean
    return (x - mean) / (jnp.sqrt(var) + jnp.asarray(1e-9, x.dtype))


# ---------------------------------------------------------------- softmax family


def _softmax_like(ctx: Ctx, x, fn):
    """Applies fn along one axis; before opset 13 the input is coerced to 2-D at `axis`."""
    if ctx.opset >= 13:
        return fn(x, int(ctx.attr("axis", -1)) % max(x.ndim, 1))
    axis = int(ctx.attr("axis", 1)) % max(x.ndim, 1)
    rows = math.prod(x.shape[:axis])
    return fn(x.reshape((rows, -1)), 1).reshape(x.shape)


def _hardmax(x, axis: int):
    best = jnp.argmax(x, axis=axis)
    return jax.nn.one_hot(best, x.shape[axis], axis=axis, dtype=x.dtype)


@op("Softmax", mapping=MANY_TO_MANY)
def softmax(ctx: Ctx, x):
    return _softmax_like(ctx, x, lambda v, a: jax.nn.softmax(v, axis=a))


@op("LogSoftmax", mapping=MANY_TO_MANY)
def log_softmax(ctx: Ctx, x):
    return _softmax_like(ctx, x, lambda v, a: jax.nn.log_softmax(v, axis=a))


@op("Hardmax", mapping=MANY_TO_MANY)
def hardmax(ctx: Ctx, x):
    return _softmax_like(ctx, x, _hardmax)
