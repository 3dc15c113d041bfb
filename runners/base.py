"""The runner interface: jobs in, futures of result records out.

A `Job` names a candidate and says how to build it (a picklable function that
compiles and returns a `Program`); a runner builds, checks and times it
somewhere (a subprocess, a Ray worker) and resolves a future with a
`RunResult`. Failures are records, never exceptions crossing a worker
boundary: a build that raises is "compile", a run that raises is "runtime",
outputs off the reference are "mismatch", a dead worker is "crash", a job past
its time limit is "timeout". `run_job` is the in-process protocol every runner
applies on its worker.
"""
from __future__ import annotations

import concurrent.futures
import os
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import numpy as np

from autofuse.runners.protocol import measure

ERROR_KINDS = ("compile", "runtime", "timeout", "crash", "mismatch")


class Program(Protocol):
    """A compiled candidate bound to fixed inputs: one blocking call, its outputs.

    A program may carry `compile_s` (seconds its compilation took); otherwise
    the runner times the whole build.
    """

    def __call__(self) -> Sequence[np.ndarray]: ...


@dataclass(frozen=True)
class Job:
    """One candidate to build, check against `reference`, and time."""

    key: str
    build: Callable[[], Program]
    reference: tuple[np.ndarray, ...] | None = None
    rtol: float = 1e-3
    atol: float = 1e-4
    timeout_s: float = 120.0


@dataclass(frozen=True)
class RunResult:
    """What a runner learned about a job: its timing, or why there is none."""

    key: str
    median_s: float | None
    iqr_s: float | None
    repeats: int
    compile_s: float | None
    max_rel_diff: float | None
    error_kind: str | None
    error: str | None

    @property
    def ok(self) -> bool:
        return self.error_kind is None

    @classmethod
    def failure(cls, key: str, kind: str, error: str, *, compile_s: float | None = None,
                max_rel_diff: float | None = None) -> "RunResult":
        """A record of a job that produced no timing."""
        if kind not in ERROR_KINDS:
            raise ValueError(f"unknown error kind {kind!r}; known: {ERROR_KINDS}")
        return cls(key, None, None, 0, compile_s, max_rel_diff, kind, error)


class Runner(Protocol):
    """Runs jobs somewhere; futures in job order, resolved as jobs finish."""

    def submit(self, jobs: Sequence[Job]) -> list[concurrent.futures.Future[RunResult]]: ...

    def close(self) -> None: ...

    def __enter__(self) -> "Runner": ...

    def __exit__(self, *exc: object) -> None: ...


def describe(exc: BaseException, limit: int = 400) -> str:
    """One line: the exception's type and message, and where it was raised."""
    message = " ".join(str(exc).split())
    if len(message) > limit:
        message = message[:limit] + "..."
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    frames = traceback.extract_tb(exc.__traceback__)
    if frames:
        last = frames[-1]
        text += f" (at {last.filename.rsplit('/', 1)[-1]}:{last.lineno} in {last.name})"
    return text


def max_rel_diff(outputs: Sequence[np.ndarray], reference: Sequence[np.ndarray], rtol: float, atol: float) -> float:
    """The largest |out - ref| / (|ref| + atol/rtol) over every element.

    Outputs pass `np.allclose(out, ref, rtol, atol)` exactly when this is at
    most `rtol`; NaNs must sit where the reference has NaNs.
    """
    floor = atol / rtol if rtol > 0 else max(atol, np.finfo(np.float64).tiny)
    worst = 0.0
    for out, ref in zip(outputs, reference):
        a, b = np.asarray(out), np.asarray(ref)
        if a.dtype.kind not in "biuf" or b.dtype.kind not in "biuf":
            worst = worst if np.array_equal(a, b) else np.inf
            continue
        a, b = a.astype(np.float64), b.astype(np.float64)
        same = (a == b) | (np.isnan(a) & np.isnan(b))
        with np.errstate(invalid="ignore", over="ignore"):
            diff = np.where(same, 0.0, np.abs(a - b) / (np.abs(b) + floor))
        if diff.size:
            worst = max(worst, float(np.nan_to_num(diff, nan=np.inf).max()))
    return worst


def check_outputs(job: Job, outputs: Sequence[np.ndarray]) -> tuple[float | None, str | None]:
    """(max relative difference, why the outputs fail the reference or None)."""
    if job.reference is None:
        return None, None
    if len(outputs) != len(job.reference):
        return None, f"{len(outputs)} outputs, the reference has {len(job.reference)}"
    for i, (out, ref) in enumerate(zip(outputs, job.reference)):
        if np.shape(out) != np.shape(ref):
            return None, f"output {i} has shape {list(np.shape(out))}, the reference {list(np.shape(ref))}"
    worst = max_rel_diff(outputs, job.reference, job.rtol, job.atol)
    if worst > job.rtol:
        return worst, f"max relative difference {worst:.3g} > rtol {job.rtol:g} (atol {job.atol:g})"
    return worst, None


def build_program(job: Job) -> tuple[Program, float] | RunResult:
    """Builds (compiles) the job's program: (program, compile seconds), or a "compile" record."""
    start = time.perf_counter()
    try:
        program = job.build()
    except Exception as exc:
        return RunResult.failure(job.key, "compile", describe(exc))
    elapsed = time.perf_counter() - start
    compile_s = getattr(program, "compile_s", None)
    return program, float(compile_s) if compile_s is not None else elapsed


def check_and_measure(
    job: Job,
    program: Program,
    compile_s: float | None,
    *,
    min_seconds: float,
    warmup: int = 3,
    min_repeats: int = 10,
) -> RunResult:
    """Runs once, checks against the reference, then times with the protocol."""
    try:
        outputs = tuple(np.asarray(v) for v in program())
    except Exception as exc:
        return RunResult.failure(job.key, "runtime", describe(exc), compile_s=compile_s)
    worst, mismatch = check_outputs(job, outputs)
    if mismatch is not None:
        return RunResult.failure(job.key, "mismatch", mismatch, compile_s=compile_s, max_rel_diff=worst)
    try:
        timing = measure(program, warmup=warmup, min_repeats=min_repeats, min_seconds=min_seconds)
    except Exception as exc:
        return RunResult.failure(job.key, "runtime", describe(exc), compile_s=compile_s, max_rel_diff=worst)
    return RunResult(job.key, timing.median_s, timing.iqr_s, len(timing.samples), compile_s, worst, None, None)


def run_job(job: Job, *, min_seconds: float, warmup: int = 3, min_repeats: int = 10) -> RunResult:
    """The whole protocol in this process: build, run once, check, measure.

    Every exception the job raises becomes a record; a crash or a hang takes
    the process with it, which is why runners call this in a worker.
    """
    built = build_program(job)
    if isinstance(built, RunResult):
        return built
    program, compile_s = built
    return check_and_measure(job, program, compile_s, min_seconds=min_seconds, warmup=warmup, min_repeats=min_repeats)


def code_paths() -> list[str]:
    """The driver's import paths outside the interpreter's own folders.

    A worker process started on this machine gets them (as PYTHONPATH), so a
    job's builder importable by the driver is importable by the worker.
    """
    prefixes = tuple(os.path.realpath(p) + os.sep for p in {sys.prefix, sys.base_prefix, sys.exec_prefix})
    paths: list[str] = []
    for path in sys.path:
        real = os.path.realpath(path) if path else ""
        if real and os.path.isdir(real) and not (real + os.sep).startswith(prefixes) and real not in paths:
            paths.append(real)
    return paths
