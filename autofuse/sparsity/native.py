"""The native sparse kernel: compiled with the system C++ compiler on first use, cached.

`kernels/sparse_matmul.cc` is an XLA FFI handler. It is built once per machine
(`-O3 -march=native`) into `$AUTOFUSE_CACHE/kernels` (default
`~/.cache/autofuse/kernels`), under a name that hashes the source, the
compiler, the flags, jax's version and the CPU, so a change to any of them
builds a new library. The build writes a temporary file and renames it, so
concurrent processes never load a half-written library. When no compiler is
found or the build fails, `kernel_target()` returns None with the reason in
`unavailable_reason()`, and callers use the pure-XLA form instead.
`AUTOFUSE_SPARSE_KERNEL=xla` forces that fallback; `CXX` picks the compiler. The build
itself is `autofuse.native`'s, shared with the BLAS kernel.
"""
from __future__ import annotations

import ctypes
import functools
import os
import subprocess
from pathlib import Path

from autofuse import native as shared
from autofuse.native import NativeUnavailable, compiler

TARGET = "autofuse_sparse_matmul"
SYMBOL = "AutofuseSparseMatmul"
SOURCE = Path(__file__).resolve().parent / "kernels" / "sparse_matmul.cc"

_failure: list[str] = []


def library_path(cxx: str) -> Path:
    """The cached library for this source, compiler, flags, jax and CPU."""
    return shared.library_path(SOURCE, cxx)


def build(cxx: str, target: Path) -> Path:
    """Compiles the kernel into `target` (atomically); raises NativeUnavailable with the compiler's message."""
    return shared.build(SOURCE, cxx, target)


@functools.lru_cache(maxsize=None)
def kernel_target() -> str | None:
    """The registered FFI target name, building the kernel if needed; None when unavailable."""
    if os.environ.get("AUTOFUSE_SPARSE_KERNEL", "").lower() == "xla":
        _failure.append("AUTOFUSE_SPARSE_KERNEL=xla")
        return None
    cxx = compiler()
    if cxx is None:
        _failure.append("no C++ compiler found (set CXX or install g++)")
        return None
    try:
        path = library_path(cxx)
        if not path.is_file():
            build(cxx, path)
        shared.register(ctypes.cdll.LoadLibrary(str(path)), {TARGET: SYMBOL})
    except (OSError, NativeUnavailable, subprocess.SubprocessError) as error:
        _failure.append(f"native sparse kernel unavailable: {error}")
        return None
    return TARGET


def unavailable_reason() -> str | None:
    """Why `kernel_target()` returned None (None if it did not)."""
    return _failure[-1] if _failure else None
