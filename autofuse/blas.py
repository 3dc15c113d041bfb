"""x @ W (+ bias, ReLU) through OpenBLAS's sgemm: the FFI kernel, bound to the OpenBLAS numpy loaded.

`blas_matmul` is traceable (use it under `jax.jit`). On CPU, for float32, it
calls the FFI kernel `kernels/blas_matmul.cc` when it is available
(`kernel_target()`); elsewhere, or when it is not (no compiler, no OpenBLAS
found), it is the plain XLA dot, so a model using it runs everywhere.

OpenBLAS is not linked at build time: numpy wheels bundle it (scipy-openblas,
in `numpy.libs/` or the `scipy_openblas64` package) under build-specific
symbol names such as `scipy_cblas_sgemm64_`, with 64-bit integer sizes when
`openblas_get_config()` says USE64BITINT. `find_openblas()` finds the library
numpy actually loaded and those names; the kernel is handed the sgemm address
once, so it shares numpy's OpenBLAS and its thread pool.
"""
from __future__ import annotations

import ctypes
import functools
import glob
from pathlib import Path
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from autofuse import native
from autofuse.errors import AutofuseError

TARGET = "autofuse_blas_matmul"
SOURCE = "blas_matmul.cc"
HANDLERS = {TARGET: "AutofuseBlasMatMul"}

# OpenBLAS symbol decorations: prefixes of vendored builds, suffixes of 64-bit integer builds.
_PREFIXES = ("scipy_", "")
_SUFFIXES = ("64_", "_64", "")

Impl = Literal["auto", "kernel", "xla"]


class OpenBlas(NamedTuple):
    """An OpenBLAS library and the names of what the kernel needs in it."""

    path: str
    sgemm: str
    ilp64: bool
    set_threads_local: str | None


def _candidates() -> list[str]:
    """OpenBLAS libraries: those already mapped into this process first, then numpy's bundled ones."""
    import numpy  # noqa: F401  (loads its OpenBLAS)

    mapped: list[str] = []
    try:
        for line in Path("/proc/self/maps").read_text().splitlines():
            path = line.split(maxsplit=5)[-1] if line.count(" ") >= 5 else ""
            if "openblas" in Path(path).name.lower() and path not in mapped:
                mapped.append(path)
    except OSError:
        pass
    site = Path(np.__file__).resolve().parents[1]
    bundled = sorted(glob.glob(str(site / "numpy.libs" / "*openblas*")))
    bundled += sorted(glob.glob(str(site / "scipy_openblas*" / "lib" / "*openblas*.so*")))
    return mapped + [p for p in bundled if p not in mapped]


def _symbol(library: ctypes.CDLL, *stems: str) -> tuple[str, str] | None:
    """(name, suffix) of the first decorated form of a stem the library exports."""
    for stem in stems:
        for prefix in _PREFIXES:
            for suffix in _SUFFIXES:
                name = f"{prefix}{stem}{suffix}"
                if hasattr(library, name):
                    return name, suffix
    return None


def _describe(path: str) -> OpenBlas | None:
    try:
        library = ctypes.CDLL(path)
    except OSError:
        return None
    found = _symbol(library, "cblas_sgemm")
    if found is None:
        return None
    sgemm, suffix = found
    config = _symbol(library, "openblas_get_config")
    if config is not None:
        get_config = getattr(library, config[0])
        get_config.restype = ctypes.c_char_p
        ilp64 = b"USE64BITINT" in (get_config() or b"")
    else:
        ilp64 = suffix != ""
    local = _symbol(library, "openblas_set_num_threads_local")
    return OpenBlas(path, sgemm, ilp64, local[0] if local else None)


@functools.lru_cache(maxsize=None)
def find_openblas() -> OpenBlas:
    """The OpenBLAS numpy uses (or bundles); NativeUnavailable when there is none."""
    paths = _candidates()
    for path in paths:
        found = _describe(path)
        if found is not None:
            return found
    raise native.NativeUnavailable(
        f"no OpenBLAS with cblas_sgemm found (looked at {paths or 'numpy.libs and scipy_openblas*'})")


def _bind() -> str:
    blas = find_openblas()
    library = native.load(SOURCE)
    openblas = ctypes.CDLL(blas.path)
    address = ctypes.cast(getattr(openblas, blas.sgemm), ctypes.c_void_p)
    local = ctypes.cast(getattr(openblas, blas.set_threads_local), ctypes.c_void_p) if blas.set_threads_local else None
    library.AutofuseBlasBind.argtypes = (ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p)
    if library.AutofuseBlasBind(address, int(blas.ilp64), local) != 0:
        raise native.NativeUnavailable(f"{blas.path}: {blas.sgemm} has no address")
    native.register(library, HANDLERS)
    return TARGET


@functools.lru_cache(maxsize=None)
def _binding() -> tuple[str | None, str | None]:
    """(target, None) once the kernel is built, bound and registered, else (None, reason); once per process."""
    try:
        return _bind(), None
    except native.NativeUnavailable as error:
        return None, str(error)


def kernel_target() -> str | None:
    """The registered FFI target, building and binding the kernel on first use; None when unavailable."""
    return _binding()[0]


def unavailable_reason() -> str | None:
    """Why `kernel_target()` is None (None when the kernel is available)."""
    return _binding()[1]


def xla_form(x2: jax.Array, w: jax.Array, bias: jax.Array | None, relu: bool) -> jax.Array:
    """The same product as XLA ops: the fallback, and the reference in tests."""
    y = jnp.matmul(x2, w.astype(x2.dtype))
    if bias is not None:
        y = y + bias.astype(y.dtype)
    return jnp.maximum(y, 0) if relu else y


def _kernel_form(target: str, relu: bool, threads: int, split: bool):
    def call(x2: jax.Array, w: jax.Array, *bias: jax.Array) -> jax.Array:
        out = jax.ShapeDtypeStruct((x2.shape[0], w.shape[1]), jnp.float32)
        return jax.ffi.ffi_call(target, out)(x2, w, *bias, relu=bool(relu), threads=np.int64(threads),
                                             split=bool(split))

    return call


def blas_matmul(x: jax.Array, w: jax.Array, bias: jax.Array | None = None, *, relu: bool = False,
                threads: int = 0, split: bool = False, impl: Impl = "auto") -> jax.Array:
    """x (..., K) @ w (K, N) [+ bias (N,)] [then ReLU].

    `threads`: OpenBLAS threads for the call (0: its default). `split`: cut the
    product into one part per XLA intra-op thread instead, each a one-thread sgemm.
    """
    if w.ndim != 2 or x.shape[-1] != w.shape[0]:
        raise AutofuseError(f"blas_matmul: x {tuple(x.shape)} and w {tuple(w.shape)} do not multiply")
    lead, n = x.shape[:-1], w.shape[1]
    x2 = x.reshape((-1, x.shape[-1]))
    bias = None if bias is None else bias.reshape((n,))
    float32 = all(v.dtype == jnp.float32 for v in (x, w) + ((bias,) if bias is not None else ()))
    target = kernel_target() if impl != "xla" and float32 else None
    if impl == "kernel" and target is None:
        raise AutofuseError(unavailable_reason() or "the BLAS kernel needs float32 operands")
    operands = (x2, w) + ((bias,) if bias is not None else ())
    default = lambda a, b, *c: xla_form(a, b, c[0] if c else None, relu)  # noqa: E731
    if target is None:
        y = default(*operands)
    else:
        y = jax.lax.platform_dependent(*operands, cpu=_kernel_form(target, relu, threads, split), default=default)
    return y.reshape(lead + (n,))
