"""Image ops: Resize, Upsample, GridSample, AffineGrid, RoiAlign.

Resize is separable: every resized axis becomes a gather of `n` neighbour taps
plus a weighted sum, with the tap indices and weights computed in numpy from
the static scales/sizes/roi. GridSample's taps come from runtime grid values.
"""
from __future__ import annotations

import itertools
import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from autofuse.ops.registry import MANY_TO_MANY, ONE_TO_MANY, Ctx, op

CoeffFn = Callable[[np.ndarray, float], np.ndarray]


def _text(value, default: str) -> str:
    """A string attribute (bytes or str), lower-cased."""
    if value is None:
        return default
    return (value.decode() if isinstance(value, bytes) else str(value)).lower()


def _compute_dtype(dtype) -> np.dtype:
    """The float type interpolation runs in: float64 for float64 and integer data
    (so rounding back to integers matches the float64 reference), else float32."""
    dtype = np.dtype(dtype)
    wide = dtype == np.float64 or np.issubdtype(dtype, np.integer)
    return np.dtype(np.float64) if wide else np.dtype(np.float32)


def _saturate(y: jax.Array, dtype) -> jax.Array:
    """Casts interpolated values back like onnx's saturate_cast (round ints, clip to range)."""
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        y = jnp.round(y)
    else:
        info = jnp.finfo(dtype)
    lo, hi = jnp.asarray(float(info.min), y.dtype), jnp.asarray(float(info.max), y.dtype)
    return jnp.clip(y, lo, hi).astype(dtype)


# ----------------------------------------------------------------- Resize: coefficients


def _nearest_coeffs(mode: str) -> CoeffFn:
    """Two-tap one-hot weights picking the left or right neighbour by nearest_mode."""

    def coeffs(ratio: np.ndarray, scale: float) -> np.ndarray:
        whole = ratio == 1.0
        if mode == "round_prefer_floor":
            right = ratio > 0.5
        elif mode == "round_prefer_ceil":
            right = ratio >= 0.5
        elif mode == "floor":
            right = np.zeros_like(whole)
        elif mode == "ceil":
            right = np.ones_like(whole)
        elif mode == "simple":  # opset < 11: floor when upsampling, ceil when downsampling
            right = np.full(whole.shape, scale < 1.0)
        else:
            raise ValueError(f"unknown nearest_mode {mode!r}")
        right = right | whole
        return np.stack([~right, right], axis=-1).astype(np.float64)

    return coeffs


def _linear_coeffs(antialias: bool) -> CoeffFn:
    """Triangle-filter weights; widened by 1/scale when antialiasing a downsample."""

    def coeffs(ratio: np.ndarray, scale: float) -> np.ndarray:
        if not antialias:
            return np.stack([1.0 - ratio, ratio], axis=-1)
        s = min(scale, 1.0)
        start = int(np.floor(-1.0 / s) + 1)
        taps = np.arange(start, start + 2 - 2 * start)
        w = np.clip(1.0 - np.abs((taps[None, :] - ratio[:, None]) * s), 0.0, 1.0)
        return w / w.sum(axis=-1, keepdims=True)

    return coeffs


def _cubic_kernel(x: np.ndarray, a: float) -> np.ndarray:
    """Keys' cubic convolution kernel with parameter a."""
    x = np.abs(x)
    near = (a + 2) * x**3 - (a + 3) * x**2 + 1
    far = a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a
    return np.where(x <= 1, near, np.where(x < 2, far, 0.0))


def _cubic_coeffs(antialias: bool, a: float) -> CoeffFn:
    """Four cubic taps; widened by 1/scale when antialiasing a downsample."""

    def coeffs(ratio: np.ndarray, scale: float) -> np.ndarray:
        if not antialias:
            taps = np.array([-1.0, 0.0, 1.0, 2.0])
            return _cubic_kernel(taps[None, :] - ratio[:, None], a)
        s = min(scale, 1.0)
        start = int(np.floor(-2.0 / s) + 1)
        taps = np.arange(start, 2 - start)
        w = _cubic_kernel(s * (taps[None, :] - ratio[:, None]), a)
        return w / w.sum(axis=-1, keepdims=True)

    return coeffs


# ----------------------------------------------------------------- Resize: coordinates


def _source_coords(mode: str, out_size: int, in_size: int, scale: float, roi) -> tuple[np.ndarray, np.ndarray | None]:
    """Maps output indices to input coordinates; also flags tf_crop_and_resize extrapolation."""
    y = np.arange(out_size, dtype=np.float64)
    length = scale * in_size
    outside = None
    if mode == "align_corners":
        x = np.zeros(out_size) if length == 1 else y * (in_size - 1) / (length - 1)
    elif mode == "asymmetric":
        x = y / scale
    elif mode == "tf_crop_and_resize":
        lo, hi = float(roi[0]), float(roi[1])
        if length == 1:
            x = np.full(out_size, (hi - lo) * (in_size - 1) / 2)
        else:
            x = y * (hi - lo) * (in_size - 1) / (length - 1)
        x = x + lo * (in_size - 1)
        outside = (x < 0) | (x > in_size - 1)
    elif mode == "pytorch_half_pixel":
        x = np.full(out_size, -0.5) if length == 1 else (y + 0.5) / scale - 0.5
    elif mode == "half_pixel":
        x = (y + 0.5) / scale - 0.5
    elif mode == "half_pixel_symmetric":
        offset = in_size / 2 * (1 - out_size / length)
        x = offset + (y + 0.5) / scale - 0.5
    else:
        raise ValueError(f"unknown coordinate_transformation_mode {mode!r}")
    return x, outside


def _axis_taps(
    in_size: int, out_size: int, scale: float, roi, coeff_fn: CoeffFn, coord_mode: str, exclude_outside: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Per output position: the input indices (out, n), their weights, and extrapolated flags."""
    x, outside = _source_coords(coord_mode, out_size, in_size, scale, roi)
    base = np.floor(x)
    ratio = np.where(x == base, 1.0, x - base)  # prefer the left pixel: ratio in (0, 1]
    weights = np.asarray(coeff_fn(ratio, scale), dtype=np.float64)
    n = weights.shape[-1]
    # The n taps nearest to x, ties to the smaller index (edge-padded source).
    pad = int(math.ceil(n / 2))
    xp = x + pad
    p = np.floor(xp).astype(np.int64)
    frac = xp - p
    if n % 2 == 0:
        start = p + np.where(frac == 0, -(n // 2), -(n // 2) + 1)
    else:
        low = -((n - 1) // 2)
        start = p + np.where(frac <= 0.5, low, low + 1)
    index = start[:, None] + np.arange(n)[None, :] - pad
    if exclude_outside:
        weights = np.where((index < 0) | (index >= in_size), 0.0, weights)
        total = weights.sum(axis=-1, keepdims=True)
        weights = weights / np.where(total == 0, 1.0, total)
    return np.clip(index, 0, in_size - 1), weights, outside


def _resample_axis(x: jax.Array, axis: int, index: np.ndarray, weights: np.ndarray, nearest: bool) -> jax.Array:
    """Gathers taps along `axis` and sums them with weights (a pure gather for nearest)."""
    if nearest:
        pick = index[np.arange(index.shape[0]), np.argmax(weights, axis=-1)]
        return jnp.take(x, jnp.asarray(pick), axis=axis)
    taps = jnp.take(x, jnp.asarray(index.reshape(-1)), axis=axis)
    shape = x.shape[:axis] + index.shape + x.shape[axis + 1:]
    taps = jnp.reshape(taps, shape)
    w = jnp.asarray(weights, x.dtype).reshape(index.shape + (1,) * (x.ndim - axis - 1))
    return jnp.sum(taps * w, axis=axis + 1)


def _resize_plan(shape: Sequence[int], scales, sizes, roi, axes, policy: str):
    """Full-rank scales, output sizes and roi pairs from the (possibly partial) static inputs."""
    rank = len(shape)
    axes = list(range(rank)) if axes is None else [a % rank for a in axes]
    full_roi = None
    if roi is not None:
        lo, hi = [0.0] * rank, [1.0] * rank
        k = len(axes)
        for i, a in enumerate(axes):
            lo[a], hi[a] = float(roi[i]), float(roi[k + i])
        full_roi = list(zip(lo, hi))
    if sizes is not None:
        out = list(shape)
        for i, a in enumerate(axes):
            out[a] = int(sizes[i])
        factors = [out[i] / shape[i] for i in range(rank)]
        if policy != "stretch":
            chosen = [factors[a] for a in axes]
            s = min(chosen) if policy == "not_larger" else max(chosen)
            factors = [s if i in axes else 1.0 for i in range(rank)]
            out = [int(s * shape[i] + 0.5) if i in axes else shape[i] for i in range(rank)]
    else:
        factors = [1.0] * rank
        for i, a in enumerate(axes):
            factors[a] = scales[i]
        out = [int(v) for v in (np.asarray(factors, dtype=np.asarray(scales).dtype) * np.array(shape))]
        factors = [float(f) for f in np.asarray(factors, dtype=np.asarray(scales).dtype)]
    return axes, factors, out, full_roi


def _resize(x: jax.Array, scales, sizes, roi, *, mode: str, coord_mode: str, nearest_mode: str,
            cubic_a: float, exclude_outside: bool, extrapolation: float, antialias: bool,
            axes, policy: str) -> jax.Array:
    """Resize with static scales/sizes/roi (None when omitted)."""
    if mode == "nearest":
        coeff_fn = _nearest_coeffs(nearest_mode)
    elif mode in ("linear", "bilinear", "trilinear"):
        coeff_fn = _linear_coeffs(antialias)
    elif mode in ("cubic", "bicubic"):
        coeff_fn = _cubic_coeffs(antialias, cubic_a)
    else:
        raise ValueError(f"unknown Resize mode {mode!r}")
    axes, factors, out, full_roi = _resize_plan(x.shape, scales, sizes, roi, axes, policy)
    nearest = mode == "nearest"
    y = x if nearest else x.astype(_compute_dtype(x.dtype))
    for axis in axes:
        axis_roi = None if full_roi is None else full_roi[axis]
        trivial_roi = axis_roi is None or (math.isclose(axis_roi[0], 0.0) and math.isclose(axis_roi[1], 1.0))
        if math.isclose(factors[axis], 1.0) and out[axis] == y.shape[axis] and trivial_roi:
            continue
        if out[axis] == 0:
            y = jnp.zeros(y.shape[:axis] + (0,) + y.shape[axis + 1:], y.dtype)
            continue
        index, weights, outside = _axis_taps(y.shape[axis], out[axis], factors[axis], axis_roi,
                                             coeff_fn, coord_mode, exclude_outside)
        y = _resample_axis(y, axis, index, weights, nearest)
        if outside is not None and outside.any():
            flags = jnp.asarray(outside).reshape((-1,) + (1,) * (y.ndim - axis - 1))
            y = jnp.where(flags, jnp.asarray(extrapolation, y.dtype), y)
    return y.astype(x.dtype) if nearest else _saturate(y, x.dtype)


def _present(value) -> np.ndarray | None:
    """A static optional input, None when omitted or empty."""
    if value is None:
        return None
    value = np.asarray(value)
    return None if value.size == 0 else value


@op("Resize", mapping=ONE_TO_MANY, since=11, static=(1, 2, 3))
def resize(ctx: Ctx, x, roi=None, scales=None, sizes=None):
    """Resize (opset 11+): nearest/linear/cubic, every coordinate mode, antialias, axes."""
    axes = ctx.attr("axes", None)
    return _resize(
        x, _present(scales), _present(sizes), _present(roi),
        mode=_text(ctx.attr("mode"), "nearest"),
        coord_mode=_text(ctx.attr("coordinate_transformation_mode"), "half_pixel"),
        nearest_mode=_text(ctx.attr("nearest_mode"), "round_prefer_floor"),
        cubic_a=float(ctx.attr("cubic_coeff_a", -0.75)),
        exclude_outside=bool(ctx.attr("exclude_outside", 0)),
        extrapolation=float(ctx.attr("extrapolation_value", 0.0)),
        antialias=bool(ctx.attr("antialias", 0)),
        axes=None if axes is None else [int(a) for a in axes],
        policy=_text(ctx.attr("keep_aspect_ratio_policy"), "stretch"),
    )


def _legacy_resize(ctx: Ctx, x, scales) -> jax.Array:
    """Upsample / Resize-10: asymmetric coordinates, floor-style nearest."""
    return _resize(
        x, np.asarray(scales, np.float32), None, None,
        mode=_text(ctx.attr("mode"), "nearest"), coord_mode="asymmetric", nearest_mode="simple",
        cubic_a=-0.75, exclude_outside=False, extrapolation=0.0, antialias=False, axes=None,
        policy="stretch",
    )


@op("Resize", mapping=ONE_TO_MANY, since=10, static=(1,))
def resize_10(ctx: Ctx, x, scales):
    """Resize-10: scales only, asymmetric coordinates."""
    return _legacy_resize(ctx, x, scales)


@op("Upsample", mapping=ONE_TO_MANY, since=9, static=(1,))
def upsample_9(ctx: Ctx, x, scales):
    """Upsample-9: scales as an input."""
    return _legacy_resize(ctx, x, scales)


@op("Upsample", mapping=ONE_TO_MANY, since=7)
def upsample_7(ctx: Ctx, x):
    """Upsample-7: scales as an attribute."""
    return _legacy_resize(ctx, x, ctx.attr("scales"))


# ----------------------------------------------------------------- GridSample


def _reflect(x: jax.Array, lo: float, hi: float) -> jax.Array:
    """Reflects coordinates off the borders [lo, hi] until they fall inside."""
    span = hi - lo
    if span <= 0:
        return jnp.full_like(x, lo)
    below = x < lo
    dist = jnp.where(below, lo - x, x - hi)
    n = jnp.trunc(dist / span)
    r = dist - n * span
    even = jnp.mod(n, 2) == 0
    from_below = jnp.where(even, lo + r, hi - r)
    from_above = jnp.where(even, hi - r, lo + r)
    return jnp.where(below, from_below, jnp.where(x > hi, from_above, x))


def _grid_cubic(t: jax.Array) -> list[jax.Array]:
    """Cubic convolution weights (a = -0.75) for taps -1, 0, 1, 2 at fraction t."""
    a = -0.75
    t = jnp.abs(t)

    def far(d):
        return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a

    def near(d):
        return ((a + 2) * d - (a + 3)) * d * d + 1

    return [far(t + 1), near(t), near(1 - t), far(2 - t)]


def _grid_taps(coord: jax.Array, size: int, mode: str, padding: str, lo: float, hi: float):
    """Per spatial dim: [(integer index, weight, in-range flag)] for each interpolation tap."""
    if mode == "nearest":
        base = coord.astype(jnp.int32)
        offsets, weights = [0], [jnp.ones_like(coord)]
    else:
        floor = jnp.floor(coord)
        base = floor.astype(jnp.int32)
        t = coord - floor
        if mode == "linear":
            offsets, weights = [0, 1], [1 - t, t]
        else:
            offsets, weights = [-1, 0, 1, 2], _grid_cubic(t)
    taps = []
    for off, w in zip(offsets, weights):
        i = base + off
        valid = (i >= 0) & (i < size)
        if padding == "border":
            i = jnp.clip(i, 0, size - 1)
        elif padding == "reflection":
            i = _reflect(i.astype(coord.dtype), lo, hi).astype(jnp.int32)
        taps.append((jnp.clip(i, 0, size - 1), w, valid))
    return taps


@op("GridSample", mapping=MANY_TO_MANY, since=16)
def grid_sample(ctx: Ctx, x, grid):
    """Samples x at normalised grid locations (N-D; nearest/linear/cubic; zeros/border/reflection)."""
    mode = _text(ctx.attr("mode"), "linear")
    mode = {"bilinear": "linear", "bicubic": "cubic"}.get(mode, mode)  # opset 16 names
    padding = _text(ctx.attr("padding_mode"), "zeros")
    align = bool(ctx.attr("align_corners", 0))
    dims = x.shape[2:]
    cdtype = jnp.float64 if grid.dtype == jnp.float64 else jnp.float32
    coords = grid.astype(cdtype)[..., ::-1]  # the grid lists the innermost dim first
    per_dim = []
    for d, size in enumerate(dims):
        n = coords[..., d]
        lo, hi = (0.0, size - 1.0) if align else (-0.5, size - 0.5)
        c = (n + 1) / 2 * (size - 1) if align else ((n + 1) * size - 1) / 2
        if mode == "nearest":
            c = jnp.round(c)  # round half to even, like PyTorch
        out_of_range = (c < lo) | (c > hi)
        if padding == "border":
            c = jnp.where(out_of_range, jnp.clip(c, 0, size - 1), c)
        elif padding == "reflection":
            c = jnp.where(out_of_range, _reflect(c, lo, hi), c)
        per_dim.append(_grid_taps(c, size, mode, padding, lo, hi))
    xt = jnp.moveaxis(x, 1, -1)  # (N, D1..Dk, C)
    batch = jnp.arange(x.shape[0]).reshape((-1,) + (1,) * (grid.ndim - 2))
    wdtype = _compute_dtype(x.dtype)
    total = None
    for combo in itertools.product(*per_dim):
        index = tuple(i for i, _, _ in combo)
        w = jnp.ones((), wdtype)
        for _, wt, valid in combo:
            w = w * wt.astype(wdtype)
            if padding == "zeros":
                w = jnp.where(valid, w, jnp.zeros((), wdtype))
        term = xt[(batch,) + index].astype(wdtype) * w[..., None]
        total = term if total is None else total + term
    return jnp.moveaxis(total, -1, 1).astype(x.dtype)


# ----------------------------------------------------------------- AffineGrid


def _base_grid(sizes: Sequence[int], align: bool) -> np.ndarray:
    """Homogeneous normalised coordinates (..., k+1), innermost dim first, then 1."""
    axes = []
    for size in sizes:
        if align:
            a = np.linspace(-1.0, 1.0, size) if size > 1 else np.array([-1.0])
        else:
            a = (np.arange(size) * 2.0 + 1.0) / size - 1.0
        axes.append(a)
    mesh = np.meshgrid(*axes, indexing="ij")
    return np.stack(list(reversed(mesh)) + [np.ones(tuple(sizes))], axis=-1)


@op("AffineGrid", mapping=MANY_TO_MANY, since=20, static=(1,))
def affine_grid(ctx: Ctx, theta, size):
    """The sampling grid of an affine transform theta (N, k, k+1) over spatial `size`."""
    sizes = [int(s) for s in np.asarray(size)[2:]]
    base = jnp.asarray(_base_grid(sizes, bool(ctx.attr("align_corners", 0))), theta.dtype)
    flat = base.reshape(-1, len(sizes) + 1)
    grid = jnp.einsum("pj,nij->npi", flat, theta)
    return grid.reshape((theta.shape[0], *sizes, len(sizes)))


# ----------------------------------------------------------------- RoiAlign


def _roi_samples(start, bin_size, pooled: int, grid: int, counts) -> jax.Array:
    """Sample positions (R, pooled, grid) inside each bin; samples past a roi's count are NaN."""
    p = jnp.arange(pooled).reshape(1, pooled, 1)
    g = jnp.arange(grid).reshape(1, 1, grid)
    pos = start[:, None, None] + p * bin_size[:, None, None] + (g + 0.5) * bin_size[:, None, None] / counts[:, None, None]
    return jnp.where(g < counts[:, None, None], pos, jnp.nan)


def _bilinear_setup(coord: jax.Array, size: int):
    """RoiAlign's clamped low/high indices and fractional weights along one axis."""
    c = jnp.maximum(coord, 0)
    low = jnp.floor(c).astype(jnp.int32)
    at_edge = low >= size - 1
    low = jnp.where(at_edge, size - 1, low)
    high = jnp.where(at_edge, size - 1, low + 1)
    c = jnp.where(at_edge, low.astype(c.dtype), c)
    frac = c - low
    return low, high, 1 - frac, frac


@op("RoiAlign", mapping=MANY_TO_MANY, since=10)
def roi_align(ctx: Ctx, x, rois, batch_indices):
    """Average or max RoiAlign with bilinear samples (output_half_pixel or half_pixel)."""
    half_pixel = _text(ctx.attr("coordinate_transformation_mode"), "half_pixel") == "half_pixel"
    if ctx.opset < 16:
        half_pixel = False
    mode = _text(ctx.attr("mode"), "avg")
    out_h, out_w = int(ctx.attr("output_height", 1)), int(ctx.attr("output_width", 1))
    ratio = int(ctx.attr("sampling_ratio", 0))
    spatial = float(ctx.attr("spatial_scale", 1.0))
    height, width = x.shape[2], x.shape[3]
    dtype = _compute_dtype(x.dtype)
    r = rois.astype(dtype) * spatial - (0.5 if half_pixel else 0.0)
    start_w, start_h, end_w, end_h = r[:, 0], r[:, 1], r[:, 2], r[:, 3]
    roi_w, roi_h = end_w - start_w, end_h - start_h
    if not half_pixel:
        roi_w, roi_h = jnp.maximum(roi_w, 1.0), jnp.maximum(roi_h, 1.0)
    bin_h, bin_w = roi_h / out_h, roi_w / out_w
    if ratio > 0:
        grid_h = grid_w = ratio
        count_h = jnp.full(rois.shape[:1], ratio, dtype)
        count_w = count_h
    else:  # adaptive: ceil(roi / pooled) samples, bounded by the feature map size
        count_h = jnp.ceil(roi_h / out_h)
        count_w = jnp.ceil(roi_w / out_w)
        grid_h = max(1, int(math.ceil(height / out_h)) + 1)
        grid_w = max(1, int(math.ceil(width / out_w)) + 1)
        if isinstance(rois, np.ndarray):
            grid_h = max(1, int(np.max(np.asarray(count_h), initial=1)))
            grid_w = max(1, int(np.max(np.asarray(count_w), initial=1)))
    ys = _roi_samples(start_h, bin_h, out_h, grid_h, count_h)  # (R, out_h, gh)
    xs = _roi_samples(start_w, bin_w, out_w, grid_w, count_w)  # (R, out_w, gw)
    y, xx = ys[:, :, None, :, None], xs[:, None, :, None, :]  # (R, oh, ow, gh, gw)
    used = ~(jnp.isnan(y) | jnp.isnan(xx))
    inside = used & ~((y < -1.0) | (y > height) | (xx < -1.0) | (xx > width))
    y0, y1, hy, ly = _bilinear_setup(jnp.nan_to_num(y), height)
    x0, x1, hx, lx = _bilinear_setup(jnp.nan_to_num(xx), width)
    feat = jnp.moveaxis(x, 1, -1).astype(dtype)  # (N, H, W, C)
    b = batch_indices.astype(jnp.int32).reshape(-1, 1, 1, 1, 1)
    zero = jnp.zeros((), dtype)
    corners = [(y0, x0, hy * hx), (y0, x1, hy * lx), (y1, x0, ly * hx), (y1, x1, ly * lx)]
    terms = [feat[b, yi, xi] * jnp.where(inside, w, zero)[..., None] for yi, xi, w in corners]
    if mode == "avg":
        total = jnp.sum(jnp.where(used[..., None], sum(terms), zero), axis=(3, 4))
        count = jnp.maximum(count_h * count_w, 1.0).reshape(-1, 1, 1, 1)
        out = total / count
    else:
        best = jnp.maximum(jnp.maximum(terms[0], terms[1]), jnp.maximum(terms[2], terms[3]))
        best = jnp.where(used[..., None], best, jnp.asarray(-jnp.inf, dtype))
        out = jnp.max(best, axis=(3, 4))
    return jnp.moveaxis(out, -1, 1).astype(x.dtype)
