"""x @ W for a compressed balanced-sparse W as a Pallas kernel: the GPU form.

One program computes a block of rows of x times one tile of 16 output columns.
For each window of the reduction axis it reads the tile's kept values and their
offsets (the compressed weight: 5 bytes per kept weight instead of 4 per dense
weight, which is what a batch-1 product is bound by), rebuilds the window's
dense (window x 16) slice in registers with a one-hot of the offsets, and
multiplies it with x's window on the tensor cores. The dense weight never
exists in memory.

Tested on CPU in Pallas' interpret mode (`interpret=True`); no GPU was lent to
the sessions that wrote it, so its GPU lowering and speed are unmeasured.
`sparse_matmul` uses it only on GPU, behind `jax.lax.platform_dependent`.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from autofuse.sparsity.compressed import LANES

BLOCK_ROWS = 16


def _kernel(x_ref, values_ref, offsets_ref, y_ref, *, windows: int, window: int):
    rows = x_ref.shape[0]
    positions = jax.lax.broadcasted_iota(jnp.int32, (1, window, 1), 1)

    def step(w, acc):
        xw = x_ref[:, pl.ds(w * window, window)]                       # (rows, window)
        values = values_ref[0, w]                                       # (S, 16)
        offsets = offsets_ref[0, w].astype(jnp.int32)                   # (S, 16)
        hit = offsets[:, None, :] == positions                          # (S, window, 16)
        dense = jnp.sum(jnp.where(hit, values[:, None, :], 0.0), axis=0)  # (window, 16)
        return acc + jnp.dot(xw, dense, preferred_element_type=jnp.float32)

    acc = jax.lax.fori_loop(0, windows, step, jnp.zeros((rows, LANES), jnp.float32))
    y_ref[...] = acc.astype(y_ref.dtype)


@functools.partial(jax.jit, static_argnames=("outputs", "window", "interpret"))
def pallas_sparse_matmul(x2: jax.Array, values: jax.Array, offsets: jax.Array, *, outputs: int, window: int,
                         interpret: bool = False) -> jax.Array:
    """(M, K) @ the compressed (K, outputs) weight -> (M, outputs)."""
    tiles, windows, kept, _ = values.shape
    m, k = x2.shape
    rows = -(-m // BLOCK_ROWS) * BLOCK_ROWS
    x = jnp.pad(x2.astype(jnp.float32), ((0, rows - m), (0, 0)))
    y = pl.pallas_call(
        functools.partial(_kernel, windows=windows, window=window),
        out_shape=jax.ShapeDtypeStruct((rows, tiles * LANES), jnp.float32),
        grid=(rows // BLOCK_ROWS, tiles),
        in_specs=[
            pl.BlockSpec((BLOCK_ROWS, k), lambda i, t: (i, 0)),
            pl.BlockSpec((1, windows, kept, LANES), lambda i, t: (t, 0, 0, 0)),
            pl.BlockSpec((1, windows, kept, LANES), lambda i, t: (t, 0, 0, 0)),
        ],
        out_specs=pl.BlockSpec((BLOCK_ROWS, LANES), lambda i, t: (i, t)),
        interpret=interpret,
    )(x, values, offsets)
    return y[:m, :outputs]
