"""Quantization: (De)QuantizeLinear, DynamicQuantizeLinear and the integer
MatMul/Conv ops (MatMulInteger, ConvInteger, QLinearMatMul, QLinearConv).

Integer accumulation is done exactly in float64 (x64 is on), which XLA handles on
every backend; results are rounded half-to-even and saturated like ONNX.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from autofuse.dtypes import to_numpy_dtype
from autofuse.ops.registry import MANY_TO_MANY, ONE_TO_MANY, Ctx, op

_FLOAT8 = {np.dtype(t) for t in (ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e4m3fnuz,
                                  ml_dtypes.float8_e5m2, ml_dtypes.float8_e5m2fnuz)}
_FLOAT4 = {np.dtype(ml_dtypes.float4_e2m1fn)}


def _int_range(dtype: np.dtype) -> tuple[int, int]:
    """The representable integer range of an integer (incl. int4/uint4/int2) dtype."""
    info = ml_dtypes.iinfo(dtype) if dtype.name in ("int4", "uint4", "int2", "uint2") else np.iinfo(dtype)
    return int(info.min), int(info.max)


def _per_axis(value, shape: Sequence[int], axis: int, block_size: int = 0):
    """Reshapes/repeats a scale or zero point so that it broadcasts against `shape`."""
    value = jnp.asarray(value)
    if value.ndim == 0:
        return value
    if value.size == 1:
        return value.reshape(())
    axis = axis % len(shape)
    if not block_size:
        dims = [1] * len(shape)
        dims[axis] = value.size
        return value.reshape(dims)
    value = jnp.repeat(value, block_size, axis=axis)
    return jax.lax.slice_in_dim(value, 0, shape[axis], axis=axis)


def _saturate_int(q, dtype: np.dtype):
    lo, hi = _int_range(dtype)
    return jnp.clip(q, lo, hi).astype(dtype)


def _quantize(ctx: Ctx, x, scale, zero_point, out_dtype: np.dtype, precision: int = 0):
    axis = int(ctx.attr("axis", 1))
    block = int(ctx.attr("block_size", 0))
    scale = _per_axis(scale, x.shape, axis, block)
    if precision:
        compute = to_numpy_dtype(precision)
        scaled = jnp.asarray(x).astype(compute) / scale.astype(compute)
    else:
        scaled = jnp.asarray(x) / scale
    zp = None if zero_point is None else _per_axis(zero_point, x.shape, axis, block)
    if out_dtype in _FLOAT8:
        if int(ctx.attr("saturate", 1)):
            limit = float(ml_dtypes.finfo(out_dtype).max)
            scaled = jnp.where(jnp.isnan(scaled), scaled, jnp.clip(scaled, -limit, limit))
        return scaled.astype(jnp.float32).astype(out_dtype)
    if out_dtype in _FLOAT4:
        if zp is not None:
            scaled = scaled + zp.astype(jnp.float32)
        limit = float(ml_dtypes.finfo(out_dtype).max)
        return jnp.clip(scaled.astype(jnp.float32), -limit, limit).astype(out_dtype)
    wide = jnp.float64
    q = jnp.round(scaled.astype(wide))
    if zp is not None:
        q = q + zp.astype(wide)
    return _saturate_int(q, out_dtype)


def _quant_dtype(ctx: Ctx, zero_point) -> np.dtype:
    if zero_point is not None:
        return np.dtype(zero_point.dtype)
    code = int(ctx.attr("output_dtype", 0))
    return to_numpy_dtype(code) if code else np.dtype(np.uint8)


@op("QuantizeLinear", mapping=ONE_TO_MANY)
def quantize_linear(ctx: Ctx, x, y_scale, y_zero_point=None):
    return _quantize(ctx, x, y_scale, y_zero_point, _quant_dtype(ctx, y_zero_point),
                     int(ctx.attr("precision", 0)))


@op("DequantizeLinear", mapping=ONE_TO_MANY)
def dequantize_linear(ctx: Ctx, x, x_scale, x_zero_point=None):
    axis = int(ctx.attr("axis", 1))
    block = int(ctx.attr("block_size", 0))
    x = jnp.asarray(x)
    dx = x.astype(jnp.float32)
    is_float = np.dtype(x.dtype) in _FLOAT8 or np.dtype(x.dtype) in _FLOAT4
    if x_zero_point is not None and not is_float:
        dx = dx - _per_axis(x_zero_point, x.shape, axis, block).astype(jnp.float32)
    y = dx * _per_axis(x_scale, x.shape, axis, block).astype(jnp.float32)
    code = int(ctx.attr("output_dtype", 0))
    return y.astype(to_numpy_dtype(code) if code else x_scale.dtype)


@op("DynamicQuantizeLinear", mapping=MANY_TO_MANY)
def dynamic_quantize_linear(ctx: Ctx, x):
    x = jnp.asarray(x)
    f32 = jnp.float32
    hi = jnp.maximum(jnp.zeros((), f32), jnp.max(x).astype(f32))
    lo = jnp.minimum(jnp.zeros((), f32), jnp.min(x).astype(f32))
    span = jnp.where(hi == lo, jnp.ones((), f32), hi - lo)
    scale = span / jnp.asarray(255, f32)
    zp = jnp.round(jnp.clip(-lo / scale, 0, 255))
    y = jnp.clip(jnp.round(x.astype(f32) / scale) + zp, 0, 255).astype(jnp.uint8)
    return y, scale.astype(x.dtype), zp.astype(jnp.uint8)


def _centered(value, zero_point, zp_shape: Sequence[int] | None = None):
    """value - zero_point, exactly, as float64."""
    out = jnp.asarray(value).astype(jnp.float64)
    if zero_point is None:
        return out
    zp = jnp.asarray(zero_point).astype(jnp.float64)
    if zp_shape is not None and zp.ndim == 1 and zp.size > 1:
        zp = zp.reshape(zp_shape)
    return out - zp


@op("MatMulInteger", mapping=MANY_TO_MANY)
def matmul_integer(ctx: Ctx, a, b, a_zero_point=None, b_zero_point=None):
    a_zp_shape = (-1, 1) if jnp.ndim(a) >= 2 else None
    acc = jnp.matmul(_centered(a, a_zero_point, a_zp_shape), _centered(b, b_zero_point))
    return acc.astype(jnp.int32)


@op("QLinearMatMul", mapping=MANY_TO_MANY)
def qlinear_matmul(ctx: Ctx, a, a_scale, a_zero_point, b, b_scale, b_zero_point, y_scale, y_zero_point=None):
    acc = jnp.matmul(_centered(a, a_zero_point), _centered(b, b_zero_point))
    factor = (jnp.asarray(a_scale) * jnp.asarray(b_scale) / jnp.asarray(y_scale)).astype(jnp.float64)
    y = acc * factor
    out_dtype = np.dtype(a.dtype if y_zero_point is None else y_zero_point.dtype)
    if y_zero_point is not None:
        y = y + jnp.asarray(y_zero_point).astype(jnp.float64)
    return _saturate_int(jnp.round(y), out_dtype)


def _conv(ctx: Ctx, x, w):
    """ONNX Conv (NCHW..., OIHW...) of float64 operands, attributes from ctx."""
    spatial = x.ndim - 2
    kernel = tuple(w.shape[2:])
    strides = tuple(ctx.attr("strides", None) or (1,) * spatial)
    dilations = tuple(ctx.attr("dilations", None) or (1,) * spatial)
    auto_pad = ctx.attr("auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        padding = []
        for size, k, s, d in zip(x.shape[2:], kernel, strides, dilations):
            total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
            small = total // 2
            padding.append((small, total - small) if auto_pad == "SAME_UPPER" else (total - small, small))
    elif auto_pad == "VALID":
        padding = [(0, 0)] * spatial
    else:
        pads = ctx.attr("pads", None) or (0,) * (2 * spatial)
        padding = list(zip(pads[:spatial], pads[spatial:]))
    return jax.lax.conv_general_dilated(
        x, w, window_strides=strides, padding=padding, rhs_dilation=dilations,
        feature_group_count=int(ctx.attr("group", 1)),
        precision=jax.lax.Precision.HIGHEST,
    )


@op("ConvInteger", mapping=MANY_TO_MANY)
def conv_integer(ctx: Ctx, x, w, x_zero_point=None, w_zero_point=None):
    w_zp_shape = (-1,) + (1,) * (jnp.ndim(w) - 1)
    acc = _conv(ctx, _centered(x, x_zero_point), _centered(w, w_zero_point, w_zp_shape))
    return jnp.round(acc).astype(jnp.int32)


@op("QLinearConv", mapping=MANY_TO_MANY)
def qlinear_conv(ctx: Ctx, x, x_scale, x_zero_point, w, w_scale, w_zero_point, y_scale, y_zero_point=None, bias=None):
    w_zp_shape = (-1,) + (1,) * (jnp.ndim(w) - 1)
    acc = _conv(ctx, _centered(x, x_zero_point), _centered(w, w_zero_point, w_zp_shape))
    if bias is not None:
        acc = acc + jnp.asarray(bias).astype(jnp.float64).reshape((-1,) + (1,) * (acc.ndim - 2))
    w_scale = jnp.asarray(w_scale)
    if w_scale.size > 1:
        w_scale = w_scale.reshape((-1,) + (1,) * (acc.ndim - 2))
    factor = (jnp.asarray(x_scale) * w_scale / jnp.asarray(y_scale)).astype(jnp.float64)
    y = acc * factor
    out_dtype = np.dtype(x.dtype if y_zero_point is None else y_zero_point.dtype)
    if y_zero_point is not None:
        y = y + jnp.asarray(y_zero_point).astype(jnp.float64)
    return _saturate_int(jnp.round(y), out_dtype)
