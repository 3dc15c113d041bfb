"""The native sparse kernel: compiled with the system C++ compiler on first use, cached.

`kernels/sparse_matmul.cc` is an XLA FFI handler. It is built once per machine
(`-O3 -march=native`) into `$AUTOFUSE_CACHE/kernels` (default
`~/.cache/autofuse/kernels`), under a name that hashes the source, the
compiler, the flags, jax's version and the CPU, so a change to any of them
builds a new library. The build writes a temporary file and renames it, so
concurrent processes never load a half-written library. When no compiler is
found or the build fails, `kernel_target()` returns None with the reason in
`unavailable_reason()`, and callers use the pure-XLA form instead.
`AUTOFUSE_SPARSE_KERNEL=xla` forces that fallback; `CXX` picks the compiler.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import jax

TARGET = "autofuse_sparse_matmul"
SYMBOL = "AutofuseSparseMatmul"
SOURCE = Path(__file__).resolve().parent / "kernels" / "sparse_matmul.cc"
FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-w")
BUILD_TIMEOUT_S = 300

_failure: list[str] = []


def cache_dir() -> Path:
    """Where compiled kernels are kept."""
    root = os.environ.get("AUTOFUSE_CACHE") or Path.home() / ".cache" / "autofuse"
    return Path(root) / "kernels"


def compiler() -> str | None:
    """The C++ compiler: $CXX, else the first of g++, c++, clang++ on PATH."""
    if os.environ.get("CXX"):
        return shutil.which(os.environ["CXX"])
    return next((found for name in ("g++", "c++", "clang++") if (found := shutil.which(name))), None)


def _cpu_fingerprint() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        wanted = [line for line in lines if line.startswith(("model name", "flags"))][:2]
        return "\n".join(wanted) or platform.processor()
    except OSError:
        return f"{platform.machine()} {platform.processor()}"


def library_path(cxx: str) -> Path:
    """The cached library for this source, compiler, flags, jax and CPU."""
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30).stdout
    key = "\0".join([SOURCE.read_text(), cxx, version, " ".join(FLAGS), jax.__version__, _cpu_fingerprint()])
    return cache_dir() / f"sparse_matmul-{hashlib.sha256(key.encode()).hexdigest()[:16]}.so"


def build(cxx: str, target: Path) -> Path:
    """Compiles the kernel into `target` (atomically); raises RuntimeError with the compiler's message."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(handle)
    command = [cxx, *FLAGS, "-isystem", jax.ffi.include_dir(), str(SOURCE), "-o", temporary]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed: {done.stderr.strip()[-2000:]}")
        os.replace(temporary, target)
    finally:
        Path(temporary).unlink(missing_ok=True)
    return target


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
        library = ctypes.cdll.LoadLibrary(str(path))
        jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(getattr(library, SYMBOL)), platform="cpu")
    except (OSError, RuntimeError, subprocess.SubprocessError, AttributeError) as error:
        _failure.append(f"native sparse kernel unavailable: {error}")
        return None
    return TARGET


def unavailable_reason() -> str | None:
    """Why `kernel_target()` returned None (None if it did not)."""
    return _failure[-1] if _failure else None
