"""`autofuse.tune`: the tuning driver, a readable sequence of steps.

1. Import the model; measure the whole-model rewrite pipelines (the global
   decision) and keep the fastest that matches onnxruntime.
2. Cut the rewritten model into tasks; take every record the database already
   holds for them on this target (resume, and reuse across models).
3. Rounds: the scheduler picks a task, the evolutionary search proposes
   candidates ranked by the cost model, the runner measures them, each result
   is committed to the database as it arrives, the cost model is updated.
4. Assemble the best candidate of every task, check the whole model against
   onnxruntime, and time it beside XLA's default and onnxruntime.

Sparsity is tried only under an accuracy budget (`accuracy_budget=`): the
levels the budget admits per layer become search decisions, and the assembled
model is checked against the budget again (`autofuse.sparsity.admission`).

The driver is the only writer of the database; measuring is the runner's job,
ranking the cost model's, storing the database's.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

import numpy as np

from autofuse.api import ModelRef, example_inputs, import_onnx, resolve
from autofuse.costmodel.base import CostModel, Sample, default_cost_model
from autofuse.database import Database, Record, Target, Workload, current_target, open_database
from autofuse.errors import AutofuseError
from autofuse.executable import Executable
from autofuse.ir import Model
from autofuse.rewrite import rewrite
from autofuse.runners.base import Job, Runner, RunResult
from autofuse.search.evolution import propose
from autofuse.search.measure import build_program, task_jobs
from autofuse.search.scheduler import TaskState, next_task
from autofuse.search.space import (Choices, Space, apply_choices, candidate_key, masked_model, model_choices,
                                   sparsity_decisions, task_choices, task_space)
from autofuse.search.task import Task, describe_graph, extract_tasks
from autofuse.sparsity.admission import DEFAULT_PATTERNS, CalibSource

if TYPE_CHECKING:
    from autofuse.sparsity.admission import Admission, Refusal
    from autofuse.sparsity.budget import AccuracyBudget, BudgetVerdict

# Whole-model rewrite pipelines the search chooses between (rule-family names).
PIPELINES: tuple[tuple[str, ...], ...] = (
    (),
    ("folding",),
    ("folding", "layout"),
    ("folding", "algebraic", "layout"),
    ("folding", "algebraic", "layout", "algorithm"),
    ("folding", "algebraic", "layout", "packed", "algorithm"),  # packed first: algorithm keeps what it declines
)
PIPELINE_DECISION = "global/rewrites"
# The whole-model contenders of the closing comparison.
TUNED, ALGORITHMS_ONLY, PIPELINE_ONLY = "autofuse tuned", "algorithm choices only", "rewrites only"
XLA_DEFAULT, ORT = "XLA default", "onnxruntime"
DENSE_TUNED = "tuned, dense"  # the best measured choices without sparsity
# A task keeps its default unless a candidate measured at least this much faster.
CHOICE_MARGIN = 0.03
# A tuned model may differ from onnxruntime by at most this (max |diff| / max |reference|).
MODEL_TOLERANCE = 1e-3

Progress = Callable[["TuneProgress"], None]


@dataclass(frozen=True)
class TuneProgress:
    """A snapshot for a progress bar."""

    phase: str
    trials: int
    trials_total: int | None
    best_task_speedup: float | None
    elapsed_s: float
    time_left_s: float | None
    message: str = ""


@dataclass(frozen=True)
class TaskReport:
    """One task's outcome."""

    key: str
    ops: str
    occurrences: int
    default_ms: float | None
    best_ms: float | None
    best: dict
    measured: int
    reused: int


@dataclass
class TuneResult:
    """What a tuning run produced: the tuned model and how it compares."""

    source: str
    model: Model
    pipeline: tuple[str, ...]
    choices: Choices
    barriers: frozenset[str]
    tasks: list[TaskReport]
    measurements: int
    reused: int
    median_ms: dict[str, float] = field(default_factory=dict)
    max_rel_diff: float | None = None
    notes: list[str] = field(default_factory=list)
    budget: AccuracyBudget | None = None
    accuracy: BudgetVerdict | None = None  # the kept sparse layers together, against the dense model
    accuracy_on: str = ""  # the samples `accuracy` was measured on
    refusals: list[Refusal] = field(default_factory=list)

    @property
    def decisions(self) -> dict:
        return {"pipeline": list(self.pipeline), "algorithms": dict(self.choices.algorithms),
                "splits": sorted(self.choices.splits), "sparsity": dict(self.choices.sparsity)}


class _Session:
    """The pieces of one tuning run the steps share: database, target, runner, cost model, budget."""

    def __init__(self, db: Database, target: Target, runner: Runner, cost_model: CostModel,
                 trials: int | None, time_budget_s: float | None, progress: Progress | None,
                 source: str) -> None:
        self.db, self.target, self.runner, self.cost_model = db, target, runner, cost_model
        self.trials, self.time_budget_s, self.progress = trials, time_budget_s, progress
        self.source = source
        self.start = time.monotonic()
        self.measurements = 0
        self.reused = 0
        self.best_speedup: float | None = None

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def time_left(self) -> float | None:
        return None if self.time_budget_s is None else max(0.0, self.time_budget_s - self.elapsed())

    def out_of_budget(self, reserve_s: float = 0.0) -> bool:
        if self.trials is not None and self.measurements >= self.trials:
            return True
        left = self.time_left()
        return left is not None and left <= reserve_s

    def report(self, phase: str, message: str = "") -> None:
        if self.progress:
            self.progress(TuneProgress(phase, self.measurements, self.trials, self.best_speedup,
                                       self.elapsed(), self.time_left(), message))

    def measure(self, workload: Workload, candidates: Sequence[dict], jobs: Sequence[Job]
                ) -> list[tuple[dict, RunResult]]:
        """Runs jobs, committing each record the moment its result arrives."""
        self.db.commit_workload(workload)
        futures = self.runner.submit(list(jobs))
        results = []
        for candidate, future in zip(candidates, futures):
            result = future.result()
            self.db.commit_record(_record(workload.key, self.target.key, candidate, result))
            self.measurements += 1
            results.append((candidate, result))
        return results


def _record(workload_key: str, target_key: str, candidate: dict, result: RunResult) -> Record:
    return Record(workload_key, target_key, dict(candidate), candidate_key(candidate), result.median_s,
                  result.iqr_s, result.repeats, result.compile_s, result.max_rel_diff, result.error_kind,
                  result.error)


def _known(db: Database, workload_key: str, target_key: str) -> dict[str, tuple[dict, float | None]]:
    """Records already in the database for a workload on this target: candidate key -> (candidate, seconds)."""
    known: dict[str, tuple[dict, float | None]] = {}
    for r in db.records(workload_key, target_key):
        seconds = r.median_s if r.ok else None
        previous = known.get(r.candidate_key)
        if previous is None or (seconds is not None and (previous[1] is None or seconds < previous[1])):
            known[r.candidate_key] = (r.candidate, seconds)
    return known


def _pipeline_name(pipeline: Sequence[str]) -> str:
    return ",".join(pipeline) or "none"


def choose_pipeline(session: _Session, model: Model, inputs: Mapping[str, np.ndarray],
                    reference: Sequence[np.ndarray], pipelines: Sequence[Sequence[str]]
                    ) -> tuple[tuple[str, ...], Model, dict[str, float | None]]:
    """Step 1: measures the whole model under each rewrite pipeline; the fastest correct one wins."""
    from autofuse.api import rule_families

    known_families = rule_families()
    workload = Workload(f"model:{model.graph.structural_key()}",
                        dict(describe_graph(model.graph), kind="model"), (session.source,))
    known = _known(session.db, workload.key, session.target.key)
    rewritten: dict[str, tuple[tuple[str, ...], Model]] = {}
    for pipeline in pipelines:
        if all(f in known_families for f in pipeline):
            sets = [known_families[f] for f in pipeline]
            rewritten[_pipeline_name(pipeline)] = (tuple(pipeline), rewrite(model, sets).model if sets else model)
    todo = [name for name in rewritten if candidate_key({PIPELINE_DECISION: name}) not in known]
    session.report("pipelines", f"measuring {len(todo)} rewrite pipelines on the whole model"
                   + (f" ({len(rewritten) - len(todo)} from the database)" if len(todo) < len(rewritten) else ""))
    if todo:
        # Within MODEL_TOLERANCE of the largest reference value (small outputs carry no relative precision).
        scale = max((float(np.max(np.abs(r))) for r in reference if np.size(r)), default=1.0)
        candidates = [{PIPELINE_DECISION: name} for name in todo]
        jobs = [Job(f"{workload.key}/{name}",
                    functools.partial(build_program, rewritten[name][1], Choices(), inputs),
                    tuple(reference), rtol=MODEL_TOLERANCE, atol=MODEL_TOLERANCE * scale, timeout_s=600.0)
                for name in todo]
        for candidate, result in session.measure(workload, candidates, jobs):
            known[candidate_key(candidate)] = (candidate, result.median_s if result.ok else None)
    times = {name: known.get(candidate_key({PIPELINE_DECISION: name}), (None, None))[1] for name in rewritten}
    good = {name: t for name, t in times.items() if t is not None}
    if not good:
        raise AutofuseError(f"{session.source}: no rewrite pipeline compiled and matched onnxruntime")
    best = min(good, key=good.get)
    return rewritten[best][0], rewritten[best][1], times


def _samples(task: Task, description: dict, candidates: Sequence[dict], target: dict) -> list[Sample]:
    return [Sample(task.key, description, dict(c), target) for c in candidates]


def _jobs(task: Task, candidates: Sequence[dict], seed: int, references: dict) -> list[Job]:
    """One job per candidate; a sparse one must match the task with the same weights masked."""
    from autofuse.search.measure import reference_outputs
    from autofuse.search.task import random_inputs

    jobs = []
    for candidate in candidates:
        choices = task_choices(task, candidate)
        key = (task.key, tuple(sorted(choices.sparsity.items())))
        measured = dataclasses.replace(task, model=masked_model(task.model, choices)) if choices.sparsity else task
        if key not in references:
            references[key] = reference_outputs(measured, random_inputs(task.model, seed))
        jobs += task_jobs(measured, [candidate], seed=seed, reference=references[key])
    return jobs


def tune_tasks(session: _Session, tasks: Sequence[Task], *, round_size: int, seed: int,
               reserve_s: float, sparsity: Mapping[str, Sequence[str]] | None = None
               ) -> tuple[list[TaskState], dict[str, int]]:
    """Steps 2 and 3: database records first, then measured rounds until the budget is spent.

    `sparsity` (layer value -> admitted patterns) adds the sparsity decisions; records of
    levels not admitted here (another budget, or none) are left out."""
    rng = random.Random(seed)
    target_features = dataclasses.asdict(session.target)
    states, spaces, descriptions, references, reused = [], {}, {}, {}, {}
    for task in tasks:
        state = TaskState(task)
        spaces[task.key] = task_space(task, sparsity=sparsity)
        state.measured = {k: v for k, v in _known(session.db, task.key, session.target.key).items()
                          if spaces[task.key].offers(v[0])}
        reused[task.key] = len(state.measured)
        session.reused += len(state.measured)
        descriptions[task.key] = task.describe()
        states.append(state)
    session.report("tasks", f"{len(tasks)} tasks; {session.reused} records reused from the database")
    while not session.out_of_budget(reserve_s):
        state = next_task(states)
        if state is None:
            break
        task, space = state.task, spaces[state.task.key]
        description = descriptions[task.key]

        def rank(pool: Sequence[dict]) -> Sequence[float]:
            return session.cost_model.predict(_samples(task, description, pool, target_features))

        room = round_size if session.trials is None else min(round_size, session.trials - session.measurements)
        proposed = (space.canonical(c) for c in propose(space, state.measured, room, rank, rng))
        candidates = list({candidate_key(c): c for c in proposed if candidate_key(c) not in state.measured}.values())
        state.rounds += 1
        if not candidates:
            state.exhausted = True
            continue
        jobs = _jobs(task, candidates, seed, references)
        workload = Workload(task.key, description, (session.source,))
        results = session.measure(workload, candidates, jobs)
        times = []
        for candidate, result in results:
            state.measured[candidate_key(candidate)] = (candidate, result.median_s if result.ok else None)
            times.append(result.median_s if result.ok else None)
        ok = [(c, t) for (c, _), t in zip(results, times) if t is not None]
        if ok:
            session.cost_model.update(_samples(task, description, [c for c, _ in ok], target_features),
                                      [t for _, t in ok], time_budget_s=5.0)
        default_s = state.measured.get(candidate_key(space.default()), (None, None))[1]
        if default_s and state.best_s:
            session.best_speedup = max(session.best_speedup or 0.0, default_s / state.best_s)
        session.report("search", f"task {task.key[:8]} ({'+'.join(n.op_type for n in task.nodes)}): "
                       f"best {state.best_s * 1e3:.3f} ms" if state.best_s else f"task {task.key[:8]}: no success")
    return states, reused


def chosen_candidate(state: TaskState, space: Space, margin: float = CHOICE_MARGIN) -> dict:
    """The best measured candidate if it beats the default by `margin`, else the default
    (a difference inside the timing noise is not worth a change)."""
    default = space.default()
    default_s = state.measured.get(candidate_key(default), (None, None))[1]
    best, best_s = state.best_candidate, state.best_s
    if best is None or (default_s is not None and best_s > default_s * (1 - margin)):
        return default
    return space.canonical(best)


def occurrence_pairs(state: TaskState, space: Space, allows: Callable[[str, str], bool] | None
                     ) -> list[tuple[Task, dict]]:
    """The task's chosen candidate; with sparsity (`allows(layer value, pattern)`), one per
    occurrence: the best measured candidate whose sparse levels are allowed on that
    occurrence's own layers. Accuracy is a cost, so a sparse candidate must also beat the
    best dense one by `CHOICE_MARGIN`, not only the default."""
    if allows is None:
        return [(state.task, chosen_candidate(state, space))]
    pairs = []
    for occurrence in state.task.occurrences:
        outputs = occurrence.node_outputs
        allowed = {k: (c, t) for k, (c, t) in state.measured.items()
                   if all(allows(outputs[i], p) for i, p in sparsity_decisions(c).items())}
        dense = {k: (c, t) for k, (c, t) in allowed.items() if not sparsity_decisions(c)}
        best = chosen_candidate(TaskState(state.task, allowed), space)
        if sparsity_decisions(best):
            best_dense = chosen_candidate(TaskState(state.task, dense), space)
            dense_s = dense.get(candidate_key(best_dense), (None, None))[1]
            if dense_s is not None and allowed[candidate_key(best)][1] > dense_s * (1 - CHOICE_MARGIN):
                best = best_dense
        pairs.append((dataclasses.replace(state.task, occurrences=(occurrence,)), best))
    return pairs


def fit_budget(session: _Session, states: Sequence[TaskState], spaces: Mapping[str, Space], base: Model,
               admission: Admission | None) -> tuple[Choices, Choices | None, BudgetVerdict | None, list[Refusal]]:
    """The chosen decisions, their sparse layers checked together against the budget (options
    banned until the assembled model fits); the best choices without sparsity, to time beside
    them; the verdict on the kept sparse layers; every refusal."""
    from autofuse.sparsity.admission import enforce

    def choose(allows: Callable[[str, str], bool] | None) -> Choices:
        return model_choices([p for s in states for p in occurrence_pairs(s, spaces[s.task.key], allows)])

    def allowed(banned: frozenset[tuple[str, str]]) -> Callable[[str, str], bool]:
        return lambda value, pattern: admission.allows(value, pattern) and (value, pattern) not in banned

    def select(banned: frozenset[tuple[str, str]]) -> tuple[Mapping[str, str], Model, frozenset[str]]:
        chosen = choose(allowed(banned))
        return (chosen.sparsity, *apply_choices(admission.pruned(base, chosen.sparsity), chosen))

    choices = choose(admission.allows if admission else None)
    if not choices.sparsity:
        return choices, None, None, list(admission.refusals) if admission else []
    session.report("sparsity", f"checking the {len(choices.sparsity)} chosen sparse layers together")
    banned, verdict, dropped = enforce(admission, select, report=lambda message: session.report("sparsity", message))
    return choose(allowed(banned)), choose(lambda value, pattern: False), verdict, admission.refusals + dropped


def _task_report(state: TaskState, space: Space, reused: int) -> TaskReport:
    default = state.measured.get(candidate_key(space.default()), (None, None))[1]
    best = chosen_candidate(state, space)
    return TaskReport(state.task.key, "+".join(n.op_type for n in state.task.nodes), state.task.weight,
                      default * 1e3 if default else None, state.best_s * 1e3 if state.best_s else None,
                      best, len(state.measured) - reused, reused)


# The families whose rules are per-op decisions of the search (their default sets are one global choice).
PER_OP_FAMILIES = frozenset({"algorithm", "packed"})


def per_op_base(raw: Model, pipeline: Sequence[str], rewritten: Model) -> Model:
    """The model tasks are cut from: the pipeline without its per-op families, whose
    rules the search then chooses node by node (so the task spaces keep them)."""
    if not PER_OP_FAMILIES & set(pipeline):
        return rewritten
    from autofuse.api import rule_families

    families = rule_families()
    rest = [families[f] for f in pipeline if f not in PER_OP_FAMILIES]
    return rewrite(raw, rest).model if rest else raw


def pairs_chosen(pairs: Sequence[tuple[Task, Mapping[str, str]]]) -> bool:
    """Whether any task's chosen candidate differs from its default."""
    return any(v not in ("default", "fuse", "dense") for _, c in pairs for v in c.values())


def _onnxruntime_outputs(model: ModelRef, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    from autofuse.runners.onnxruntime import reference_session, run_session

    return run_session(reference_session(resolve(model)), inputs)


def finish(result: TuneResult, raw: Model, rewritten: Model, model: ModelRef,
           inputs: Mapping[str, np.ndarray], reference: Sequence[np.ndarray], seconds: float,
           base: Model | None = None, pruned: Model | None = None, dense: Choices | None = None) -> None:
    """Step 4: the tuned model must match onnxruntime and beat what it was built from;
    times it beside the pipeline alone, XLA's default and onnxruntime (interleaved).

    With sparse layers, `pruned` is `base` with their pruned weights: the tuned model must
    match it run densely (the budget was checked before), and `dense`, the best choices
    measured without sparsity, is timed beside it."""
    from autofuse.bench import blocking, relative_error
    from autofuse.runners.onnxruntime import baseline_session, run_session
    from autofuse.runners.protocol import compare

    tuned = Executable(result.model, barriers=result.barriers).compile()
    sparse = pruned is not None and bool(result.choices.sparsity)
    diff = relative_error(Executable(pruned).compile()(inputs) if sparse else reference, tuned(inputs))
    if diff > MODEL_TOLERANCE:
        result.notes.append(f"the tuned model differed from onnxruntime by {diff:.1e}; "
                            "its task decisions were dropped")
        result.model, result.choices, result.barriers = rewritten, Choices(), frozenset()
        tuned = Executable(rewritten).compile()
        diff = relative_error(reference, tuned(inputs))
    contenders = {TUNED: blocking(tuned, inputs)}
    variants = {TUNED: (result.model, result.choices, result.barriers)}
    if result.choices.splits and result.choices.algorithms:
        algorithms_only = Choices(result.choices.algorithms, sparsity=result.choices.sparsity)
        model_only, _ = apply_choices(pruned if result.choices.sparsity else base or rewritten, algorithms_only)
        contenders[ALGORITHMS_ONLY] = blocking(Executable(model_only).compile(), inputs)
        variants[ALGORITHMS_ONLY] = (model_only, algorithms_only, frozenset())
    if result.choices.sparsity and dense is not None:
        dense_model, dense_barriers = apply_choices(base or rewritten, dense)
        contenders[DENSE_TUNED] = blocking(Executable(dense_model, barriers=dense_barriers).compile(), inputs)
        variants[DENSE_TUNED] = (dense_model, dense, dense_barriers)
    if result.choices.algorithms or result.choices.splits or (base is not None and base is not rewritten):
        contenders[PIPELINE_ONLY] = blocking(Executable(rewritten).compile(), inputs)
        variants[PIPELINE_ONLY] = (rewritten, Choices(), frozenset())
    contenders[XLA_DEFAULT] = blocking(Executable(raw).compile(), inputs)
    session = baseline_session(resolve(model))
    contenders[ORT] = lambda: run_session(session, inputs)
    timings = compare(contenders, rounds=5, warmup=2, min_repeats=3, min_seconds=seconds)
    result.median_ms = {name: t.median_ms for name, t in timings.items()}
    result.max_rel_diff = diff
    fastest = min(variants, key=lambda name: timings[name].median_s)
    if fastest != TUNED:
        result.notes.append(f"in the whole model, '{fastest}' beat all task decisions together: it is kept")
        result.model, result.choices, result.barriers = variants[fastest]
        result.median_ms[TUNED] = result.median_ms[fastest]


def tune(
    model: ModelRef,
    *,
    db: str | os.PathLike | Database = "autofuse.db",
    runner: Runner | None = None,
    target: str = "cpu",
    trials: int | None = None,
    time_budget_s: float | None = 600.0,
    cost_model: CostModel | None = None,
    shapes: Mapping[str, Sequence[int]] | None = None,
    pipelines: Sequence[Sequence[str]] = PIPELINES,
    round_size: int = 4,
    seed: int = 0,
    compare_seconds: float = 3.0,
    progress: Progress | None = None,
    accuracy_budget: str | AccuracyBudget | None = None,
    calib: CalibSource | None = None,
    sparsity_patterns: Sequence[str] = DEFAULT_PATTERNS,
) -> TuneResult:
    """Tunes a model on this machine and returns the tuned model with its measurements.

    Every measurement is committed to `db` as it arrives; running again with
    the same database resumes without re-measuring, and a model that shares
    workloads with one tuned before takes those records instead of measuring.
    The default runner is Ray, started locally.

    Sparsity is tried only with `accuracy_budget` ("rel:0.02", "acc:0.01" with
    labelled `calib` data, or an AccuracyBudget): each MatMul/Gemm layer may then
    take a level of `sparsity_patterns` that keeps the model inside the budget.
    """
    from autofuse.sparsity.admission import admit, budget_arguments, calibration

    if trials is not None and trials < 1:
        raise AutofuseError(f"--trials {trials}: must be at least 1")
    if time_budget_s is not None and time_budget_s <= 0:
        raise AutofuseError(f"--time-budget {time_budget_s}: must be positive")
    budget = budget_arguments(accuracy_budget, calib, sparsity_patterns)
    source = str(model)
    owns_db = isinstance(db, (str, os.PathLike))
    database = open_database(db) if owns_db else db
    owns_runner = runner is None
    try:
        this_target = current_target(target)
        database.commit_target(this_target)
        if runner is None:
            from autofuse.runners.ray import RayRunner

            runner = RayRunner()
        session = _Session(database, this_target, runner, cost_model or default_cost_model(),
                           trials, time_budget_s, progress, source)
        session.report("import", f"importing {source}")
        raw = import_onnx(model, shapes=shapes)
        calib_data = calibration(raw, budget, calib, seed) if budget else None
        inputs = example_inputs(raw, seed=seed)
        reference = _onnxruntime_outputs(model, inputs)
        pipeline, rewritten, _ = choose_pipeline(session, raw, inputs, reference, pipelines)
        session.report("tasks", f"pipeline {_pipeline_name(pipeline)}; extracting tasks")
        base = per_op_base(raw, pipeline, rewritten)
        admission = None
        if budget is not None:
            admission = admit(base, budget, calib_data, sparsity_patterns,
                              report=lambda message: session.report("sparsity", message))
        levels = admission.levels if admission else None
        tasks = extract_tasks(base)
        reused_at_start = session.reused
        states, reused = tune_tasks(session, tasks, round_size=round_size, seed=seed,
                                    reserve_s=30.0 + 4 * compare_seconds, sparsity=levels)
        spaces = {s.task.key: task_space(s.task, sparsity=levels) for s in states}
        choices, dense, verdict, refusals = fit_budget(session, states, spaces, base, admission)
        pruned = admission.pruned(base, choices.sparsity) if choices.sparsity else None
        tuned, barriers = apply_choices(pruned or base, choices)
        reports = [_task_report(s, spaces[s.task.key], reused.get(s.task.key, 0)) for s in states]
        result = TuneResult(source, tuned, pipeline, choices, barriers, reports,
                            session.measurements, session.reused - reused_at_start, budget=budget,
                            accuracy_on=calib_data.origin if calib_data else "", refusals=refusals)
        if owns_runner:  # the comparison runs in this process: no idle Ray cluster beside it
            runner.close()
            runner = None
        session.report("compare", "checking the tuned model against onnxruntime and timing it")
        finish(result, raw, rewritten, model, inputs, reference, compare_seconds, base=base, pruned=pruned,
               dense=dense)
        result.accuracy = verdict if result.choices.sparsity else None
        return result
    finally:
        if owns_runner and runner is not None:
            runner.close()
        if owns_db:
            database.close()


def best_known(
    model: ModelRef | Model,
    *,
    db: str | os.PathLike | Database,
    target: str = "cpu",
    shapes: Mapping[str, Sequence[int]] | None = None,
    pipelines: Sequence[Sequence[str]] = PIPELINES,
) -> TuneResult:
    """Applies the best records the database holds for this model on this target, measuring nothing.

    Without a record of the whole-model pipelines, the full default pipeline is used.
    """
    from autofuse.api import rule_families

    owns_db = isinstance(db, (str, os.PathLike))
    database = open_database(db) if owns_db else db
    try:
        this_target = current_target(target)
        raw = model if isinstance(model, Model) else import_onnx(model, shapes=shapes)
        key = f"model:{raw.graph.structural_key()}"
        families = rule_families()
        known = _known(database, key, this_target.key)
        timed = {c[PIPELINE_DECISION]: t for c, t in known.values() if t is not None and PIPELINE_DECISION in c}
        usable = [p for p in pipelines if all(f in families for f in p)]
        by_name = {_pipeline_name(p): tuple(p) for p in usable}
        timed = {name: t for name, t in timed.items() if name in by_name}
        pipeline = by_name[min(timed, key=timed.get)] if timed else tuple(usable[-1])
        rewritten = rewrite(raw, [families[f] for f in pipeline]).model if pipeline else raw
        base = per_op_base(raw, pipeline, rewritten)
        pairs, reports, reused = [], [], 0
        for task in extract_tasks(base):
            space = task_space(task)
            records = {k: v for k, v in _known(database, task.key, this_target.key).items() if space.offers(v[0])}
            reused += len(records)
            state = TaskState(task, records)
            pairs.append((task, chosen_candidate(state, space)))
            reports.append(_task_report(state, space, len(records)))
        choices = model_choices(pairs)
        tuned, barriers = apply_choices(base, choices) if pairs_chosen(pairs) else (rewritten, frozenset())
        source = raw.source if isinstance(model, Model) else str(model)
        return TuneResult(source, tuned, pipeline, choices, barriers, reports, 0, reused)
    finally:
        if owns_db:
            database.close()
