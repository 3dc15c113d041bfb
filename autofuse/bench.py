"""Side-by-side benchmarks: autofuse variants and onnxruntime in one process, interleaved."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np

from autofuse.api import compile_model, example_inputs, import_onnx, resolve
from autofuse.errors import AutofuseError
from autofuse.executable import Executable
from autofuse.runners.protocol import Timing, compare as compare_interleaved

XLA = "autofuse (XLA default)"
PLAN = "DNNFusion plan"
OP_BY_OP = "op by op"
TUNED = "autofuse tuned"
ORT = "onnxruntime"


@dataclass(frozen=True)
class BenchRow:
    """One model: median and spread per contender, ratios to onnxruntime, agreement."""

    model: str
    compile_s: float
    median_ms: dict[str, float]
    spread_pct: dict[str, float]
    max_rel_diff: dict[str, float] = field(default_factory=dict)
    kernels: dict[str, int] = field(default_factory=dict)
    threads: int = 1

    @property
    def ratio(self) -> float | None:
        """autofuse (XLA default) time / onnxruntime time: below 1.0 is faster."""
        return self.ratio_of(XLA)

    def ratio_of(self, name: str) -> float | None:
        ort = self.median_ms.get(ORT)
        return self.median_ms[name] / ort if ort and name in self.median_ms else None

    def as_dict(self) -> dict:
        return {
            "model": self.model, "compile_s": self.compile_s, "median_ms": self.median_ms,
            "spread_pct": self.spread_pct, "max_rel_diff": self.max_rel_diff, "kernels": self.kernels,
            "threads": self.threads, "ratio_to_ort": {k: self.ratio_of(k) for k in self.median_ms if k != ORT},
        }


def relative_error(expected: Sequence[np.ndarray], actual: Sequence[np.ndarray]) -> float:
    """max |actual - expected| / max |expected| over all outputs."""
    worst = 0.0
    for e, a in zip(expected, actual):
        e = np.asarray(e, np.float64)
        a = np.asarray(a, np.float64)
        if e.size:
            scale = float(np.max(np.abs(e))) or 1.0
            worst = max(worst, float(np.max(np.abs(a - e))) / scale)
    return worst


def blocking(executable: Executable, inputs: Mapping[str, np.ndarray]) -> Callable[[], object]:
    """One run of the executable that returns only when its outputs are ready (for timing)."""
    return lambda: [v.block_until_ready() for v in executable.run_device(inputs)]


def bench_model(
    name: str,
    *,
    shapes: Mapping[str, Sequence[int]] | None = None,
    compare: str = "ort",
    plans: bool = False,
    rewrites: Sequence[str] = (),
    seconds: float = 5.0,
    seed: int = 0,
    tuned_db: str | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> BenchRow:
    """Times `name` under XLA's default fusion (optionally also the DNNFusion plan,
    op by op, after rewrites, and as tuned by the records in `tuned_db`) beside
    onnxruntime, interleaved in one process."""
    if compare not in ("ort", "none"):
        raise AutofuseError(f"--compare {compare!r}: expected 'ort' or 'none'")
    threads = os.cpu_count() or 1
    progress(f"{name}: importing")
    model = import_onnx(name, shapes=shapes)
    inputs = example_inputs(model, seed=seed)
    progress(f"{name}: compiling with XLA")
    executables = {XLA: compile_model(model)}
    if plans:
        from autofuse.fusion.extended import extend
        from autofuse.fusion.lower import compile_plan, op_by_op_plan
        from autofuse.fusion.planner import plan_fusion

        progress(f"{name}: compiling the DNNFusion plan and op by op")
        executables[PLAN] = compile_plan(model, plan_fusion(extend(model.graph)))
        executables[OP_BY_OP] = compile_plan(model, op_by_op_plan(model))
    if rewrites:
        from autofuse.api import rewrite_model

        progress(f"{name}: rewriting ({', '.join(rewrites)}) and compiling")
        result = rewrite_model(model, rewrites)
        fired = ", ".join(f"{rule} {n}" for rule, n in sorted(result.fired.items()) if n)
        progress(f"{name}: rules fired: {fired or 'none'}")
        executables[f"rewritten ({'+'.join(rewrites)})"] = compile_model(result.model)
    if tuned_db:
        from autofuse.tuning import best_known

        progress(f"{name}: applying the best records of {tuned_db} and compiling")
        tuned = best_known(model, db=tuned_db)
        executables[TUNED] = Executable(tuned.model, barriers=tuned.barriers).compile()
    contenders = {label: blocking(exe, inputs) for label, exe in executables.items()}
    outputs = {label: exe(inputs) for label, exe in executables.items()}
    reference = outputs[XLA]
    diffs = {}
    if compare == "ort":
        from autofuse.runners.onnxruntime import baseline_session, run_session

        session = baseline_session(resolve(name), threads=threads)
        reference = run_session(session, inputs)
        contenders[ORT] = lambda: run_session(session, inputs)
    diffs = {label: relative_error(reference, out) for label, out in outputs.items()}
    progress(f"{name}: timing {', '.join(contenders)} side by side")
    timings: dict[str, Timing] = compare_interleaved(contenders, rounds=5, warmup=3, min_repeats=3,
                                                     min_seconds=seconds)
    kernels = {}
    if plans:
        from autofuse.fusion.lower import kernel_count

        kernels = {label: kernel_count(exe.optimized_hlo()) for label, exe in executables.items()}
    return BenchRow(
        model=name,
        compile_s=executables[XLA].compile_seconds or 0.0,
        median_ms={k: t.median_ms for k, t in timings.items()},
        spread_pct={k: t.spread_pct for k, t in timings.items()},
        max_rel_diff=diffs,
        kernels=kernels,
        threads=threads,
    )
