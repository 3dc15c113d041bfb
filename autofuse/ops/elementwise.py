"""Elementwise ops: unary math, binary arithmetic, comparisons, logic, activations, casts.

Most ops are one jnp call; they are registered from small tables below. The frontend
converts models older than opset 7 (legacy `broadcast`/`axis`, Cast's string `to`),
so only later changes matter here: Clip's min/max moved from attributes to inputs
in opset 11 (read from `ctx.opset`), Pow's exponent may have another dtype from 12,
Cast gained `saturate` in 19 and `round_mode` in 24 (attributes with defaults).
"""
from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from autofuse.dtypes import is_float, to_numpy_dtype
from autofuse.errors import LoweringError
from autofuse.ops.registry import ONE_TO_MANY, ONE_TO_ONE, Ctx, op

# ---------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------


def _const(x: Any, value: float) -> jax.Array:
    """A scalar in `x`'s dtype (never lets a Python float promote the computation)."""
    return jnp.asarray(value, dtype=x.dtype)


def _is_string(x: Any) -> bool:
    return x is not None and np.dtype(getattr(x, "dtype", np.float32)) == np.dtype(object)


def _is_int(x: Any) -> bool:
    dtype = np.dtype(x.dtype)
    return np.issubdtype(dtype, np.integer) or dtype.name in ("int4", "uint4", "int2", "uint2")


def _unary(fn: Callable[[Any], Any]) -> Callable[..., Any]:
    def lower(ctx: Ctx, x):
        return fn(x)

    lower.__doc__ = f"Elementwise {getattr(fn, '__name__', 'op')}."
    return lower


def _binary(fn: Callable[[Any, Any], Any]) -> Callable[..., Any]:
    def lower(ctx: Ctx, a, b):
        return fn(a, b)

    lower.__doc__ = f"Broadcasting {getattr(fn, '__name__', 'op')}."
    return lower


# ---------------------------------------------------------------------------
# Unary math
# ---------------------------------------------------------------------------

_UNARY: dict[str, Callable[[Any], Any]] = {
    "Abs": jnp.abs,
    "Neg": jnp.negative,
    "Reciprocal": jnp.reciprocal,
    "Sqrt": jnp.sqrt,
    "Exp": jnp.exp,
    "Log": jnp.log,
    "Floor": jnp.floor,
    "Ceil": jnp.ceil,
    "Round": jnp.round,  # half to even, as ONNX specifies
    "Sign": jnp.sign,
    "Sin": jnp.sin,
    "Cos": jnp.cos,
    "Tan": jnp.tan,
    "Asin": jnp.arcsin,
    "Acos": jnp.arccos,
    "Atan": jnp.arctan,
    "Sinh": jnp.sinh,
    "Cosh": jnp.cosh,
    "Asinh": jnp.arcsinh,
    "Acosh": jnp.arccosh,
    "Atanh": jnp.arctanh,
    "Erf": jax.lax.erf,
    "Not": jnp.logical_not,
    "BitwiseNot": jnp.invert,
    "IsNaN": jnp.isnan,
    "Sigmoid": jax.nn.sigmoid,
    "Tanh": jnp.tanh,
    "Softplus": jax.nn.softplus,
}

for _name, _fn in _UNARY.items():
    op(_name, mapping=ONE_TO_ONE)(_unary(_fn))


@op("IsInf", mapping=ONE_TO_ONE)
def is_inf(ctx: Ctx, x):
    """+inf and/or -inf, as `detect_positive` / `detect_negative` ask."""
    positive = jnp.isposinf(x) if ctx.attr("detect_positive", 1) else jnp.zeros(x.shape, bool)
    negative = jnp.isneginf(x) if ctx.attr("detect_negative", 1) else jnp.zeros(x.shape, bool)
    return positive | negative


# ---------------------------------------------------------------------------
# Binary arithmetic, comparisons, logic, bitwise
# ---------------------------------------------------------------------------


def _equal(a, b):
    """Equality; string tensors compare on numpy (only possible when concrete)."""
    if _is_string(a) or _is_string(b):
        return np.asarray(np.asarray(a, object) == np.asarray(b, object), dtype=bool)
    return jnp.equal(a, b)


_BINARY: dict[str, Callable[[Any, Any], Any]] = {
    "Add": jnp.add,
    "Sub": jnp.subtract,
    "Mul": jnp.multiply,
    "Equal": _equal,
    "Greater": jnp.greater,
    "GreaterOrEqual": jnp.greater_equal,
    "Less": jnp.less,
    "LessOrEqual": jnp.less_equal,
    "And": jnp.logical_and,
    "Or": jnp.logical_or,
    "Xor": jnp.logical_xor,
    "BitwiseAnd": jnp.bitwise_and,
    "BitwiseOr": jnp.bitwise_or,
    "BitwiseXor": jnp.bitwise_xor,
}

for _name, _fn in _BINARY.items():
    op(_name, mapping=ONE_TO_MANY)(_binary(_fn))


@op("Div", mapping=ONE_TO_MANY)
def div(ctx: Ctx, a, b):
    """True division for floats; integers truncate toward zero (C semantics)."""
    if _is_int(a):
        a, b = jnp.broadcast_arrays(jnp.asarray(a), jnp.asarray(b, a.dtype))
        return jax.lax.div(a, b)
    return jnp.divide(a, b)


@op("Mod", mapping=ONE_TO_MANY)
def mod(ctx: Ctx, a, b):
    """`fmod=1`: sign of the dividend (C fmod); `fmod=0`: sign of the divisor."""
    if ctx.attr("fmod", 0):
        return jnp.fmod(a, b)
    return jnp.remainder(a, b)


@op("Pow", mapping=ONE_TO_MANY)
def pow_(ctx: Ctx, a, b):
    """a ** b in a's dtype; the exponent may have another dtype (opset 12+)."""
    a_dtype = np.dtype(a.dtype)
    if _is_int(a) and _is_int(b):
        return jnp.power(a, jnp.asarray(b).astype(a_dtype))
    if _is_int(a):  # integer base, float exponent: compute in double, truncate back
        return jnp.power(jnp.asarray(a, jnp.float64), jnp.asarray(b, jnp.float64)).astype(a_dtype)
    wide = jnp.promote_types(a_dtype, b.dtype) if is_float(b.dtype) else a_dtype
    return jnp.power(jnp.asarray(a, wide), jnp.asarray(b).astype(wide)).astype(a_dtype)


@op("BitShift", mapping=ONE_TO_MANY)
def bit_shift(ctx: Ctx, a, b):
    """Shifts by b bits; shifts past the bit width give 0 (XLA's rule, like ONNX's)."""
    b = jnp.asarray(b, a.dtype)
    if ctx.attr("direction", "LEFT").upper() == "LEFT":
        return jnp.left_shift(a, b)
    return jnp.right_shift(a, b)


# ---------------------------------------------------------------------------
# Variadic, Where, Clip
# ---------------------------------------------------------------------------


def _fold(fn: Callable[[Any, Any], Any], inputs: tuple) -> Any:
    values = [v for v in inputs if v is not None]
    result = jnp.asarray(values[0])
    for value in values[1:]:
        result = fn(result, value)
    return result


@op("Sum", mapping=ONE_TO_MANY)
def sum_(ctx: Ctx, *inputs):
    """Elementwise sum of any number of broadcasting inputs."""
    return _fold(jnp.add, inputs)


@op("Mean", mapping=ONE_TO_MANY)
def mean(ctx: Ctx, *inputs):
    """Elementwise mean of any number of broadcasting inputs."""
    total = _fold(jnp.add, inputs)
    count = sum(v is not None for v in inputs)
    return (total / _const(total, count)).astype(total.dtype)


@op("Max", mapping=ONE_TO_MANY)
def max_(ctx: Ctx, *inputs):
    """Elementwise maximum (NaN propagates, as in numpy)."""
    return _fold(jnp.maximum, inputs)


@op("Min", mapping=ONE_TO_MANY)
def min_(ctx: Ctx, *inputs):
    """Elementwise minimum (NaN propagates, as in numpy)."""
    return _fold(jnp.minimum, inputs)


@op("Where", mapping=ONE_TO_MANY)
def where(ctx: Ctx, condition, x, y):
    """Picks x where condition holds, else y, with three-way broadcasting."""
    if _is_string(x) or _is_string(y):
        return np.where(np.asarray(condition), np.asarray(x), np.asarray(y))
    return jnp.where(condition, x, y)


def _clip(x, low, high):
    if low is not None and np.size(low):
        x = jnp.maximum(x, jnp.asarray(low, x.dtype).reshape(()))
    if high is not None and np.size(high):
        x = jnp.minimum(x, jnp.asarray(high, x.dtype).reshape(()))
    return jnp.asarray(x)


@op("Clip", mapping=ONE_TO_MANY)
def clip(ctx: Ctx, x, low=None, high=None):
    """Clamps to [min, max]: attributes before opset 11, optional inputs after."""
    if ctx.opset < 11:
        return _clip(x, ctx.attr("min", None), ctx.attr("max", None))
    return _clip(x, low, high)


# ---------------------------------------------------------------------------
# Activations
# ---------------------------------------------------------------------------


@op("Relu", mapping=ONE_TO_ONE)
def relu(ctx: Ctx, x):
    """max(x, 0)."""
    return jnp.maximum(x, jnp.zeros((), x.dtype))


@op("LeakyRelu", mapping=ONE_TO_ONE)
def leaky_relu(ctx: Ctx, x):
    """x for x > 0, alpha * x otherwise."""
    return jnp.where(x > 0, x, x * _const(x, ctx.attr("alpha", 0.01)))


@op("Elu", mapping=ONE_TO_ONE)
def elu(ctx: Ctx, x):
    """x for x > 0, alpha * (exp(x) - 1) otherwise."""
    return jnp.where(x > 0, x, _const(x, ctx.attr("alpha", 1.0)) * jnp.expm1(x))


@op("Selu", mapping=ONE_TO_ONE)
def selu(ctx: Ctx, x):
    """gamma * (x for x > 0, alpha * (exp(x) - 1) otherwise)."""
    alpha = _const(x, ctx.attr("alpha", 1.67326319217681884765625))
    gamma = _const(x, ctx.attr("gamma", 1.05070102214813232421875))
    return gamma * jnp.where(x > 0, x, alpha * jnp.expm1(x))


@op("Celu", mapping=ONE_TO_ONE)
def celu(ctx: Ctx, x):
    """max(0, x) + min(0, alpha * (exp(x / alpha) - 1))."""
    alpha = _const(x, ctx.attr("alpha", 1.0))
    zero = jnp.zeros((), x.dtype)
    return jnp.maximum(zero, x) + jnp.minimum(zero, alpha * jnp.expm1(x / alpha))


@op("Gelu", mapping=ONE_TO_ONE)
def gelu(ctx: Ctx, x):
    """x * Phi(x), exactly (`approximate='none'`) or with the tanh formula."""
    half = _const(x, 0.5)
    if ctx.attr("approximate", "none") == "tanh":
        inner = _const(x, math.sqrt(2.0 / math.pi)) * (x + _const(x, 0.044715) * x * x * x)
        return half * x * (1 + jnp.tanh(inner))
    return half * x * (1 + jax.lax.erf(x * _const(x, 1.0 / math.sqrt(2.0))))


@op("HardSigmoid", mapping=ONE_TO_ONE)
def hard_sigmoid(ctx: Ctx, x):
    """clip(alpha * x + beta, 0, 1)."""
    y = _const(x, ctx.attr("alpha", 0.2)) * x + _const(x, ctx.attr("beta", 0.5))
    return jnp.clip(y, _const(x, 0.0), _const(x, 1.0))


@op("HardSwish", mapping=ONE_TO_ONE)
def hard_swish(ctx: Ctx, x):
    """x * clip(x / 6 + 0.5, 0, 1)."""
    gate = jnp.clip(x * _const(x, 1.0 / 6.0) + _const(x, 0.5), _const(x, 0.0), _const(x, 1.0))
    return x * gate


@op("Mish", mapping=ONE_TO_ONE)
def mish(ctx: Ctx, x):
    """x * tanh(softplus(x))."""
    return x * jnp.tanh(jax.nn.softplus(x))


@op("Softsign", mapping=ONE_TO_ONE)
def softsign(ctx: Ctx, x):
    """x / (1 + |x|)."""
    return x / (_const(x, 1.0) + jnp.abs(x))


@op("Swish", mapping=ONE_TO_ONE)
def swish(ctx: Ctx, x):
    """x * sigmoid(alpha * x)."""
    return x * jax.nn.sigmoid(_const(x, ctx.attr("alpha", 1.0)) * x)


@op("ThresholdedRelu", mapping=ONE_TO_ONE)
def thresholded_relu(ctx: Ctx, x):
    """x for x > alpha, 0 otherwise."""
    return jnp.where(x > _const(x, ctx.attr("alpha", 1.0)), x, jnp.zeros((), x.dtype))


@op("Shrink", mapping=ONE_TO_ONE)
def shrink(ctx: Ctx, x):
    """x + bias below -lambd, x - bias above lambd, 0 in between."""
    bias, lambd = ctx.attr("bias", 0.0), ctx.attr("lambd", 0.5)
    low, high = (x < -lambd), (x > lambd)
    zero = jnp.zeros((), x.dtype)
    return jnp.where(low, x + _const(x, bias), jnp.where(high, x - _const(x, bias), zero))


def _prelu_slope(x: Any, slope: Any) -> Any:
    """Slope broadcast to x; a 1-D slope not matching numpy's rule goes on the one equal dim."""
    try:
        np.broadcast_shapes(tuple(x.shape), tuple(slope.shape))
        return slope
    except ValueError:
        if len(slope.shape) != 1:
            raise
        matches = [i for i, d in enumerate(x.shape) if d == slope.shape[0]]
        if len(matches) != 1:
            raise
        shape = [1] * len(x.shape)
        shape[matches[0]] = slope.shape[0]
        return jnp.reshape(slope, shape)


@op("PRelu", mapping=ONE_TO_MANY)
def prelu(ctx: Ctx, x, slope):
    """x for x > 0, slope * x otherwise (slope broadcasts to x)."""
    slope = jnp.asarray(_prelu_slope(x, slope), x.dtype)
    return jnp.where(x > 0, x, x * slope)


# ---------------------------------------------------------------------------
# Cast, CastLike, BitCast
# ---------------------------------------------------------------------------

_FLOAT8 = {np.dtype(t) for t in (ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e4m3fnuz,
                                 ml_dtypes.float8_e5m2, ml_dtypes.float8_e5m2fnuz)}
_E8M0 = np.dtype(ml_dtypes.float8_e8m0fnu)
_SUB_BYTE_INT = {np.dtype(t) for t in (ml_dtypes.int4, ml_dtypes.uint4, ml_dtypes.int2, ml_dtypes.uint2)}


def _to_e8m0(x: Any, saturate: bool, round_mode: str) -> jax.Array:
    """float -> float8_e8m0fnu: keeps the exponent, rounding the mantissa away as asked."""
    bits = jax.lax.bitcast_convert_type(jnp.asarray(x).astype(jnp.float32), jnp.uint32)
    exponent = (bits >> 23) & 0xFF
    special = exponent == 0xFF
    if round_mode == "up":
        round_up = (bits & 0x7FFFFF) > 0
    elif round_mode == "nearest":
        guard = (bits & 0x400000) > 0
        rest = (bits & 0x200000) > 0
        sticky = (bits & 0x1FFFFF) > 0
        round_up = guard & (rest | sticky | (exponent > 0))
    elif round_mode == "down":
        round_up = jnp.zeros(exponent.shape, bool)
    else:
        raise ValueError(f"unsupported round_mode '{round_mode}'")
    round_up = round_up & ~special
    if saturate:
        round_up = round_up & (exponent != 0xFE)
    exponent = jnp.where(special, 0xFF, exponent + round_up.astype(jnp.uint32))
    return jax.lax.bitcast_convert_type(exponent.astype(jnp.uint8), _E8M0)


def _cast_strings(ctx: Ctx, x: Any, to: np.dtype, saturate: bool, round_mode: str) -> np.ndarray:
    """Casts to or from strings; numpy only, so the input must be concrete."""
    try:
        x = np.asarray(x)
    except Exception:
        raise LoweringError(f"{ctx.node.label}: string casts need a value known at compile time") from None
    if to == np.dtype(object):
        return x.astype(np.str_).astype(object)
    if to.kind in "biuf":
        return x.astype(to)
    return np.asarray(_cast(ctx, x.astype(np.float32), to, saturate, round_mode))


def _cast(ctx: Ctx, x: Any, to: np.dtype, saturate: bool = True, round_mode: str = "up") -> Any:
    """ONNX Cast semantics: float8 saturation, wrapping sub-byte ints, e8m0 rounding."""
    source = np.dtype(x.dtype)
    if source == np.dtype(object) or to == np.dtype(object):
        return _cast_strings(ctx, x, to, saturate, round_mode)
    x = jnp.asarray(x)
    if source == to:
        return x
    if to == _E8M0:
        return _to_e8m0(x, saturate, round_mode)
    if to in _FLOAT8 and saturate and is_float(source):
        info = ml_dtypes.finfo(to)
        x = jnp.clip(x, _const(x, float(info.min)), _const(x, float(info.max)))
    if to in _SUB_BYTE_INT and is_float(source):  # truncate, then wrap like ml_dtypes
        x = x.astype(jnp.int64)
    return x.astype(to)


@op("Cast", mapping=ONE_TO_ONE)
def cast(ctx: Ctx, x):
    """Converts to the `to` type; `saturate` (opset 19+) and `round_mode` (24+) refine it."""
    return _cast(ctx, x, to_numpy_dtype(ctx.attr("to")), bool(ctx.attr("saturate", 1)),
                 ctx.attr("round_mode", "up"))


@op("CastLike", mapping=ONE_TO_ONE)
def cast_like(ctx: Ctx, x, like):
    """Cast to the dtype of the second input."""
    return _cast(ctx, x, np.dtype(like.dtype), bool(ctx.attr("saturate", 1)),
                 ctx.attr("round_mode", "up"))


@op("BitCast", mapping=ONE_TO_ONE)
def bit_cast(ctx: Ctx, x):
    """Reinterprets the bits as another type of the same width."""
    to = to_numpy_dtype(ctx.attr("to"))
    source = np.dtype(x.dtype)
    if source.itemsize != to.itemsize or object in (source, to):
        raise LoweringError(f"{ctx.node.label}: BitCast from {source} to {to} needs equal bit widths")
    x = jnp.asarray(x)
    if source == to:
        return x
    if to == np.dtype(bool):
        return x != 0
    if source == np.dtype(bool):
        x = x.astype(jnp.uint8)
    return x if x.dtype == to else jax.lax.bitcast_convert_type(x, to)
