"""autofuse-internal ops (domain "autofuse"): channels-last forms of spatial ops.

They exist only in rewritten models (the layout rules put them there), never in
ONNX files. Each takes the attributes of its ONNX counterpart but reads and writes
(N, spatial..., C) tensors, so a conv network can stay channels-last between its
edges:

* `ConvNHWC(x, w, b?)`: x is NHWC, w is HWIO (converted once at rewrite time).
* `MaxPoolNHWC`, `AveragePoolNHWC`, `GlobalAveragePoolNHWC`, `GlobalMaxPoolNHWC`.

The algorithm-choice rules (`autofuse.rewrite.algorithm`) add the forms a
convolution or a matrix product can take instead:

* `DepthwiseConvNHWC(x, w[kh, kw, C], b?)`: a sum of kh*kw shifted multiplies,
  one loop XLA fuses (its grouped convolution is far slower on CPU).
* `PatchesNHWC(x)` -> (N, Ho, Wo, kh*kw*C) and `PatchesNCHW(x)` -> (N, C*kh*kw, Ho*Wo):
  im2col by strided slices, so that a MatMul does the convolution.
* `WinogradInputNHWC(x)` -> (a*a, tiles, C) and `WinogradOutputNHWC(m)` -> NHWC:
  the B^T d B and A^T m A transforms of Winograd F(t x t, 3 x 3), a = t + 2; the
  products in between are one batched MatMul with the pre-transformed weight.
* `MatMulTransB(x, w[N, K])`: x @ w^T, the weight stored in the (N, K) layout.
* `DotProductAttention(q, kt, v, bias?)`: softmax(q @ kt * scale + bias) @ v as one node.
"""
from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from autofuse.ops.nn import _lowest, _merge, _pool_window, _static_dims, _window_counts, _window_pads
from autofuse.ops.registry import MANY_TO_MANY, ONE_TO_MANY, Ctx, op

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


# Windows up to this many taps reduce as an elementwise chain of strided slices, which
# XLA fuses into one loop; its reduce_window on CPU was 8x slower on ResNet-50's 3x3 max pool.
MAX_SLICED_WINDOW = 16


def _sliced_window(x, init, fn, kernel, strides, dilations, pads):
    """reduce_window as fn over the window's strided slices of the padded input."""
    padded = lax.pad(x, jnp.asarray(init, x.dtype),
                     [(0, 0, 0)] + [(int(lo), int(hi), 0) for lo, hi in pads] + [(0, 0, 0)])
    sizes = padded.shape[1:-1]
    out = [(size - d * (k - 1) - 1) // s + 1 for size, k, s, d in zip(sizes, kernel, strides, dilations)]
    result = None
    for offsets in np.ndindex(*kernel):
        starts = [0] + [o * d for o, d in zip(offsets, dilations)] + [0]
        limits = ([x.shape[0]] + [st + (n - 1) * s + 1 for st, n, s in zip(starts[1:-1], out, strides)]
                  + [x.shape[-1]])
        part = lax.slice(padded, starts, limits, [1] + list(strides) + [1])
        result = part if result is None else fn(result, part)
    return result


def _reduce_window_nhwc(x, init, fn, kernel, strides, dilations, pads):
    """reduce_window over the spatial dims of an (N, spatial..., C) tensor."""
    if 0 < math.prod(kernel) <= MAX_SLICED_WINDOW and all(
            (size + lo + hi - d * (k - 1) - 1) >= 0
            for size, (lo, hi), k, d in zip(x.shape[1:-1], pads, kernel, dilations)):
        return _sliced_window(x, init, fn, kernel, strides, dilations, pads)
    return lax.reduce_window(
        x, jnp.asarray(init, x.dtype), fn, (1,) + tuple(kernel) + (1,), (1,) + tuple(strides) + (1,),
        [(0, 0)] + [tuple(p) for p in pads] + [(0, 0)], window_dilation=(1,) + tuple(dilations) + (1,),
    )


@op("MaxPoolNHWC", mapping=MANY_TO_MANY, domain=DOMAIN)
def max_pool_nhwc(ctx: Ctx, x):
    """Channels-last max pooling; 2-D float32 pools run autofuse's native kernel on CPU."""
    kernel, strides, dilations, pads, extra = _pool_window(ctx, _channels_first_shape(x))
    pads = _merge(pads, extra)

    def xla(x):
        return _reduce_window_nhwc(x, _lowest(x.dtype), lax.max, kernel, strides, dilations, pads)

    if x.ndim != 4:
        return xla(x)
    from autofuse.gemm import max_pool_nhwc as native_max_pool

    return native_max_pool(x, kernel=kernel, strides=strides, dilations=dilations,
                           pads=(pads[0][0], pads[1][0], pads[0][1], pads[1][1]), xla=xla)


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


# ---------------------------------------------------------------- algorithm choices

def _window(ctx: Ctx, spatial: Sequence[int], kernel: Sequence[int]):
    """(strides, dilations, (begin, end) pads) of a 2-D conv window from the attributes."""
    strides = _ints(ctx.attr("strides"), 2)
    dilations = _ints(ctx.attr("dilations"), 2)
    return strides, dilations, _window_pads(ctx, spatial, kernel, strides, dilations)


def _taps(x, axes: tuple[int, int], kernel: Sequence[int], strides, dilations, pads) -> list:
    """The kh*kw strided views of the padded x, one per kernel tap, (i, j) row-major."""
    widths = [(0, 0)] * x.ndim
    for axis, pad in zip(axes, pads):
        widths[axis] = tuple(pad)
    x = jnp.pad(x, widths)
    out = [(x.shape[a] - (k - 1) * d - 1) // s + 1 for a, k, s, d in zip(axes, kernel, strides, dilations)]
    views = []
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            start, limit, step = [0] * x.ndim, list(x.shape), [1] * x.ndim
            for axis, tap, o, s, d in zip(axes, (i, j), out, strides, dilations):
                start[axis], limit[axis], step[axis] = tap * d, tap * d + s * (o - 1) + 1, s
            views.append(lax.slice(x, start, limit, step))
    return views


def _depthwise_flops(ctx: Ctx, inputs: Sequence[Any], outputs: Sequence[Any]) -> float:
    w, y = _static_dims(inputs[1]), _static_dims(outputs[0])
    return 2.0 * math.prod(y) * w[0] * w[1] if w and y else 0.0


@op("DepthwiseConvNHWC", mapping=MANY_TO_MANY, domain=DOMAIN, flops=_depthwise_flops)
def depthwise_conv_nhwc(ctx: Ctx, x, w, b=None):
    """Depthwise (group == channels) NHWC convolution as a sum of shifted multiplies; w is (kh, kw, C)."""
    strides, dilations, pads = _window(ctx, x.shape[1:3], w.shape[:2])
    w = w.astype(x.dtype)
    taps = _taps(x, (1, 2), w.shape[:2], strides, dilations, pads)
    y = b.astype(x.dtype) if b is not None else None
    for (i, j), view in zip(np.ndindex(*w.shape[:2]), taps):
        y = view * w[i, j] if y is None else y + view * w[i, j]
    return y


@op("PatchesNHWC", mapping=ONE_TO_MANY, domain=DOMAIN)
def patches_nhwc(ctx: Ctx, x):
    """im2col of an NHWC tensor: (N, Ho, Wo, kh*kw*C), taps outer, channels inner (HWIO order)."""
    kernel = _ints(ctx.attr("kernel_shape"), 2)
    return jnp.concatenate(_taps(x, (1, 2), kernel, *_window(ctx, x.shape[1:3], kernel)), axis=-1)


@op("PatchesNCHW", mapping=ONE_TO_MANY, domain=DOMAIN)
def patches_nchw(ctx: Ctx, x):
    """im2col of an NCHW tensor: (N, C*kh*kw, Ho*Wo), channels outer, taps inner (OIHW order)."""
    kernel = _ints(ctx.attr("kernel_shape"), 2)
    taps = _taps(x, (2, 3), kernel, *_window(ctx, x.shape[2:], kernel))
    n, c, ho, wo = taps[0].shape
    return jnp.stack(taps, axis=2).reshape(n, c * len(taps), ho * wo)


# Winograd F(t x t, 3 x 3) transforms (Lavin & Gray 2016), by output tile size t:
# Y = A^T [(G g G^T) . (B^T d B)] A over (t + 2)^2 input tiles.
WINOGRAD_BT = {
    2: np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float64),
    4: np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                 [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], np.float64),
}
WINOGRAD_G = {
    2: np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], np.float64),
    4: np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                 [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], np.float64),
}
WINOGRAD_AT = {
    2: np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float64),
    4: np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]], np.float64),
}


def winograd_tiles(size: int, tile: int) -> int:
    """Output tiles along one spatial dim."""
    return -(-size // tile)


def _combine(terms: Sequence[Any], coeffs: np.ndarray):
    """sum(c * t) over the non-zero coefficients, unit ones without a multiply."""
    out = None
    for term, c in zip(terms, coeffs):
        if c == 0:
            continue
        v = term if c == 1 else -term if c == -1 else term * jnp.asarray(c, term.dtype)
        out = v if out is None else out + v
    return out


def _winograd_flops(ctx: Ctx, inputs: Sequence[Any], outputs: Sequence[Any]) -> float:
    """Dense transform count: each transformed element combines one row and one column of a tile."""
    big = _static_dims(outputs[0] if ctx.node.op_type == "WinogradInputNHWC" else inputs[0])
    return 4.0 * (int(ctx.attr("tile")) + 2) * math.prod(big) if big else 0.0


@op("WinogradInputNHWC", mapping=MANY_TO_MANY, domain=DOMAIN, flops=_winograd_flops)
def winograd_input_nhwc(ctx: Ctx, x):
    """B^T d B for every (t+2)^2 tile of the padded NHWC input: (a*a, N*th*tw, C)."""
    t = int(ctx.attr("tile"))
    a, bt = t + 2, WINOGRAD_BT[t]
    n, h, w, c = x.shape
    (top, bottom), (left, right) = _window_pads(ctx, (h, w), (3, 3), (1, 1), (1, 1))
    th, tw = winograd_tiles(h + top + bottom - 2, t), winograd_tiles(w + left + right - 2, t)
    x = jnp.pad(x, ((0, 0), (top, th * t + 2 - h - top), (left, tw * t + 2 - w - left), (0, 0)))
    rows = [lax.slice(x, (0, i, 0, 0), (n, i + t * (th - 1) + 1, x.shape[2], c), (1, t, 1, 1)) for i in range(a)]
    transformed = []
    for row in (_combine(rows, bt[r]) for r in range(a)):
        cols = [lax.slice(row, (0, 0, j, 0), (n, th, j + t * (tw - 1) + 1, c), (1, 1, t, 1)) for j in range(a)]
        transformed += [_combine(cols, bt[q]) for q in range(a)]
    return jnp.stack(transformed).reshape(a * a, n * th * tw, c)


@op("WinogradOutputNHWC", mapping=MANY_TO_MANY, domain=DOMAIN, flops=_winograd_flops)
def winograd_output_nhwc(ctx: Ctx, m):
    """A^T m A for every tile, reassembled into (N, Ho, Wo, K); attribute output_shape is (N, Ho, Wo)."""
    t = int(ctx.attr("tile"))
    a, at = t + 2, WINOGRAD_AT[t]
    n, ho, wo = (int(d) for d in ctx.attr("output_shape"))
    th, tw = winograd_tiles(ho, t), winograd_tiles(wo, t)
    m = m.reshape(a, a, n, th, tw, m.shape[-1])
    half = [[_combine([m[r, q] for q in range(a)], at[j]) for j in range(t)] for r in range(a)]
    rows = [jnp.stack([_combine([half[r][j] for r in range(a)], at[i]) for j in range(t)], axis=3)
            for i in range(t)]
    y = jnp.stack(rows, axis=2).reshape(n, th * t, tw * t, m.shape[-1])
    return y[:, :ho, :wo, :]


def _matmul_nt_flops(ctx: Ctx, inputs: Sequence[Any], outputs: Sequence[Any]) -> float:
    w, y = _static_dims(inputs[1]), _static_dims(outputs[0])
    return 2.0 * math.prod(y) * w[1] if w and y else 0.0


@op("MatMulTransB", mapping=MANY_TO_MANY, domain=DOMAIN, flops=_matmul_nt_flops)
def matmul_trans_b(ctx: Ctx, x, w):
    """x @ w^T over x's last axis, with w stored (N, K)."""
    return lax.dot_general(x, w.astype(x.dtype), (((x.ndim - 1,), (1,)), ((), ())))


def _attention_flops(ctx: Ctx, inputs: Sequence[Any], outputs: Sequence[Any]) -> float:
    q, kt, y = (_static_dims(v) for v in (inputs[0], inputs[1], outputs[0]))
    return 2.0 * math.prod(q[:-1]) * kt[-1] * (q[-1] + y[-1]) if q and kt and y else 0.0


@op("DotProductAttention", mapping=MANY_TO_MANY, domain=DOMAIN, flops=_attention_flops)
def dot_product_attention(ctx: Ctx, q, kt, v, bias=None):
    """softmax(q @ kt * scale + bias) @ v; kt is K already transposed to (..., D, T).

    Written as the two matmuls around a softmax: on XLA CPU this measured faster
    than jax.nn.dot_product_attention on BERT's shapes."""
    s = jnp.matmul(q, kt)
    scale = ctx.attr("scale", 1.0)
    if scale != 1.0:
        s = s * jnp.asarray(scale, s.dtype)
    if bias is not None:
        s = s + bias.astype(s.dtype)
    return jnp.matmul(jax.nn.softmax(s, axis=-1).astype(v.dtype), v)
