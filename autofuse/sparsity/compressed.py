"""The compressed format: kept values plus their offsets inside a window, tiled for SIMD.

A balanced-sparse weight (K inputs x N outputs, every output row keeping the
same count in every bank) is stored as two equally shaped arrays

    values  float32 (NB, KW, S, 16)   NB = ceil(N / 16) tiles of 16 output columns
    offsets uint8   (NB, KW, S, 16)   KW = K / window windows of the reduction axis

where S = keep * window / bank weights are kept per window and column, in
increasing input order. values[t, w, j, l] is the j-th kept weight of output
column 16 t + l in window w, and offsets[...] its position inside that window.
A window holds whole banks: 16 inputs when the bank divides 16 (so that x's
window is one AVX-512 register and the gather is a register permute), else one
bank. Columns past N are zero padding. Bytes per kept weight: 4 + 1, against
4 / (1 - sparsity) for the dense weight.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from autofuse.sparsity.patterns import Pattern, PatternError, bank_mask, is_balanced

LANES = 16


class Compressed(NamedTuple):
    """A compressed weight: tiles of values and in-window offsets, and its dense size."""

    values: np.ndarray
    offsets: np.ndarray
    inputs: int  # K
    outputs: int  # N
    window: int

    @property
    def kept_per_window(self) -> int:
        return int(self.values.shape[2])

    @property
    def nbytes(self) -> int:
        return int(self.values.nbytes + self.offsets.nbytes)


def window_for(pattern: Pattern) -> int:
    """The window the kernel reads at once: 16 when banks tile it, else one bank."""
    return LANES if LANES % pattern.bank == 0 else pattern.bank


def compress(rows: np.ndarray, mask: np.ndarray, pattern: Pattern) -> Compressed:
    """Compresses (outputs, K) weight rows whose keep-mask is balanced for `pattern`."""
    if not is_balanced(mask, pattern):
        raise PatternError(f"the mask is not balanced for {pattern}: every bank must keep exactly {pattern.keep}")
    n, k = rows.shape
    window = window_for(pattern)
    if k % window:
        raise PatternError(f"reduction length {k} is not a multiple of the window {window}")
    windows = k // window
    kept = pattern.keep * window // pattern.bank
    positions = np.nonzero(mask)[1].reshape(n, windows, kept)  # row-major: increasing input order
    values = np.take_along_axis(np.asarray(rows, np.float32), positions.reshape(n, -1), axis=1)
    values = values.reshape(n, windows, kept)
    offsets = (positions % window).astype(np.uint8)
    tiles = -(-n // LANES)
    pad = ((0, tiles * LANES - n), (0, 0), (0, 0))
    values = np.pad(values, pad).reshape(tiles, LANES, windows, kept).transpose(0, 2, 3, 1)
    offsets = np.pad(offsets, pad).reshape(tiles, LANES, windows, kept).transpose(0, 2, 3, 1)
    return Compressed(np.ascontiguousarray(values), np.ascontiguousarray(offsets), k, n, window)


def decompress(c: Compressed) -> np.ndarray:
    """The dense (outputs, K) rows, zeros where nothing is kept."""
    tiles, windows, kept, _ = c.values.shape
    values = c.values.transpose(0, 3, 1, 2).reshape(tiles * LANES, windows, kept)[: c.outputs]
    offsets = c.offsets.transpose(0, 3, 1, 2).reshape(tiles * LANES, windows, kept)[: c.outputs].astype(np.int64)
    positions = offsets + (np.arange(windows) * c.window)[None, :, None]
    rows = np.zeros((c.outputs, c.inputs), np.float32)
    np.put_along_axis(rows, positions.reshape(c.outputs, -1), values.reshape(c.outputs, -1), axis=1)
    return rows


def compress_magnitude(rows: np.ndarray, pattern: Pattern) -> Compressed:
    """Prunes rows by magnitude and compresses them in one step (benchmarks, tests)."""
    return compress(rows, bank_mask(np.abs(rows), pattern), pattern)
