"""Op lowerings: signal family (see registry.py for the conventions).

DFT and STFT work on ONNX's real representation of complex signals: a trailing
dimension of 1 (real) or 2 (real, imaginary). The window generators and
MelWeightMatrix have only static inputs, so they always fold to constants.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from autofuse.dtypes import to_numpy_dtype
from autofuse.ops.registry import MANY_TO_MANY, ONE_TO_MANY, Ctx, op

# -------------------------------------------------------------- DFT, STFT ---


def _scalar(value, default: int | None = None) -> int | None:
    """An int from an optional static scalar (or 1-element) input."""
    if value is None:
        return default
    array = np.asarray(value).reshape(-1)
    return int(array[0]) if array.size else default


def _precision(dtype: np.dtype) -> np.dtype:
    """The real type a transform runs in: float64 stays, anything else is float32."""
    return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)


def _to_complex(x: jax.Array) -> jax.Array:
    """[..., 1] real or [..., 2] (re, im) -> a complex array without the last dim."""
    part = _precision(x.dtype)
    real = x[..., 0].astype(part)
    imag = x[..., 1].astype(part) if x.shape[-1] == 2 else jnp.zeros_like(real)
    return jax.lax.complex(real, imag)


def _from_complex(z: jax.Array, dtype: np.dtype) -> jax.Array:
    """A complex array -> [..., 2] (re, im) in `dtype`."""
    return jnp.stack([jnp.real(z), jnp.imag(z)], axis=-1).astype(dtype)


def _real_fft(x: jax.Array, n: int, axis: int, onesided: bool) -> jax.Array:
    """FFT of a real signal [..., 1]: rfft, then Hermitian symmetry for the full spectrum.

    A real transform gives exact zeros where the spectrum's imaginary part must
    vanish (DC, Nyquist), as numpy and onnxruntime do.
    """
    half = jnp.fft.rfft(x[..., 0].astype(_precision(x.dtype)), n=n, axis=axis)
    if onesided:
        return half
    mirrored = jax.lax.slice_in_dim(half, 1, (n + 1) // 2, axis=axis)
    return jnp.concatenate([half, jnp.conj(jnp.flip(mirrored, axis=axis))], axis=axis)


def _dft(x, length: int | None, axis: int, inverse: bool, onesided: bool) -> jax.Array:
    """ONNX DFT: forward (optionally one-sided), inverse, or one-sided inverse (irfft)."""
    x = jnp.asarray(x)
    axis = axis % x.ndim
    if axis == x.ndim - 1:
        raise ValueError("DFT axis cannot be the last (complex) dimension")
    if inverse and onesided:
        n = length if length is not None else 2 * (x.shape[axis] - 1)
        return jnp.fft.irfft(_to_complex(x), n=n, axis=axis)[..., None].astype(x.dtype)
    n = length if length is not None else x.shape[axis]
    if inverse:
        return _from_complex(jnp.fft.ifft(_to_complex(x), n=n, axis=axis), x.dtype)
    if x.shape[-1] == 1:
        return _from_complex(_real_fft(x, n, axis, onesided), x.dtype)
    spectrum = jnp.fft.fft(_to_complex(x), n=n, axis=axis)
    if onesided:
        spectrum = jax.lax.slice_in_dim(spectrum, 0, n // 2 + 1, axis=axis)
    return _from_complex(spectrum, x.dtype)


@op("DFT", mapping=MANY_TO_MANY, since=17, static=(1,))
def dft_v17(ctx: Ctx, x, dft_length=None):
    return _dft(x, _scalar(dft_length), int(ctx.attr("axis", 1)),
                bool(ctx.attr("inverse", 0)), bool(ctx.attr("onesided", 0)))


@op("DFT", mapping=MANY_TO_MANY, since=20, static=(1, 2))
def dft(ctx: Ctx, x, dft_length=None, axis=None):
    return _dft(x, _scalar(dft_length), _scalar(axis, -2),
                bool(ctx.attr("inverse", 0)), bool(ctx.attr("onesided", 0)))


@op("STFT", mapping=MANY_TO_MANY, since=17, static=(1, 3))
def stft(ctx: Ctx, signal, frame_step, window=None, frame_length=None):
    """Windowed DFTs of frames: [batch, length, 1|2] -> [batch, frames, bins, 2]."""
    signal = jnp.asarray(signal)
    step = _scalar(frame_step)
    length = _scalar(frame_length)
    if length is None:
        length = window.shape[0] if window is not None else signal.shape[1]
    frames = 1 + (signal.shape[1] - length) // step
    starts = np.arange(frames)[:, None] * step + np.arange(length)[None, :]
    framed = signal[:, starts, :]  # [batch, frames, length, 1|2]
    if window is not None:
        framed = framed * jnp.asarray(window, signal.dtype)[None, None, :, None]
    return _dft(framed, length, 2, False, bool(ctx.attr("onesided", 1)))


# ---------------------------------------------------------------- windows ---


def _window_positions(ctx: Ctx, size) -> tuple[np.ndarray, int]:
    """n = 0..size-1 and the period N (size if periodic, else size - 1)."""
    count = _scalar(size)
    period = count if ctx.attr("periodic", 1) else count - 1
    return np.arange(count, dtype=np.float64), period


def _window_dtype(ctx: Ctx) -> np.dtype:
    return to_numpy_dtype(ctx.attr("output_datatype", 1))


def _cosine_window(ctx: Ctx, size, coefficients: tuple[float, ...]) -> np.ndarray:
    """sum_k (-1)^k a_k cos(2 pi k n / N): Hann, Hamming and Blackman."""
    n, period = _window_positions(ctx, size)
    phase = 2.0 * np.pi * n / period if period else np.zeros_like(n)
    result = np.zeros_like(n)
    for k, a in enumerate(coefficients):
        result += (-1) ** k * a * np.cos(k * phase)
    return result.astype(_window_dtype(ctx))


@op("HannWindow", mapping=ONE_TO_MANY, since=17, static=(0,))
def hann_window(ctx: Ctx, size):
    return _cosine_window(ctx, size, (0.5, 0.5))


@op("HammingWindow", mapping=ONE_TO_MANY, since=17, static=(0,))
def hamming_window(ctx: Ctx, size):
    alpha = 25.0 / 46.0
    return _cosine_window(ctx, size, (alpha, 1.0 - alpha))


@op("BlackmanWindow", mapping=ONE_TO_MANY, since=17, static=(0,))
def blackman_window(ctx: Ctx, size):
    return _cosine_window(ctx, size, (0.42, 0.5, 0.08))


# --------------------------------------------------------- MelWeightMatrix ---


def _hz_to_mel(hz: float) -> float:
    return 2595.0 * np.log10(1.0 + hz / 700.0)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def mel_weight_matrix_array(bins: int, dft_length: int, rate: int, low: float, high: float) -> np.ndarray:
    """[dft_length // 2 + 1, bins] triangular filters on the mel scale (float64)."""
    points = np.arange(bins + 2, dtype=np.float64)
    low_mel, high_mel = _hz_to_mel(low), _hz_to_mel(high)
    mels = low_mel + points * (high_mel - low_mel) / (bins + 2)
    edges = np.floor((dft_length + 1) * _mel_to_hz(mels) / rate).astype(np.int64)
    matrix = np.zeros((dft_length // 2 + 1, bins))
    for i in range(bins):
        left, center, right = edges[i], edges[i + 1], edges[i + 2]
        if center == left:
            matrix[center, i] = 1.0
        else:
            j = np.arange(left, center + 1)
            matrix[j, i] = (j - left) / (center - left)
        if right > center:
            j = np.arange(center, right)
            matrix[j, i] = (right - j) / (right - center)
    return matrix


@op("MelWeightMatrix", mapping=ONE_TO_MANY, since=17, static=(0, 1, 2, 3, 4))
def mel_weight_matrix(ctx: Ctx, num_mel_bins, dft_length, sample_rate, lower_edge_hertz, upper_edge_hertz):
    matrix = mel_weight_matrix_array(
        _scalar(num_mel_bins), _scalar(dft_length), _scalar(sample_rate),
        float(np.asarray(lower_edge_hertz).reshape(-1)[0]),
        float(np.asarray(upper_edge_hertz).reshape(-1)[0]),
    )
    return matrix.astype(_window_dtype(ctx))
