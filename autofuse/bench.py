"""Side-by-side benchmarks: autofuse variants and onnxruntime in one process, interleaved.

`bench_model` times XLA's default fusion (and optionally plans, rewrites, a
tuned model) beside onnxruntime; `bench_families` times every rewrite family
alone and all of them together, with the static work each removes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np

from autofuse.api import compile_model, example_inputs, import_onnx, resolve, rule_families
from autofuse.errors import AutofuseError
from autofuse.executable import Executable
from autofuse.ir import Model
from autofuse.rewrite.accounting import Cost, cost
from autofuse.rewrite.engine import RuleSet, rewrite
from autofuse.runners.protocol import Timing, compare as compare_interleaved

XLA = "autofuse (XLA default)"
PLAN = "DNNFusion plan"
OP_BY_OP = "op by op"
TUNED = "autofuse tuned"
ORT = "onnxruntime"
ALL = "all"
# Families that give the same MatMul, Gemm and ConvNHWC nodes different lowerings: a node
# goes to the first of them in the pipeline that matches it.
LOWERING_FAMILIES = ("algorithm", "blas", "packed")


@dataclass(frozen=True)
class RewriteWork:
    """What one rewrite variant fired, and the model's static work before and after it.

    `same_as` names an earlier contender whose graph came out identical; such a
    variant is not compiled or timed again.
    """

    fired: dict[str, int]
    before: Cost
    after: Cost
    same_as: str | None = None

    @property
    def fires(self) -> int:
        return sum(self.fired.values())

    @property
    def flops_removed(self) -> float:
        return self.before.flops - self.after.flops

    @property
    def bytes_removed(self) -> float:
        return self.before.bytes - self.after.bytes

    def as_dict(self) -> dict:
        return {"fired": self.fired, "fires": self.fires, "same_as": self.same_as,
                "flops_before": self.before.flops, "flops_after": self.after.flops,
                "bytes_before": self.before.bytes, "bytes_after": self.after.bytes,
                "nodes_before": self.before.nodes, "nodes_after": self.after.nodes}


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
    rewrites: dict[str, RewriteWork] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        """autofuse (XLA default) time / onnxruntime time: below 1.0 is faster."""
        return self.ratio_of(XLA)

    def ratio_of(self, name: str, base: str = ORT) -> float | None:
        """`name`'s median time / `base`'s (onnxruntime by default); None when either was not timed."""
        reference = self.median_ms.get(base)
        return self.median_ms[name] / reference if reference and name in self.median_ms else None

    def as_dict(self) -> dict:
        timed = [k for k in self.median_ms if k != ORT]
        return {
            "model": self.model, "compile_s": self.compile_s, "median_ms": self.median_ms,
            "spread_pct": self.spread_pct, "max_rel_diff": self.max_rel_diff, "kernels": self.kernels,
            "threads": self.threads, "ratio_to_ort": {k: self.ratio_of(k) for k in timed},
            "ratio_to_xla": {k: self.ratio_of(k, XLA) for k in timed} if self.rewrites else {},
            "rewrites": {k: w.as_dict() for k, w in self.rewrites.items()},
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
    timings, diffs = _side_by_side(name, executables, inputs, compare=compare, threads=threads,
                                   seconds=seconds, progress=progress)
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


def fewer_fires_together(row: BenchRow) -> dict[str, tuple[int, int]]:
    """Rules that fired less in `all` than in their family alone: 'family/rule' -> (alone, in all).

    The rules of an earlier family took those nodes first (or removed them).
    """
    together = row.rewrites.get(ALL)
    if together is None:
        return {}
    together_variants = {ALL, *(first(f) for f in LOWERING_FAMILIES)}
    fewer = {}
    for family, work in row.rewrites.items():
        if family in together_variants:
            continue
        for rule, alone in work.fired.items():
            if together.fired.get(rule, 0) < alone:
                fewer[f"{family}/{rule}"] = (alone, together.fired.get(rule, 0))
    return fewer


def _side_by_side(
    name: str,
    executables: Mapping[str, Executable],
    inputs: Mapping[str, np.ndarray],
    *,
    compare: str,
    threads: int,
    seconds: float,
    progress: Callable[[str], None],
    warmup: int = 3,
    min_repeats: int = 3,
) -> tuple[dict[str, Timing], dict[str, float]]:
    """Timings of every executable (and onnxruntime, unless `compare` is 'none'),
    interleaved, and each one's max relative difference from the reference
    (onnxruntime, else the XLA default)."""
    contenders = {label: blocking(exe, inputs) for label, exe in executables.items()}
    outputs = {label: exe(inputs) for label, exe in executables.items()}
    reference = outputs[XLA]
    if compare == "ort":
        from autofuse.runners.onnxruntime import baseline_session, run_session

        session = baseline_session(resolve(name), threads=threads)
        reference = run_session(session, inputs)
        contenders[ORT] = lambda: run_session(session, inputs)
    diffs = {label: relative_error(reference, out) for label, out in outputs.items()}
    progress(f"{name}: timing {', '.join(contenders)} side by side")
    timings = compare_interleaved(contenders, rounds=5, warmup=warmup, min_repeats=min_repeats, min_seconds=seconds)
    return timings, diffs


def first(family: str) -> str:
    """The name of the `all` variant in which `family` comes first among the lowering families."""
    return f"all, {family} first"


def family_pipelines(families: Mapping[str, RuleSet]) -> dict[str, list[RuleSet]]:
    """The rewrite variants `bench_families` times: each family alone, all of them in
    pipeline order (`all`), and all with each other lowering family moved first.

    The lowering families compete for the same nodes: in pipeline order
    algorithm's matmul_weight_nk turns every MatMul with a constant weight into
    MatMulTransB, which blas and packed do not match, and blas takes the
    convolutions packed would. No single order gives each its chance, so each
    gets one variant in which it comes first (`first(family)`); the tuner
    chooses between them node by node.
    """
    variants = {family: [rule_set] for family, rule_set in families.items()}
    if len(families) < 2:
        return variants
    names = list(families)
    variants[ALL] = list(families.values())
    lowering = [f for f in names if f in LOWERING_FAMILIES]
    for family in lowering[1:]:
        order = [f for f in names if f != family]
        order.insert(order.index(lowering[0]), family)
        variants[first(family)] = [families[f] for f in order]
    return variants


def _same_model(a: Model, b: Model) -> bool:
    """Identical graphs and weights (rewrites that leave a weight alone keep its array)."""
    return a.graph == b.graph and a.weights.keys() == b.weights.keys() and all(
        a.weights[k] is b.weights[k] or np.array_equal(a.weights[k], b.weights[k]) for k in a.weights)


def bench_families(
    name: str,
    *,
    shapes: Mapping[str, Sequence[int]] | None = None,
    compare: str = "ort",
    families: Sequence[str] = (),
    seconds: float = 1.0,
    seed: int = 0,
    progress: Callable[[str], None] = lambda _: None,
) -> BenchRow:
    """Times `name` under XLA's default, after each rewrite family alone (all of
    `api.rule_families()` unless `families` names some), after all of them
    together (`family_pipelines`), and onnxruntime, interleaved in one process.

    Each variant's fires and the static FLOPs and bytes it removes
    (`autofuse.rewrite.accounting.cost`) are in `BenchRow.rewrites`; a variant
    whose model comes out identical to an earlier one is timed once, under the
    earlier name. Warm-up and repeats are kept small so that a dozen models
    finish in minutes: `seconds` is each contender's timing budget.
    """
    if compare not in ("ort", "none"):
        raise AutofuseError(f"--compare {compare!r}: expected 'ort' or 'none'")
    known = rule_families()
    unknown = [f for f in families if f not in known]
    if unknown:
        raise AutofuseError(f"--rewrite: unknown families {unknown}; known: {', '.join(known)}")
    chosen = {f: rule_set for f, rule_set in known.items() if not families or f in families}
    threads = os.cpu_count() or 1
    progress(f"{name}: importing")
    model = import_onnx(name, shapes=shapes)
    inputs = example_inputs(model, seed=seed)
    start = cost(model)
    progress(f"{name}: compiling with XLA")
    executables = {XLA: compile_model(model)}
    models = {XLA: model}
    work: dict[str, RewriteWork] = {}
    for label, pipeline in family_pipelines(chosen).items():
        progress(f"{name}: rewriting ({label})")
        result = rewrite(model, pipeline)
        same_as = next((other for other, m in models.items() if _same_model(m, result.model)), None)
        work[label] = RewriteWork({rule: n for rule, n in sorted(result.fired.items()) if n}, start,
                                  cost(result.model), same_as)
        if same_as is None:
            progress(f"{name}: compiling ({label}, {work[label].fires} fires)")
            models[label] = result.model
            executables[label] = compile_model(result.model)
    timings, diffs = _side_by_side(name, executables, inputs, compare=compare, threads=threads, seconds=seconds,
                                   progress=progress, warmup=1, min_repeats=2)
    return BenchRow(
        model=name,
        compile_s=executables[XLA].compile_seconds or 0.0,
        median_ms={k: t.median_ms for k, t in timings.items()},
        spread_pct={k: t.spread_pct for k, t in timings.items()},
        max_rel_diff=diffs,
        threads=threads,
        rewrites=work,
    )
