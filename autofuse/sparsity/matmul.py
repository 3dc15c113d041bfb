"""x @ W for a compressed balanced-sparse W: the native kernel, or a pure-XLA form.

`sparse_matmul` is traceable (use it under `jax.jit`). On CPU it calls the
native FFI kernel when it is available (`native.kernel_target()`); on CUDA GPUs
the Pallas kernel of `autofuse.sparsity.pallas` (unmeasured: no GPU yet); elsewhere,
or without a compiler, it uses XLA ops only: gather x at the kept positions and
contract. That form is correct everywhere but slower than the dense matmul on
CPU (0.3-0.4x at batch 1, far worse at batch 8 and 32, where the gathered copy
of x grows with the rows; rebuilding the dense weight by select or scatter was
no better), which is why the kernel exists.
"""
from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from autofuse.errors import AutofuseError
from autofuse.sparsity import native
from autofuse.sparsity.compressed import LANES
from autofuse.sparsity.pallas import pallas_sparse_matmul

Impl = Literal["auto", "kernel", "xla", "pallas"]


def gather_form(x2: jax.Array, values: jax.Array, offsets: jax.Array, outputs: int, window: int) -> jax.Array:
    """(M, K) @ sparse -> (M, N) with XLA ops only: gather the kept inputs, then contract."""
    tiles, windows, _, _ = values.shape
    positions = offsets.astype(jnp.int32) + (jnp.arange(windows, dtype=jnp.int32) * window)[None, :, None, None]
    picked = jnp.take(x2, positions, axis=1)  # (M, NB, KW, S, 16)
    y = jnp.einsum("mtwsl,twsl->mtl", picked, values.astype(x2.dtype))
    return y.reshape(x2.shape[0], tiles * LANES)[:, :outputs]


def _kernel_form(target: str):
    def call(x2: jax.Array, values: jax.Array, offsets: jax.Array, outputs: int, window: int) -> jax.Array:
        out = jax.ShapeDtypeStruct((x2.shape[0], outputs), jnp.float32)
        return jax.ffi.ffi_call(target, out)(x2, values, offsets, window=np.int64(window))

    return call


def sparse_matmul(x: jax.Array, values: jax.Array, offsets: jax.Array, *, outputs: int, window: int,
                  impl: Impl = "auto") -> jax.Array:
    """x (..., K) @ W (K, outputs), W given by its compressed `values` and `offsets`."""
    lead = x.shape[:-1]
    x2 = x.reshape((-1, x.shape[-1]))
    if impl == "pallas":  # the GPU kernel, in Pallas' interpret mode where there is no GPU (tests)
        y = pallas_sparse_matmul(x2, values, offsets, outputs=outputs, window=window,
                                 interpret=jax.default_backend() == "cpu")
        return y.reshape(lead + (outputs,))
    target = native.kernel_target() if impl != "xla" and x.dtype == jnp.float32 else None
    if impl == "kernel" and target is None:
        raise AutofuseError(native.unavailable_reason() or "the native sparse kernel needs float32 inputs")
    if target is None:
        y = gather_form(x2, values, offsets, outputs, window)
    else:
        kernel = _kernel_form(target)
        y = jax.lax.platform_dependent(
            x2, values, offsets,
            cpu=lambda a, v, o: kernel(a, v, o, outputs, window),
            cuda=lambda a, v, o: pallas_sparse_matmul(a, v, o, outputs=outputs, window=window),
            default=lambda a, v, o: gather_form(a, v, o, outputs, window),
        )
    return y.reshape(lead + (outputs,))
