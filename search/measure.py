"""Turning (task, candidate) pairs into runner jobs, and whole models into programs.

Jobs travel to worker processes, so what they carry is plain data (the task's
standalone model with its weights, the chosen decisions, fixed inputs) and the
builder is a module-level function.
"""
from __future__ import annotations

import functools
from typing import Any, Mapping, Sequence

import jax
import numpy as np

from autofuse.executable import Executable
from autofuse.ir import Model
from autofuse.runners.base import Job
from autofuse.search.space import Choices, apply_choices, candidate_key, task_choices
from autofuse.search.task import Task, random_inputs


# Cold weights: each run reads a different copy of the weights, so that what the copies
# hold together (at least COLD_BYTES, at most MAX_WEIGHT_COPIES copies) cannot stay in
# cache between runs. In a model the weights are cold (ResNet-50 reads 100 MB of them
# per run, BERT-base 340 MB); a task timed alone with its weights hot picked Winograd
# for ResNet-50's 14x14 3x3 convolutions (1.09 vs 1.01 ms packed GEMM, hot), which
# loses cold (1.59 vs 1.10 ms) and in the model.
COLD_BYTES = 256 << 20
MAX_WEIGHT_COPIES = 32


def weight_copies(weight_bytes: int) -> int:
    """How many copies of weights this large make their runs cold."""
    if weight_bytes <= 0:
        return 1
    return int(min(MAX_WEIGHT_COPIES, max(1, -(-COLD_BYTES // weight_bytes))))


class CompiledProgram:
    """A compiled executable bound to fixed inputs: calling it runs once and returns the outputs.

    Runs rotate through `weight_copies` copies of the weights (cold-weight timing).
    """

    def __init__(self, executable: Executable, inputs: Mapping[str, np.ndarray], copies: int | None = None) -> None:
        self.executable = executable.compile()
        self.compile_s = executable.compile_seconds
        self._inputs = dict(inputs)
        own = executable.device_weights()
        if copies is None:
            copies = weight_copies(sum(int(np.prod(v.shape)) * v.dtype.itemsize for v in own.values()))
        self._weights = [own] + [{k: jax.device_put(np.array(v)) for k, v in own.items()} for _ in range(copies - 1)]
        self._next = 0

    @property
    def copies(self) -> int:
        return len(self._weights)

    def __call__(self) -> list[np.ndarray]:
        weights = self._weights[self._next]
        self._next = (self._next + 1) % len(self._weights)
        return [np.asarray(v) for v in self.executable.run_device(self._inputs, weights)]


def build_program(model: Model, choices: Choices, inputs: Mapping[str, np.ndarray],
                  compiler_options: Mapping[str, Any] | None = None) -> CompiledProgram:
    """Applies the choices to the model and compiles it (runs inside a runner's worker)."""
    chosen, barriers = apply_choices(model, choices)
    return CompiledProgram(Executable(chosen, compiler_options=compiler_options, barriers=barriers), inputs)


def reference_outputs(task: Task, inputs: Mapping[str, np.ndarray]) -> tuple[np.ndarray, ...]:
    """The task's outputs as XLA computes it with no decision taken (the check for every candidate)."""
    return tuple(np.asarray(v) for v in Executable(task.model).compile()(inputs))


def task_jobs(task: Task, candidates: Sequence[Mapping[str, str]], *, seed: int = 0,
              reference: Sequence[np.ndarray] | None = None, timeout_s: float = 120.0) -> list[Job]:
    """One job per candidate of a task, all on the same seeded inputs and reference."""
    inputs = random_inputs(task.model, seed)
    if reference is None:
        reference = reference_outputs(task, inputs)
    jobs = []
    for candidate in candidates:
        build = functools.partial(build_program, task.model, task_choices(task, candidate), inputs)
        jobs.append(Job(f"{task.key}/{candidate_key(candidate)}", build, tuple(reference),
                        rtol=2e-3, atol=2e-4, timeout_s=timeout_s))
    return jobs
