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
once, so it shares numpy's OpenBLAS.

Binding the kernel sets that OpenBLAS to one thread, for the whole process
(numpy's products included): OpenBLAS's own thread pool beside XLA's
oversubscribes the cores. On the shared 2-core development machine, two
OpenBLAS threads inside an XLA executable ran the ResNet-50 and BERT layer
products 10-90x slower than one, and ResNet-50 with them 8x slower than
without BLAS. The kernel gets its parallelism by splitting a product over
XLA's intra-op threads instead (parts handed out dynamically, so a thread
the OS takes away delays one small part, not half the product).
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
    set_threads: str | None


def _candidates() -> list[str]:
    """OpenBLAS libraries: those mapped into this process (numpy's, loaded with it) first, then bundled ones."""
    mapped: list[str] = []
    try:
        for line in Path("/proc/self/maps").read_text().splitlines():
            fields = line.split(maxsplit=5)
            path = fields[5] if len(fields) == 6 else ""
            if "openblas" in Path(path).name.lower() and path not in mapped:
                mapped.append(path)
    except OSError:
        pass
    site = Path(np.__file__).resolve().parents[1]
    bundled = sorted(glob.glob(str(site / "numpy.libs" / "*openblas*")))
    bundled += sorted(glob.glob(str(site / "scipy_openblas*" / "lib" / "*openblas*.so*")))
    return mapped + [p for p in bundled if p not in mapped]


def _symbol(library: ctypes.CDLL, stem: str) -> tuple[str, str] | None:
    """(name, suffix) of the first decorated form of `stem` the library exports."""
    for prefix in _PREFIXES:
        for suffix in _SUFFIXES:
            if hasattr(library, name := f"{prefix}{stem}{suffix}"):
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
    threads = _symbol(library, "openblas_set_num_threads")
    return OpenBlas(path, sgemm, ilp64, threads[0] if threads else None)


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
    if blas.set_threads:
        getattr(openblas, blas.set_threads)(1)
    library.AutofuseBlasBind.argtypes = (ctypes.c_void_p, ctypes.c_int, ctypes.c_int)
    if library.AutofuseBlasBind(address, int(blas.ilp64), int(blas.set_threads is not None)) != 0:
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


def _kernel_form(target: str, relu: bool, split: bool):
    def call(x2: jax.Array, w: jax.Array, *bias: jax.Array) -> jax.Array:
        out = jax.ShapeDtypeStruct((x2.shape[0], w.shape[1]), jnp.float32)
        return jax.ffi.ffi_call(target, out)(x2, w, *bias, relu=bool(relu), split=bool(split))

    return call


def blas_matmul(x: jax.Array, w: jax.Array, bias: jax.Array | None = None, *, relu: bool = False,
                split: bool = True, impl: Impl = "auto") -> jax.Array:
    """x (..., K) @ w (K, N) [+ bias (N,)] [then ReLU]; `split` runs parts of it on XLA's intra-op threads."""
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
        y = jax.lax.platform_dependent(*operands, cpu=_kernel_form(target, relu, split), default=default)
    return y.reshape(lead + (n,))
