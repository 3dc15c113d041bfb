"""Side-by-side benchmarks: autofuse and onnxruntime in one process, interleaved."""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from typing import Callable, Mapping, Sequence

import numpy as np

from autofuse.api import compile_model, example_inputs, import_onnx, resolve
from autofuse.errors import AutofuseError
from autofuse.runners.protocol import Timing, compare as compare_interleaved


@dataclass(frozen=True)
class BenchRow:
    """One model's result: medians, spreads, the ratio, and output agreement."""

    model: str
    compile_s: float
    autofuse_ms: float
    autofuse_spread_pct: float
    ort_ms: float | None
    ort_spread_pct: float | None
    max_rel_diff: float | None
    threads: int

    @property
    def ratio(self) -> float | None:
        """autofuse time / onnxruntime time: below 1.0 means autofuse is faster."""
        return self.autofuse_ms / self.ort_ms if self.ort_ms else None

    def as_dict(self) -> dict:
        return {**asdict(self), "ratio": self.ratio}


def relative_error(expected: Sequence[np.ndarray], actual: Sequence[np.ndarray]) -> float:
    """max |actual - expected| / max |expected| over all float outputs."""
    worst = 0.0
    for e, a in zip(expected, actual):
        e = np.asarray(e, np.float64)
        a = np.asarray(a, np.float64)
        scale = float(np.max(np.abs(e))) if e.size else 0.0
        worst = max(worst, float(np.max(np.abs(a - e))) / (scale or 1.0) if e.size else 0.0)
    return worst


def bench_model(
    name: str,
    *,
    shapes: Mapping[str, Sequence[int]] | None = None,
    compare: str = "ort",
    seconds: float = 5.0,
    seed: int = 0,
    progress: Callable[[str], None] = lambda _: None,
) -> BenchRow:
    """Compiles `name` with XLA's default fusion and times it beside onnxruntime."""
    threads = os.cpu_count() or 1
    progress(f"{name}: importing")
    model = import_onnx(name, shapes=shapes)
    progress(f"{name}: compiling with XLA")
    executable = compile_model(model)
    inputs = example_inputs(model, seed=seed)
    ours = executable(inputs)
    contenders = {"autofuse": lambda: [v.block_until_ready() for v in executable.run_device(inputs)]}
    max_diff = None
    if compare == "ort":
        from autofuse.runners.onnxruntime import baseline_session, run_session

        session = baseline_session(resolve(name), threads=threads)
        theirs = run_session(session, inputs)
        max_diff = relative_error(theirs, ours)
        contenders["onnxruntime"] = lambda: run_session(session, inputs)
    elif compare != "none":
        raise AutofuseError(f"--compare {compare!r}: expected 'ort' or 'none'")
    progress(f"{name}: timing {', '.join(contenders)} side by side ({seconds:.0f} s each)")
    start = time.perf_counter()
    timings: dict[str, Timing] = compare_contenders(contenders, seconds)
    progress(f"{name}: timed in {time.perf_counter() - start:.1f} s")
    ort = timings.get("onnxruntime")
    return BenchRow(
        model=name,
        compile_s=executable.compile_seconds or 0.0,
        autofuse_ms=timings["autofuse"].median_ms,
        autofuse_spread_pct=timings["autofuse"].spread_pct,
        ort_ms=ort.median_ms if ort else None,
        ort_spread_pct=ort.spread_pct if ort else None,
        max_rel_diff=max_diff,
        threads=threads,
    )


def compare_contenders(contenders: Mapping[str, Callable[[], object]], seconds: float) -> dict[str, Timing]:
    """Interleaved timing with a total budget of `seconds` per contender."""
    return compare_interleaved(contenders, rounds=5, warmup=3, min_repeats=3, min_seconds=seconds)
