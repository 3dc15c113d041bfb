"""Module-level job builders for the runner tests (picklable, so workers can import them).

Each builder compiles for real with XLA (tiny functions, so it is fast) or
fails in one specific way.
"""
from __future__ import annotations

import ctypes
import functools
import json
import os
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from autofuse.runners.base import Job


class JaxProgram:
    """A compiled XLA executable bound to fixed inputs."""

    def __init__(self, fn, *inputs: np.ndarray) -> None:
        start = time.perf_counter()
        self._compiled = jax.jit(fn).lower(*inputs).compile()
        self.compile_s = time.perf_counter() - start
        self._inputs = [jax.device_put(x) for x in inputs]

    def __call__(self) -> Sequence[np.ndarray]:
        out = self._compiled(*self._inputs)
        return [np.asarray(v) for v in (out if isinstance(out, (list, tuple)) else [out])]


def tanh_inputs(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32) / np.sqrt(n)


def _tanh_matmul(x, w):
    return jnp.tanh(x @ w)


def build_tanh(n: int = 64, scale: float = 1.0) -> JaxProgram:
    """tanh(x @ (scale * w)); scale != 1 makes a wrong candidate."""
    x, w = tanh_inputs(n)
    return JaxProgram(_tanh_matmul, x, (w * scale).astype(np.float32))


def tanh_reference(n: int = 64) -> tuple[np.ndarray, ...]:
    x, w = tanh_inputs(n)
    return (np.tanh(x.astype(np.float64) @ w.astype(np.float64)).astype(np.float32),)


def tanh_job(key: str, n: int = 64, scale: float = 1.0, **kw) -> Job:
    return Job(key, functools.partial(build_tanh, n, scale), reference=tanh_reference(n), **kw)


def build_raises() -> JaxProgram:
    raise ValueError("no lowering for this candidate")


class _FailsAtRun:
    def __call__(self) -> Sequence[np.ndarray]:
        raise FloatingPointError("device fault at run time")


def build_fails_at_run() -> _FailsAtRun:
    return _FailsAtRun()


def build_exits() -> JaxProgram:
    os._exit(7)


def build_segfaults() -> JaxProgram:
    ctypes.string_at(0)  # reads address 0: SIGSEGV
    raise AssertionError("unreachable")


def build_sleeps(seconds: float) -> JaxProgram:
    time.sleep(seconds)
    return build_tanh(8)


class _OnnxProgram:
    def __init__(self, path: str) -> None:
        import autofuse

        self._executable = autofuse.compile_model(path)
        self._inputs = autofuse.example_inputs(self._executable.model)
        self.compile_s = self._executable.compile_seconds

    def __call__(self) -> Sequence[np.ndarray]:
        return self._executable(self._inputs)


def build_onnx(path: str) -> _OnnxProgram:
    return _OnnxProgram(path)


def onnx_reference(path: str) -> tuple[np.ndarray, ...]:
    """onnxruntime (graph optimisations off) on the same seeded inputs the program uses."""
    import autofuse
    from autofuse.runners.onnxruntime import reference_session, run_session

    inputs = autofuse.example_inputs(autofuse.import_onnx(path))
    return tuple(run_session(reference_session(path), inputs))


class _HangsAtRun(JaxProgram):
    def __call__(self) -> Sequence[np.ndarray]:
        time.sleep(3600)
        return super().__call__()


def build_hangs_at_run() -> _HangsAtRun:
    """Compiles fine, then hangs when run (a measurement that never ends)."""
    return _HangsAtRun(_tanh_matmul, *tanh_inputs(8))


# ---- for the cluster test: where and when each phase ran, seen from the worker ----

class _LoggedProgram(JaxProgram):
    def __init__(self, log_path: str, key: str, node: str, *args) -> None:
        super().__init__(*args)
        self._log, self._key, self._node = log_path, key, node

    def __call__(self) -> Sequence[np.ndarray]:
        start = time.time()
        out = super().__call__()
        time.sleep(0.002)  # long enough that overlapping runs would show
        _log(self._log, self._key, self._node, "run", start, time.time())
        return out


def _log(path: str, key: str, node: str, phase: str, start: float, end: float) -> None:
    line = json.dumps({"key": key, "node": node, "pid": os.getpid(), "phase": phase, "start": start, "end": end})
    with open(path, "a") as f:
        f.write(line + "\n")


def build_logged(log_path: str, key: str, n: int = 64) -> _LoggedProgram:
    """Like build_tanh, logging its build and every run with the Ray node it ran on."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    start = time.time()
    x, w = tanh_inputs(n)
    time.sleep(0.2)  # a compile long enough to collide with a measurement if the runner let it
    program = _LoggedProgram(log_path, key, node, _tanh_matmul, x, w)
    _log(log_path, key, node, "build", start, time.time())
    return program


def logged_job(log_path: str, key: str, n: int = 64) -> Job:
    return Job(key, functools.partial(build_logged, log_path, key, n), reference=tanh_reference(n))



def drive_cluster(address: str, log_path: str, n_jobs: int, out_path: str) -> None:
    """A driver process for the cluster test: runs logged jobs, writes results, stats and warnings as JSON."""
    import dataclasses
    import warnings

    from autofuse.runners.ray import RayRunner

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runner = RayRunner(address=address, min_seconds=0.05, warmup=1, min_repeats=5)
    with runner:
        nodes = len(runner._nodes)
        results = [f.result(timeout=300) for f in runner.submit([logged_job(log_path, f"job{i}") for i in range(n_jobs)])]
    with open(out_path, "w") as f:
        json.dump({"nodes": nodes, "results": [dataclasses.asdict(r) for r in results], "stats": runner.stats,
                   "warnings": [str(w.message) for w in caught]}, f)
