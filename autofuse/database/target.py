"""The target fingerprint: everything about the machine and software that changes a timing.

A record measured on one target says little about another, so every record is
keyed by the target it was measured on and `best()` never looks across targets.
The CPU's usable core count is part of the device: XLA's CPU thread pool is
sized by it, and a plan tuned on 2 cores is not the best on 32.
"""
from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass

from autofuse.database.base import stable_hash
from autofuse.errors import AutofuseError

# CPU features that decide which kernels XLA, oneDNN and XNNPACK can use.
CPU_ISA_FLAGS = (
    "sse4_2", "avx", "avx2", "fma", "f16c",
    "avx512f", "avx512dq", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16",
    "avx_vnni", "amx_tile", "amx_bf16", "amx_int8", "amx_fp16",
    "asimd", "asimdhp", "asimddp", "bf16", "i8mm", "sve", "sve2",
)
# Environment variables, besides XLA_FLAGS, that change how fast compiled code runs.
PERF_ENV_PREFIXES = ("ONEDNN_", "DNNL_")
PERF_ENV_NAMES = ("OMP_NUM_THREADS", "AUTOFUSE_GEMM_THREADS", "AUTOFUSE_GEMM_KERNEL")
# How candidates are timed (`autofuse.search.measure`): records timed another way are
# another target, so hot-cache and cold-weight timings never mix.
MEASURE_PROTOCOL = "cold-weights"


@dataclass(frozen=True)
class Target:
    """Where records were measured: device, ISA, jax/jaxlib versions, and in `xla_flags` the
    performance environment (XLA_FLAGS, thread settings) and the measurement protocol."""

    kind: str
    device: str
    isa: tuple[str, ...]
    jax_version: str
    jaxlib_version: str
    xla_flags: str

    @property
    def key(self) -> str:
        """A stable short hash of every field."""
        fields = asdict(self)
        fields["isa"] = list(self.isa)
        return stable_hash(fields)


def current_target(kind: str = "cpu") -> Target:
    """The fingerprint of this machine for `kind` ("cpu" or "gpu")."""
    import jax
    import jaxlib

    if kind == "cpu":
        device, isa = _cpu_device()
    elif kind == "gpu":
        device, isa = _gpu_device()
    else:
        raise AutofuseError(f"--target {kind}: expected cpu or gpu")
    return Target(kind, device, isa, jax.__version__, jaxlib.__version__, _perf_env())


def _cpu_device() -> tuple[str, tuple[str, ...]]:
    model, flags = "", set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                name, _, value = line.partition(":")
                name = name.strip()
                if name in ("model name", "Model") and not model:
                    model = value.strip()
                elif name in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    model = model or platform.processor() or platform.machine() or "unknown CPU"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{model} ({cores} cores)", tuple(f for f in CPU_ISA_FLAGS if f in flags)


def _gpu_device() -> tuple[str, tuple[str, ...]]:
    import jax

    try:
        devices = jax.devices("gpu")
    except RuntimeError as error:
        raise AutofuseError(f"--target gpu: JAX sees no GPU ({str(error).splitlines()[0]})") from None
    device = devices[0]
    capability = getattr(device, "compute_capability", None)
    isa = (f"sm_{capability.replace('.', '')}",) if capability else ()
    return device.device_kind, isa


def _perf_env() -> str:
    parts = []
    if os.environ.get("XLA_FLAGS", "").strip():
        parts.append("XLA_FLAGS=" + " ".join(os.environ["XLA_FLAGS"].split()))
    for name in sorted(os.environ):
        if name in PERF_ENV_NAMES or name.startswith(PERF_ENV_PREFIXES):
            parts.append(f"{name}={os.environ[name]}")
    parts.append(f"measure={MEASURE_PROTOCOL}")
    return " ".join(parts)
