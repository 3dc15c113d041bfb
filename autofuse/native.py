"""Native XLA FFI kernels shipped as C++ sources: compiled on first use, cached, registered.

A kernel is a C++ file in the package (e.g. `autofuse/kernels/blas_matmul.cc`)
that defines XLA FFI handlers with `XLA_FFI_DEFINE_HANDLER_SYMBOL`. `load`
builds it once per machine with the system compiler (`-O3 -march=native`)
into `$AUTOFUSE_CACHE/kernels` (default `~/.cache/autofuse/kernels`), under a
name that hashes the source, the compiler and its version, the flags, jax's
version and the CPU, so a change to any of them builds a new library. The
build writes a temporary file and renames it into place, so concurrent
processes never load a half-written library. `register` loads a library and
registers its handlers as CPU FFI targets.

Failures (no compiler, a compile error, a missing symbol) raise
`NativeUnavailable` with the reason; callers catch it and use a pure-XLA
form. `CXX` picks the compiler. (`autofuse.sparsity.native` builds the
sparse kernel through these functions.)
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
from typing import Mapping, Sequence

import jax

from autofuse.errors import AutofuseError

KERNELS = Path(__file__).resolve().parent / "kernels"
FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-w")
BUILD_TIMEOUT_S = 300


class NativeUnavailable(AutofuseError):
    """A native kernel cannot be built or loaded here (the reason is the message)."""


def cache_dir() -> Path:
    """Where compiled kernels are kept."""
    root = os.environ.get("AUTOFUSE_CACHE") or Path.home() / ".cache" / "autofuse"
    return Path(root) / "kernels"


def compiler() -> str | None:
    """The C++ compiler: $CXX, else the first of g++, c++, clang++ on PATH."""
    if os.environ.get("CXX"):
        return shutil.which(os.environ["CXX"])
    return next((found for name in ("g++", "c++", "clang++") if (found := shutil.which(name))), None)


@functools.lru_cache(maxsize=None)
def _compiler_version(cxx: str) -> str:
    return subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30).stdout


def _cpu_fingerprint() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        wanted = [line for line in lines if line.startswith(("model name", "flags"))][:2]
        return "\n".join(wanted) or platform.processor()
    except OSError:
        return f"{platform.machine()} {platform.processor()}"


def library_path(source: Path, cxx: str, flags: Sequence[str] = FLAGS) -> Path:
    """The cached library for this source, compiler, flags, jax and CPU."""
    key = "\0".join([source.read_text(), cxx, _compiler_version(cxx), " ".join(flags), jax.__version__,
                     _cpu_fingerprint()])
    return cache_dir() / f"{source.stem}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.so"


def build(source: Path, cxx: str, target: Path, flags: Sequence[str] = FLAGS) -> Path:
    """Compiles `source` into `target` (atomically); NativeUnavailable carries the compiler's message."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(handle)
    command = [cxx, *flags, "-isystem", jax.ffi.include_dir(), str(source), "-o", temporary]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
        if done.returncode != 0:
            raise NativeUnavailable(f"{source.name}: {' '.join(command)} failed: {done.stderr.strip()[-2000:]}")
        os.replace(temporary, target)
    except (OSError, subprocess.SubprocessError) as error:
        raise NativeUnavailable(f"{source.name}: cannot build: {error}") from None
    finally:
        Path(temporary).unlink(missing_ok=True)
    return target


@functools.lru_cache(maxsize=None)
def _load(source: Path, flags: tuple[str, ...]) -> ctypes.CDLL:
    cxx = compiler()
    if cxx is None:
        raise NativeUnavailable(f"{source.name}: no C++ compiler found (set CXX or install g++)")
    try:
        path = library_path(source, cxx, flags)
        if not path.is_file():
            build(source, cxx, path, flags)
        return ctypes.cdll.LoadLibrary(str(path))
    except (OSError, subprocess.SubprocessError) as error:
        raise NativeUnavailable(f"{source.name}: cannot load: {error}") from None


def load(source: str | Path, flags: Sequence[str] = FLAGS) -> ctypes.CDLL:
    """The compiled library of `source` (a name in autofuse/kernels or a path), built if needed; once per process."""
    path = Path(source)
    path = path if path.is_absolute() else KERNELS / path
    if not path.is_file():
        raise NativeUnavailable(f"{path}: no such kernel source")
    return _load(path, tuple(flags))


def register(library: ctypes.CDLL, handlers: Mapping[str, str]) -> None:
    """Registers each handler symbol of `library` as the CPU FFI target named by its key."""
    for target, symbol in handlers.items():
        try:
            function = getattr(library, symbol)
        except AttributeError:
            raise NativeUnavailable(f"{library._name}: no handler symbol {symbol!r}") from None
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(function), platform="cpu")
