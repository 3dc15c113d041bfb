"""Record datasets for the cost model: candidates measured across the zoo, and training frames.

`collect` measures the candidates of every task of the given models (the
search's own space, `search.space.task_space`: the default first, then a
seeded sample of the rest, all of them when the space is small) into the
tuning database, one durable record per candidate, so an interrupted
collection keeps what it measured and a rerun skips it - a TenSet for this
machine. A task's candidates are compiled first; those XLA compiles to the
same optimised HLO are one program, timed once (identical programs never get
different labels from timing noise); the distinct programs are timed side by
side in interleaved rounds, so load on a shared machine hits them alike.

`training_frame` reads a database into a pandas DataFrame of successful
measurements (`autofuse.database.io.to_frame`), and `samples_of` turns it into
cost-model samples, latencies and ranking groups.
"""
from __future__ import annotations

import hashlib
import random
import re
import time
from typing import Any, Callable, Sequence

import numpy as np

from autofuse.costmodel.base import Sample
from autofuse.errors import AutofuseError

# The tolerance a candidate's outputs must meet against the task's default lowering.
RTOL, ATOL = 2e-3, 2e-4
# How long each distinct program is timed in all, and over how many interleaved rounds.
MEASURE_SECONDS, ROUNDS = 0.3, 6


class RecordsError(AutofuseError):
    """The database holds no usable records."""


def sample_candidates(space: Any, *, max_candidates: int, seed: int = 0) -> list[dict[str, str]]:
    """The space's default, then a seeded random sample of the other candidates (all, if few)."""
    every = space.all_candidates()
    first, rest = every[0], every[1:]
    if len(rest) > max_candidates - 1:
        rest = random.Random(seed).sample(rest, max_candidates - 1)
    return [first] + rest


def hlo_key(executable: Any) -> str:
    """The key of the program XLA compiled: equal keys, the same kernels run in the same order."""
    return hashlib.sha256(canonical_hlo(executable.optimized_hlo()).encode()).hexdigest()[:16]


_INSTRUCTION = re.compile(r"^\s*(ROOT )?%(\S+) = (.*?) ([a-z][a-z0-9-]*)\((.*?)\)(, .*)?$")
_SHAPE = re.compile(r"([a-z][a-z0-9]*)\[([0-9,]*)\](?:\{([0-9,]*)[^}]*\})?")
_NO_OPS = ("bitcast", "opt-barrier")  # no work at run time: their result is their operand's buffer


def _shape(match: re.Match) -> str:
    """A shape without its size-1 dimensions (which change neither the bytes nor their order)."""
    dtype, dims, layout = match.group(1), match.group(2), match.group(3)
    sizes = [int(d) for d in dims.split(",") if d]
    keep = [i for i, d in enumerate(sizes) if d != 1]
    text = f"{dtype}[{','.join(str(sizes[i]) for i in keep)}]"
    if layout:
        minor_to_major = [int(i) for i in layout.split(",") if i]
        text += "{" + ",".join(str(keep.index(i)) for i in minor_to_major if i in keep) + "}"
    return text


def canonical_hlo(text: str) -> str:
    """Optimised HLO reduced to what runs: no names, metadata or stack-frame tables; bitcasts and
    optimisation barriers (no work at run time) read as their operand; size-1 dimensions dropped.

    Two candidates that differ only by a barrier XLA did not need (a split edge
    its fusion pass would not have fused anyway) become one program.
    """
    lines, names, computations, count, inside = [], {}, {}, 0, False
    for raw in text.splitlines():
        raw = re.sub(r", metadata=\{[^}]*\}", "", raw)
        head = re.match(r"^(ENTRY )?%(\S+) \(.*\{$", raw)
        if head:
            computations.setdefault(head.group(2), f"c{len(computations)}")
            names, count, inside = {}, 0, True
            lines.append(f"{head.group(1) or ''}{computations[head.group(2)]} {{")
            continue
        if not inside:  # the module header and its stack-frame tables
            continue
        if raw.strip() == "}":
            lines.append("}")
            inside = False
            continue
        match = _INSTRUCTION.match(raw)
        if not match:
            lines.append(raw.strip())  # kept as it is: never merge what was not understood
            continue
        root, name, shape, opcode, operands, attrs = match.groups()
        refs = [names.get(op.strip().lstrip("%"), op.strip()) for op in operands.split(",") if op.strip()]
        if opcode in _NO_OPS and len(refs) == 1 and not root:
            names[name] = refs[0]
            continue
        names[name], count = f"v{count}", count + 1
        attrs = re.sub(r"%([\w.-]+)", lambda m: computations.setdefault(m.group(1), f"c{len(computations)}"),
                       attrs or "")
        lines.append(f"{root or ''}{names[name]} = {_SHAPE.sub(_shape, shape)} {opcode}({', '.join(refs)})"
                     f"{_SHAPE.sub(_shape, attrs)}")
    return "\n".join(lines)


# The rewrite families the tuner's usual pipelines apply before cutting tasks (see autofuse.tuning).
DEFAULT_REWRITES = ("folding", "algebraic", "layout")


def collect(models: Sequence[str], db: Any, *, rewrites: Sequence[str] = DEFAULT_REWRITES,
            max_candidates: int = 16, min_seconds: float = MEASURE_SECONDS, rounds: int = ROUNDS, seed: int = 0,
            log: Callable[[str], None] = print) -> int:
    """Measures the candidates of every task of `models` (after the `rewrites` families,
    as the tuner cuts tasks from a rewritten model) into the database `db`.

    Each distinct program is timed for `min_seconds` in all, spread over
    `rounds` interleaved rounds. Returns how many records were added
    (candidates already in `db` for this target are skipped).
    """
    from autofuse.api import import_onnx, rewrite_model
    from autofuse.database import Workload, candidate_key, current_target
    from autofuse.search.space import task_space
    from autofuse.search.task import extract_tasks

    target = current_target()
    db.commit_target(target)
    added = 0
    for model_name in models:
        model = import_onnx(model_name)
        tasks = extract_tasks(rewrite_model(model, rewrites).model if rewrites else model)
        log(f"{model_name}: {len(tasks)} tasks")
        for task in tasks:
            db.commit_workload(Workload(task.key, task.describe(), (model_name,)))
            candidates = [c for c in sample_candidates(task_space(task), max_candidates=max_candidates, seed=seed)
                          if not db.has(task.key, target.key, candidate_key(c))]
            if not candidates:
                continue
            records = measure_task(task, candidates, target_key=target.key, min_seconds=min_seconds,
                                   rounds=rounds, seed=seed)
            db.commit_batch((), (), records)
            added += len(records)
            log(f"  task {task.key[:12]} ({len(task.nodes)} nodes): {len(records)} candidates, "
                f"{added} records so far")
    return added


def measure_task(task: Any, candidates: Sequence[dict[str, str]], *, target_key: str, min_seconds: float,
                 rounds: int = ROUNDS, seed: int = 0) -> list[Any]:
    """One `Record` per candidate: compiled, checked against the task's default lowering,
    timed once per distinct program; a failure is a record, never an exception."""
    from autofuse.database import Record, candidate_key
    from autofuse.runners.protocol import compare
    from autofuse.search.measure import build_program, reference_outputs
    from autofuse.search.space import task_choices
    from autofuse.search.task import random_inputs

    inputs = random_inputs(task.model, seed)
    reference = reference_outputs(task, inputs)
    built: list[tuple[str | None, float | None, str | None, str | None]] = []  # program, compile s, error
    programs: dict[str, Any] = {}
    for candidate in candidates:
        try:
            program = build_program(task.model, task_choices(task, candidate), inputs)
            key = hlo_key(program.executable)
            programs.setdefault(key, program)
            built.append((key, program.compile_s, None, None))
        except Exception as error:  # a failed candidate is data, not a crash
            built.append((None, None, "compile", f"{type(error).__name__}: {error}"[:500]))
    checks: dict[str, tuple[float | None, str | None, str | None]] = {}
    runs = {}
    for key, program in programs.items():
        try:
            outputs = program()
        except Exception as error:
            checks[key] = (None, "runtime", f"{type(error).__name__}: {error}"[:500])
            continue
        diff = _max_rel_diff(outputs, reference)
        close = all(np.allclose(o, r, rtol=RTOL, atol=ATOL) for o, r in zip(outputs, reference))
        checks[key] = (diff, None if close else "mismatch", None if close else f"max relative difference {diff:.3g}")
        runs[key] = program
    timings = compare(runs, rounds=rounds, warmup=1, min_repeats=2, min_seconds=min_seconds) if runs else {}
    records = []
    for candidate, (key, compile_s, error_kind, error) in zip(candidates, built):
        diff = None
        if key is not None:
            diff, error_kind, error = checks[key]
        timing = timings.get(key) if key is not None else None
        records.append(Record(task.key, target_key, dict(candidate), candidate_key(candidate),
                              timing.median_s if timing else None, timing.iqr_s if timing else None,
                              len(timing.samples) if timing else 0, compile_s, diff, error_kind, error,
                              "measured", time.time()))
    return records


def _max_rel_diff(outputs: Sequence[np.ndarray], reference: Sequence[np.ndarray]) -> float:
    worst = 0.0
    for out, ref in zip(outputs, reference):
        out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
        if ref.size:
            worst = max(worst, float(np.max(np.abs(out - ref))) / max(float(np.max(np.abs(ref))), 1e-6))
    return worst


def training_frame(db: Any) -> Any:
    """Successful measurements as a pandas DataFrame, one row each, with `description`,
    `models` (every model the workload occurs in) and `target` (the target's fields) columns."""
    from autofuse.database.io import TARGET_FIELDS, to_frame

    frame = to_frame(db)
    frame = frame[frame["error_kind"].isna() & frame["median_s"].notna()].reset_index(drop=True)
    if frame.empty:
        raise RecordsError(f"{getattr(db, 'path', 'the database')}: no successful measurements to train on")
    frame["description"] = frame["workload_description"]
    frame["models"] = frame["workload_models"].map(list)
    frame["target"] = [{f: row[f"target_{f}"] for f in TARGET_FIELDS} for _, row in frame.iterrows()]
    return frame


def aggregate_repeats(frame: Any) -> Any:
    """One row per (workload, target, candidate), labelled per program.

    `measure_task` times the candidates that compile to one program once, so
    within a task they share a median to the bit. Candidates that shared one
    in any measurement are one program (a later collection may know programs
    better than an earlier one did: `canonical_hlo`), and every candidate of a
    program gets the geometric mean of all of the program's measurements.
    """
    keys = ["workload_key", "target_key", "candidate_key"]
    program = _program_ids(frame)
    measured = frame.assign(_program=program, _log=np.log(frame["median_s"].to_numpy(np.float64)))
    # One measurement of a program is one row per distinct median, however many candidates it labels.
    timings = measured.drop_duplicates(["_program", "median_s"])
    label = timings.groupby("_program")["_log"].mean()
    count = timings.groupby("_program")["_log"].size()
    out = measured.assign(median_s=np.exp(label.reindex(program).to_numpy()),
                          repeats_measured=count.reindex(program).to_numpy())
    if "models" in out:  # a workload recorded by several databases occurs in all of their models
        models = out.groupby("workload_key")["models"].agg(lambda lists: sorted({m for ms in lists for m in ms}))
        out["models"] = models.reindex(out["workload_key"]).to_numpy()
    return out.drop_duplicates(keys).drop(columns=["_program", "_log"]).reset_index(drop=True)


def _program_ids(frame: Any) -> np.ndarray:
    """An id per row: rows of one task whose candidates were ever timed as one program share it."""
    parent: dict[tuple, tuple] = {}

    def find(x: tuple) -> tuple:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    cells = list(zip(frame["workload_key"], frame["target_key"], frame["candidate_key"]))
    by_timing: dict[tuple, tuple] = {}
    for cell, median in zip(cells, frame["median_s"]):
        shared = by_timing.setdefault((cell[0], cell[1], median), cell)
        parent[find(cell)] = find(shared)
    roots = {root: i for i, root in enumerate(dict.fromkeys(find(c) for c in cells))}
    return np.array([roots[find(c)] for c in cells], np.int64)


def task_weights(models: Sequence[str],
                 rewrites: Sequence[Sequence[str]] = ((), DEFAULT_REWRITES)) -> dict[str, dict[str, int]]:
    """For each model, how often each of its tasks runs per inference (workload key -> count),
    for the tasks cut after each of `rewrites` (as `collect` cut them; keys never collide)."""
    from autofuse.api import import_onnx, rewrite_model
    from autofuse.search.task import extract_tasks

    weights: dict[str, dict[str, int]] = {}
    for name in models:
        model = import_onnx(name)
        for families in rewrites:
            cut = rewrite_model(model, families).model if families else model
            weights.setdefault(name, {}).update({t.key: t.weight for t in extract_tasks(cut)})
    return weights


def samples_of(frame: Any) -> tuple[list[Sample], np.ndarray, np.ndarray]:
    """Cost-model samples, their latencies (s), and their group (workload @ target) ids."""
    samples = [Sample(r.workload_key, r.description, r.candidate, r.target) for r in frame.itertuples()]
    latencies = frame["median_s"].to_numpy(np.float64)
    groups = (frame["workload_key"] + "@" + frame["target_key"]).to_numpy()
    return samples, latencies, groups
