"""Shape, layout and indexing ops: Reshape, Slice, Pad, Gather*, Scatter* and friends.

DNNFusion mapping types: Concat, Slice and Split copy each element once (One-to-One,
as in the paper's table); Scatter* may combine several updates per element
(Many-to-Many).

Pure data-movement ops run on numpy when every input is concrete (so constant
folding also works for string tensors) and on jax.numpy otherwise. Ops whose
output shape depends on data (NonZero, Unique, Compress) always run on numpy.
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from autofuse.dtypes import is_float, to_numpy_dtype
from autofuse.ir import Const
from autofuse.ops.registry import (
    MANY_TO_MANY,
    ONE_TO_MANY,
    ONE_TO_ONE,
    REORGANIZE,
    SHUFFLE,
    Ctx,
    op,
)

Array = Any


# ---------------------------------------------------------------- helpers


def _xp(*values: Any) -> Any:
    """numpy when every value is concrete (or omitted), else jax.numpy."""
    concrete = all(v is None or isinstance(v, (np.ndarray, np.generic)) for v in values)
    return np if concrete else jnp


def _ints(value: Any) -> list[int]:
    """A static tensor or attribute as a list of Python ints."""
    if value is None:
        return []
    if isinstance(value, Const):
        value = value.array
    return [int(v) for v in np.asarray(value).reshape(-1)]


def _axis(axis: int, rank: int) -> int:
    """A possibly negative axis as a non-negative one."""
    return axis + rank if axis < 0 else axis


def _axes(axes: Sequence[int], rank: int) -> list[int]:
    return [_axis(int(a), rank) for a in axes]


def _input_or_attr(ctx: Ctx, value: Any, name: str) -> list[int] | None:
    """Ints from an input (newer opsets) or else from the attribute (older ones)."""
    if value is not None:
        return _ints(value)
    attr = ctx.attr(name)
    return None if attr is None else _ints(attr)


def _wrap_index(index: Array, dim: int) -> Array:
    """ONNX index semantics: negative indices count from the end."""
    xp = _xp(index)
    index = index.astype(np.int64) if index.dtype != np.int64 else index
    return xp.where(index < 0, index + dim, index)


def _iota(shape: Sequence[int], dim: int) -> Array:
    """An int64 array of `shape` whose values are the coordinate along `dim`."""
    return jax.lax.broadcasted_iota(jnp.int64, tuple(int(d) for d in shape), dim)


def _scatter(data: Array, index: tuple, updates: Array, reduction: str) -> Array:
    """data[index] (reduction)= updates, for the ONNX reduction names."""
    ref = jnp.asarray(data).at[index]
    updates = jnp.asarray(updates, data.dtype)
    if reduction == "none":
        return ref.set(updates)
    if reduction == "add":
        return ref.add(updates)
    if reduction == "mul":
        return ref.multiply(updates)
    if reduction == "max":
        return ref.max(updates)
    if reduction == "min":
        return ref.min(updates)
    raise ValueError(f"unknown reduction '{reduction}'")


# ---------------------------------------------------------------- pass-through and constants


@op("Identity", mapping=ONE_TO_ONE)
def identity(ctx: Ctx, x: Any) -> Any:
    """Passes tensors, sequences and optionals through."""
    return x


def _constant_value(ctx: Ctx) -> np.ndarray:
    """The one value_* attribute a Constant node carries, as a numpy array."""
    for name in ("value", "sparse_value"):
        value = ctx.attr(name)
        if value is not None:
            return np.asarray(value.array)
    simple = {
        "value_float": np.float32,
        "value_floats": np.float32,
        "value_int": np.int64,
        "value_ints": np.int64,
        "value_string": object,
        "value_strings": object,
    }
    for name, dtype in simple.items():
        value = ctx.attr(name)
        if value is not None:
            return np.array(list(value) if isinstance(value, tuple) else value, dtype=dtype)
    raise ValueError("Constant has no value attribute")


@op("Constant", mapping=ONE_TO_ONE)
def constant(ctx: Ctx) -> np.ndarray:
    return _constant_value(ctx)


@op("ConstantOfShape", mapping=ONE_TO_MANY, static=(0,))
def constant_of_shape(ctx: Ctx, shape: np.ndarray) -> Array:
    value = ctx.attr("value")
    fill = np.asarray(value.array).reshape(-1)[0] if value is not None else np.float32(0)
    return np.full(tuple(_ints(shape)), fill, dtype=fill.dtype)


# ---------------------------------------------------------------- shape queries


@op("Shape", mapping=ONE_TO_ONE)
def shape_(ctx: Ctx, x: Array) -> np.ndarray:
    dims = np.asarray(np.shape(x), dtype=np.int64)
    start = ctx.attr("start", 0)
    end = ctx.attr("end")
    return dims[start:end]


@op("Size", mapping=ONE_TO_ONE)
def size(ctx: Ctx, x: Array) -> np.ndarray:
    return np.asarray(int(np.prod(np.shape(x), dtype=np.int64)), dtype=np.int64)


# ---------------------------------------------------------------- reorganize


def _reshape_target(in_shape: Sequence[int], target: Sequence[int], allowzero: bool) -> tuple[int, ...]:
    """Resolves ONNX Reshape's 0 (copy the input dim) and -1 (infer) entries."""
    dims = [in_shape[i] if d == 0 and not allowzero else d for i, d in enumerate(target)]
    if -1 in dims:
        known = int(np.prod([d for d in dims if d != -1], dtype=np.int64))
        total = int(np.prod(in_shape, dtype=np.int64))
        dims[dims.index(-1)] = total // known if known else 0
    return tuple(int(d) for d in dims)


@op("Reshape", mapping=REORGANIZE, static=(1,))
def reshape(ctx: Ctx, x: Array, shape: np.ndarray | None = None) -> Array:
    """Reshape; before opset 5 the target is the `shape` attribute."""
    target = _input_or_attr(ctx, shape, "shape")
    dims = _reshape_target(np.shape(x), target, bool(ctx.attr("allowzero", 0)))
    return _xp(x).reshape(x, dims)


@op("Flatten", mapping=REORGANIZE)
def flatten(ctx: Ctx, x: Array) -> Array:
    shape = np.shape(x)
    axis = _axis(ctx.attr("axis", 1), len(shape))
    outer = int(np.prod(shape[:axis], dtype=np.int64))
    return _xp(x).reshape(x, (outer, int(np.prod(shape[axis:], dtype=np.int64))))


@op("Squeeze", mapping=REORGANIZE, static=(1,))
def squeeze(ctx: Ctx, x: Array, axes: np.ndarray | None = None) -> Array:
    """Squeeze; `axes` is an attribute before opset 13 and an input from 13."""
    shape = np.shape(x)
    wanted = _input_or_attr(ctx, axes, "axes")
    if wanted is None:
        wanted = [i for i, d in enumerate(shape) if d == 1]
    wanted = set(_axes(wanted, len(shape)))
    return _xp(x).reshape(x, tuple(d for i, d in enumerate(shape) if i not in wanted))


@op("Unsqueeze", mapping=REORGANIZE, static=(1,))
def unsqueeze(ctx: Ctx, x: Array, axes: np.ndarray | None = None) -> Array:
    """Unsqueeze; axes count in the output's rank (attribute before opset 13)."""
    shape = list(np.shape(x))
    wanted = _input_or_attr(ctx, axes, "axes") or []
    rank = len(shape) + len(wanted)
    for axis in sorted(_axes(wanted, rank)):
        shape.insert(axis, 1)
    return _xp(x).reshape(x, tuple(shape))


# ---------------------------------------------------------------- shuffle


@op("Transpose", mapping=SHUFFLE)
def transpose(ctx: Ctx, x: Array) -> Array:
    perm = ctx.attr("perm")
    perm = tuple(reversed(range(np.ndim(x)))) if perm is None else tuple(perm)
    return _xp(x).transpose(x, perm)


@op("DepthToSpace", mapping=SHUFFLE)
def depth_to_space(ctx: Ctx, x: Array) -> Array:
    b, c, h, w = np.shape(x)
    bs = ctx.attr("blocksize")
    xp = _xp(x)
    if ctx.attr("mode", "DCR") == "CRD":
        y = xp.transpose(xp.reshape(x, (b, c // bs**2, bs, bs, h, w)), (0, 1, 4, 2, 5, 3))
    else:
        y = xp.transpose(xp.reshape(x, (b, bs, bs, c // bs**2, h, w)), (0, 3, 4, 1, 5, 2))
    return xp.reshape(y, (b, c // bs**2, h * bs, w * bs))


@op("SpaceToDepth", mapping=SHUFFLE)
def space_to_depth(ctx: Ctx, x: Array) -> Array:
    b, c, h, w = np.shape(x)
    bs = ctx.attr("blocksize")
    xp = _xp(x)
    blocks = xp.reshape(x, (b, c, h // bs, bs, w // bs, bs))
    perm = (0, 1, 3, 5, 2, 4) if ctx.attr("mode", "DCR") == "CRD" else (0, 3, 5, 1, 2, 4)
    return xp.reshape(xp.transpose(blocks, perm), (b, c * bs * bs, h // bs, w // bs))


# ---------------------------------------------------------------- join and split


@op("Concat", mapping=ONE_TO_ONE)
def concat(ctx: Ctx, *xs: Array) -> Array:
    xs = [x for x in xs if x is not None]
    axis = _axis(ctx.attr("axis", 0), np.ndim(xs[0]))
    return _xp(*xs).concatenate(xs, axis=axis)


def _split_sizes(dim: int, count: int, explicit: list[int] | None, num_outputs: int | None) -> list[int]:
    """Part sizes: explicit, ceil-sized chunks (num_outputs), or equal parts."""
    if explicit:
        return explicit
    if num_outputs:
        chunk = -(-dim // num_outputs)
        return [min(chunk, max(dim - i * chunk, 0)) for i in range(num_outputs)]
    return [dim // count] * count


@op("Split", mapping=ONE_TO_ONE, static=(1,))
def split(ctx: Ctx, x: Array, parts: np.ndarray | None = None) -> tuple:
    """Split; sizes come from the input (13+), the attribute (<13) or num_outputs (18+)."""
    axis = _axis(ctx.attr("axis", 0), np.ndim(x))
    sizes = _split_sizes(np.shape(x)[axis], len(ctx.node.outputs),
                         _input_or_attr(ctx, parts, "split"), ctx.attr("num_outputs"))
    bounds = np.cumsum([0] + sizes)
    index = [slice(None)] * np.ndim(x)
    outputs = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        index[axis] = slice(int(lo), int(hi))
        outputs.append(x[tuple(index)])
    return tuple(outputs)


# ---------------------------------------------------------------- slice and pad


def _slice_bounds(start: int, end: int, step: int, dim: int) -> slice:
    """One ONNX Slice axis (negative, clamped and INT_MAX bounds) as a Python slice."""
    if step == 0:
        raise ValueError("Slice step cannot be 0")
    start = start + dim if start < 0 else start
    end = end + dim if end < 0 else end
    if step > 0:
        start, end = min(max(start, 0), dim), min(max(end, 0), dim)
        return slice(start, end, step)
    start, end = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
    return slice(start, None if end < 0 else end, step)


@op("Slice", mapping=ONE_TO_ONE, static=(1, 2, 3, 4))
def slice_(ctx: Ctx, x: Array, starts: Any = None, ends: Any = None, axes: Any = None,
           steps: Any = None) -> Array:
    """Slice; before opset 10 starts/ends/axes are attributes and steps are 1."""
    starts = _input_or_attr(ctx, starts, "starts")
    ends = _input_or_attr(ctx, ends, "ends")
    shape = np.shape(x)
    axes = _input_or_attr(ctx, axes, "axes") or list(range(len(starts)))
    steps = _ints(steps) or [1] * len(starts)
    index = [slice(None)] * len(shape)
    for start, end, axis, step in zip(starts, ends, _axes(axes, len(shape)), steps):
        index[axis] = _slice_bounds(start, end, step, shape[axis])
    return x[tuple(index)]


def _pad_widths(pads: list[int], axes: list[int] | None, rank: int) -> list[tuple[int, int]]:
    """ONNX pads [begin..., end...] over `axes` as (begin, end) per dimension."""
    axes = list(range(rank)) if axes is None else _axes(axes, rank)
    widths = [(0, 0)] * rank
    for i, axis in enumerate(axes):
        widths[axis] = (pads[i], pads[len(axes) + i])
    return widths


def _crop_negative(x: Array, widths: list[tuple[int, int]]) -> Array:
    """Removes the elements that negative pads cut off."""
    index = tuple(slice(max(-lo, 0), d - max(-hi, 0)) for (lo, hi), d in zip(widths, np.shape(x)))
    return x[index]


@op("Pad", mapping=ONE_TO_MANY, static=(1, 3))
def pad(ctx: Ctx, x: Array, pads: Any = None, constant_value: Any = None, axes: Any = None) -> Array:
    """Pad in constant/reflect/edge/wrap mode; negative pads crop.

    Before opset 11 pads (`paddings` in opset 1) and `value` are attributes."""
    raw = _input_or_attr(ctx, pads, "pads")
    if raw is None:
        raw = _ints(ctx.attr("paddings"))
    widths = _pad_widths(raw, _ints(axes) if axes is not None else None, np.ndim(x))
    mode = ctx.attr("mode", "constant")
    x = jnp.asarray(x)
    if mode == "constant":
        if constant_value is None or np.size(constant_value) == 0:
            constant_value = ctx.attr("value", 0.0)
        value = jnp.asarray(constant_value, x.dtype).reshape(())
        return jax.lax.pad(x, value, [(lo, hi, 0) for lo, hi in widths])
    x = _crop_negative(x, widths)
    return jnp.pad(x, [(max(lo, 0), max(hi, 0)) for lo, hi in widths], mode=mode)


@op("CenterCropPad", mapping=ONE_TO_MANY, static=(1,))
def center_crop_pad(ctx: Ctx, x: Array, shape: np.ndarray) -> Array:
    """Crops or zero-pads each listed axis around its centre to the target size."""
    dims = np.shape(x)
    axes = _axes(ctx.attr("axes") or range(len(dims)), len(dims))
    widths = [(0, 0)] * len(dims)
    for axis, target in zip(axes, _ints(shape)):
        diff = target - dims[axis]
        lo = diff // 2 if diff >= 0 else -((-diff) // 2)
        widths[axis] = (lo, diff - lo)
    x = jnp.asarray(x)
    return jax.lax.pad(x, jnp.zeros((), x.dtype), [(lo, hi, 0) for lo, hi in widths])


# ---------------------------------------------------------------- broadcast and generate


@op("Expand", mapping=ONE_TO_MANY, static=(1,))
def expand(ctx: Ctx, x: Array, shape: np.ndarray) -> Array:
    out = np.broadcast_shapes(np.shape(x), tuple(_ints(shape)))
    return _xp(x).broadcast_to(x, out)


@op("Tile", mapping=ONE_TO_MANY, static=(1,))
def tile(ctx: Ctx, x: Array, repeats: np.ndarray) -> Array:
    return _xp(x).tile(x, tuple(_ints(repeats)))


@op("Range", mapping=ONE_TO_MANY, static=(0, 1, 2))
def range_(ctx: Ctx, start: np.ndarray, limit: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """start + i * delta for i < ceil((limit - start) / delta), in start's dtype."""
    dtype = start.dtype
    # The spec says scalars; exporters sometimes pass one-element tensors.
    start, limit, delta = (np.asarray(v).reshape(-1)[0] for v in (start, limit, delta))
    if is_float(dtype):
        s, l, d = (float(np.float64(v)) for v in (start, limit, delta))
        count = max(int(np.ceil((l - s) / d)), 0)
        return (s + np.arange(count, dtype=np.float64) * d).astype(dtype)
    s, l, d = int(start), int(limit), int(delta)
    count = max(-(-(l - s) // d), 0)
    return (s + np.arange(count, dtype=np.int64) * d).astype(dtype)


@op("EyeLike", mapping=ONE_TO_MANY)
def eye_like(ctx: Ctx, x: Array) -> Array:
    dtype_attr = ctx.attr("dtype")
    dtype = to_numpy_dtype(dtype_attr) if dtype_attr is not None else np.dtype(x.dtype)
    rows, cols = np.shape(x)
    return np.eye(rows, cols, k=ctx.attr("k", 0), dtype=dtype)


@op("Trilu", mapping=ONE_TO_ONE, static=(1,))
def trilu(ctx: Ctx, x: Array, k: np.ndarray | None = None) -> Array:
    diagonal = int(np.asarray(k).reshape(())) if k is not None else 0
    xp = _xp(x)
    return xp.triu(x, diagonal) if ctx.attr("upper", 1) else xp.tril(x, diagonal)


@op("OneHot", mapping=ONE_TO_MANY, static=(1,))
def one_hot(ctx: Ctx, indices: Array, depth: np.ndarray, values: Array) -> Array:
    """values[1] where the (wrapped) index hits, values[0] elsewhere (out of range: all off)."""
    n = int(np.asarray(depth).reshape(-1)[0])
    rank = np.ndim(indices) + 1
    axis = _axis(ctx.attr("axis", -1), rank)
    idx = jnp.asarray(indices)
    idx = jnp.where(idx < 0, idx + jnp.asarray(n, idx.dtype), idx)
    positions = jnp.arange(n, dtype=idx.dtype).reshape([n if i == axis else 1 for i in range(rank)])
    hot = jnp.expand_dims(idx, axis) == positions  # a non-integral float index matches nothing
    values = jnp.asarray(values).reshape(-1)
    return jnp.where(hot, values[1], values[0])


# ---------------------------------------------------------------- gather


@op("Gather", mapping=ONE_TO_MANY)
def gather(ctx: Ctx, x: Array, indices: Array) -> Array:
    axis = _axis(ctx.attr("axis", 0), np.ndim(x))
    idx = _wrap_index(indices, np.shape(x)[axis])
    if _xp(x, indices) is np:
        return np.take(x, idx, axis=axis)
    return jnp.take(x, idx, axis=axis, mode="clip")


@op("GatherElements", mapping=ONE_TO_MANY)
def gather_elements(ctx: Ctx, x: Array, indices: Array) -> Array:
    axis = _axis(ctx.attr("axis", 0), np.ndim(x))
    idx = _wrap_index(indices, np.shape(x)[axis])
    if _xp(x, indices) is np:
        return np.take_along_axis(x, idx, axis=axis)
    return jnp.take_along_axis(x, idx, axis=axis, mode="clip")


def _nd_index(shape: Sequence[int], indices: Array, batch_dims: int) -> tuple:
    """The advanced-index tuple of GatherND/ScatterND: batch iotas then index columns."""
    lead = tuple(np.shape(indices)[:-1])
    batch = tuple(_iota(lead, b) for b in range(batch_dims))
    depth = np.shape(indices)[-1]
    columns = tuple(_wrap_index(indices[..., j], shape[batch_dims + j]) for j in range(depth))
    return batch + columns


@op("GatherND", mapping=ONE_TO_MANY)
def gather_nd(ctx: Ctx, x: Array, indices: Array) -> Array:
    index = _nd_index(np.shape(x), indices, ctx.attr("batch_dims", 0))
    return jnp.asarray(x)[index]


# ---------------------------------------------------------------- scatter


def _elements_index(indices: Array, axis: int, dim: int) -> tuple:
    """Full coordinates for ScatterElements: iotas except `indices` along `axis`."""
    shape = np.shape(indices)
    return tuple(_wrap_index(indices, dim) if d == axis else _iota(shape, d) for d in range(len(shape)))


@op(("ScatterElements", "Scatter"), mapping=MANY_TO_MANY)
def scatter_elements(ctx: Ctx, x: Array, indices: Array, updates: Array) -> Array:
    axis = _axis(ctx.attr("axis", 0), np.ndim(x))
    index = _elements_index(indices, axis, np.shape(x)[axis])
    return _scatter(x, index, updates, ctx.attr("reduction", "none"))


@op("ScatterND", mapping=MANY_TO_MANY)
def scatter_nd(ctx: Ctx, x: Array, indices: Array, updates: Array) -> Array:
    return _scatter(x, _nd_index(np.shape(x), indices, 0), updates, ctx.attr("reduction", "none"))


@op("TensorScatter", mapping=MANY_TO_MANY)
def tensor_scatter(ctx: Ctx, cache: Array, update: Array, write_indices: Array | None = None) -> Array:
    """Writes `update` into `cache` along `axis` from each batch's write index."""
    shape = np.shape(update)
    axis = _axis(ctx.attr("axis", -2), len(shape))
    length = np.shape(cache)[axis]
    if write_indices is None:
        write_indices = np.zeros((shape[0],), np.int64)
    starts = jnp.asarray(write_indices, jnp.int64)[_iota(shape, 0)]
    positions = starts + _iota(shape, axis)
    if ctx.attr("mode", "linear") == "circular":
        positions = positions % length
    index = tuple(positions if d == axis else _iota(shape, d) for d in range(len(shape)))
    return jnp.asarray(cache).at[index].set(jnp.asarray(update, cache.dtype), mode="drop")


# ---------------------------------------------------------------- data-dependent shapes


@op("Compress", mapping=ONE_TO_MANY, dynamic_shape=True)
def compress(ctx: Ctx, x: Array, condition: Array) -> np.ndarray:
    x = ctx.static(x, "Compress data")
    keep = ctx.static(condition, "Compress condition").astype(bool).reshape(-1)
    axis = ctx.attr("axis")
    if axis is None:
        return np.compress(keep, x.reshape(-1))
    return np.compress(keep, x, axis=_axis(axis, x.ndim))


@op("NonZero", mapping=MANY_TO_MANY, dynamic_shape=True)
def non_zero(ctx: Ctx, x: Array) -> np.ndarray:
    x = ctx.static(x, "NonZero input")
    x = x.astype(np.float32) if x.dtype.kind not in "biufc" else x
    if x.ndim == 0:
        return np.zeros((0, int(x != 0)), np.int64)
    return np.asarray(np.nonzero(x), dtype=np.int64).reshape(x.ndim, -1)


def _sortable(x: np.ndarray) -> np.ndarray:
    """ml_dtypes floats as float32 so numpy can sort them (values stay exact)."""
    return x.astype(np.float32) if x.dtype.kind not in "biufcUSO" else x


@op("Unique", mapping=MANY_TO_MANY, dynamic_shape=True)
def unique(ctx: Ctx, x: Array) -> tuple:
    """Unique values (or slices along `axis`), first indices, inverse and counts."""
    x = ctx.static(x, "Unique input")
    axis = ctx.attr("axis")
    flat = x.reshape(-1) if axis is None else x
    axis = 0 if axis is None else _axis(axis, x.ndim)
    _, first, inverse, counts = np.unique(_sortable(flat), return_index=True, return_inverse=True,
                                          return_counts=True, axis=axis)
    inverse = inverse.reshape(-1)
    if not ctx.attr("sorted", 1):
        order = np.argsort(first, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size)
        first, counts, inverse = first[order], counts[order], rank[inverse]
    y = np.take(flat, first, axis=axis)
    outputs = (y, first.astype(np.int64), inverse.astype(np.int64), counts.astype(np.int64))
    return outputs[: max(len(ctx.node.outputs), 1)]


# ---------------------------------------------------------------- sequences of images


@op("ReverseSequence", mapping=SHUFFLE)
def reverse_sequence(ctx: Ctx, x: Array, lengths: Array) -> Array:
    """Reverses the first lengths[b] steps along the time axis of each batch b."""
    shape = np.shape(x)
    time_axis = _axis(ctx.attr("time_axis", 0), len(shape))
    batch_axis = _axis(ctx.attr("batch_axis", 1), len(shape))
    view = [1] * len(shape)
    view[batch_axis] = shape[batch_axis]
    n = jnp.asarray(lengths, jnp.int64).reshape(view)
    t = _iota(shape, time_axis)
    source = jnp.where(t < n, n - 1 - t, t)
    return jnp.take_along_axis(jnp.asarray(x), source, axis=time_axis)


def _col2im_positions(image: list[int], block: list[int], dilations: list[int], pads: list[int],
                      strides: list[int]) -> tuple[tuple[Array, ...], list[int]]:
    """Padded-image coordinates of every (kernel offset..., block position...) pair."""
    n = len(image)
    padded = [image[d] + pads[d] + pads[n + d] for d in range(n)]
    blocks = [(padded[d] - dilations[d] * (block[d] - 1) - 1) // strides[d] + 1 for d in range(n)]
    grid = block + blocks
    positions = tuple(
        _iota(grid, d) * dilations[d] + _iota(grid, n + d) * strides[d] for d in range(n)
    )
    return positions, blocks


@op("Col2Im", mapping=MANY_TO_MANY, static=(1, 2))
def col2im(ctx: Ctx, x: Array, image_shape: np.ndarray, block_shape: np.ndarray) -> Array:
    """Sums sliding blocks (N, C*prod(block), L) back into images (N, C, *image)."""
    image, block = _ints(image_shape), _ints(block_shape)
    n = len(image)
    dilations = _ints(ctx.attr("dilations")) or [1] * n
    strides = _ints(ctx.attr("strides")) or [1] * n
    pads = _ints(ctx.attr("pads")) or [0] * (2 * n)
    positions, blocks = _col2im_positions(image, block, dilations, pads, strides)
    batch, channels_blocks = np.shape(x)[:2]
    channels = channels_blocks // int(np.prod(block))
    cols = jnp.reshape(x, (batch, channels, *block, *blocks))
    padded = [image[d] + pads[d] + pads[n + d] for d in range(n)]
    out = jnp.zeros((batch, channels, *padded), x.dtype).at[(slice(None), slice(None)) + positions].add(cols)
    crop = tuple(slice(pads[d], pads[d] + image[d]) for d in range(n))
    return out[(slice(None), slice(None)) + crop]


# ---------------------------------------------------------------- dropout


def _dropout(ctx: Ctx, x: Array, ratio: float, training: bool) -> tuple:
    """Inference: identity and an all-true mask; training: a seeded Bernoulli mask."""
    mask_dtype = ctx.out_dtype(1) or np.dtype(bool)
    if not training or ratio == 0:
        mask = jnp.ones(np.shape(x), mask_dtype)
        return (x, mask)[: len(ctx.node.outputs)]
    key = jax.random.PRNGKey(int(ctx.attr("seed", 0)))
    keep = jax.random.uniform(key, np.shape(x)) >= ratio
    scale = jnp.asarray(1.0 / (1.0 - ratio) if ratio < 1 else 0.0, x.dtype)
    y = jnp.where(keep, x * scale, jnp.zeros((), x.dtype))
    return (y, keep.astype(mask_dtype))[: len(ctx.node.outputs)]


@op("Dropout", mapping=ONE_TO_ONE)
def dropout_old(ctx: Ctx, x: Array) -> tuple:
    """Before opset 12 the runtime, not the graph, picks the mode: inference here."""
    return _dropout(ctx, x, float(ctx.attr("ratio", 0.5)), training=False)


@op("Dropout", mapping=ONE_TO_ONE, since=12, static=(1, 2), nondeterministic=True)
def dropout(ctx: Ctx, x: Array, ratio: Any = None, training_mode: Any = None) -> tuple:
    rate = float(np.asarray(ratio).reshape(())) if ratio is not None else 0.5
    training = bool(np.asarray(training_mode).reshape(())) if training_mode is not None else False
    return _dropout(ctx, x, rate, training)
