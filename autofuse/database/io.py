"""Tuning records as tables (pandas): export to and import from Parquet or JSONL, and merging.

An exported file has one row per record, joined with its target's fields and
its workload's models and description, so a single file travels between
machines and models. Imported and merged records keep their target (they are
never applied to another) and become `source="imported"`; a record already
present (same workload, target, candidate and `created_at`) is skipped.
"""
from __future__ import annotations

import gzip
import json
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from autofuse.database.base import Database, DatabaseError, Record, Workload, canonical_json
from autofuse.database.target import Target

RECORD_FIELDS = ("workload_key", "target_key", "candidate_key", "candidate", "median_s", "iqr_s", "repeats",
                 "compile_s", "max_rel_diff", "error_kind", "error", "source", "created_at")
TARGET_FIELDS = ("kind", "device", "isa", "jax_version", "jaxlib_version", "xla_flags")
COLUMNS = (*RECORD_FIELDS, *(f"target_{f}" for f in TARGET_FIELDS), "workload_models", "workload_description")
_JSON_COLUMNS = ("candidate", "workload_description")


@dataclass(frozen=True)
class ImportResult:
    """How many records an import or merge added, and how many it skipped as already present."""

    added: int
    duplicates: int


def to_frame(db: Database) -> pd.DataFrame:
    """Every record as a row, with its target's fields and its workload's models and description.

    `candidate` and `workload_description` are dicts, `target_isa` and
    `workload_models` lists: the training set of the cost model.
    """
    targets = {t.key: t for t in db.targets()}
    workloads = {w.key: w for w in db.workloads()}
    rows = []
    for r in db.records():
        t, w = targets[r.target_key], workloads[r.workload_key]
        row = {name: getattr(r, name) for name in RECORD_FIELDS}
        row.update({f"target_{name}": getattr(t, name) for name in TARGET_FIELDS})
        row["target_isa"] = list(t.isa)
        row["workload_models"] = list(w.models)
        row["workload_description"] = w.description
        rows.append(row)
    return pd.DataFrame(rows, columns=list(COLUMNS))


def export_records(db: Database, path: str | os.PathLike) -> int:
    """Writes every record to `path` (.parquet, .jsonl or .jsonl.gz); returns how many."""
    fmt = _format(path)
    frame = to_frame(db)
    for column in _JSON_COLUMNS:
        frame[column] = frame[column].map(canonical_json)
    try:
        if fmt == "parquet":
            frame.to_parquet(path, index=False)
        else:
            _write_jsonl(frame, path)
    except OSError as error:
        raise DatabaseError(f"{path}: cannot write it: {error}") from None
    return len(frame)


def import_records(db: Database, path: str | os.PathLike) -> ImportResult:
    """Adds the records of an exported file to `db`, all in one transaction."""
    frame = _read(path)
    targets: dict[str, Target] = {}
    workloads: dict[str, Workload] = {}
    records = []
    for index, row in enumerate(frame.to_dict("records")):
        try:
            target = Target(*(_target_value(name, row[f"target_{name}"]) for name in TARGET_FIELDS))
            if target.key != row["target_key"]:
                raise DatabaseError(f"target_key {row['target_key']} is not the key of its target fields "
                                    f"({target.key}): the file was edited or written by another key scheme")
            workload = Workload(row["workload_key"], json.loads(row["workload_description"]),
                                tuple(_list(row["workload_models"])))
            fields = {name: _scalar(row[name]) for name in RECORD_FIELDS}
            fields["candidate"] = json.loads(row["candidate"])
            fields["repeats"] = int(fields["repeats"] or 0)
            records.append(replace(Record(**fields), source="imported"))
        except (DatabaseError, TypeError, ValueError) as error:
            raise DatabaseError(f"{path}: row {index}: {error}") from None
        targets.setdefault(target.key, target)
        if workload.key in workloads:
            models = workloads[workload.key].models
            workload = replace(workload, models=models + tuple(m for m in workload.models if m not in models))
        workloads[workload.key] = workload
    try:
        added = db.commit_batch(targets.values(), workloads.values(), records)
    except DatabaseError as error:
        raise DatabaseError(f"importing {path}: {error}") from None
    return ImportResult(added, len(records) - added)


def merge_databases(dest: Database, source: Database) -> ImportResult:
    """Adds every record of `source` (with its targets and workloads) to `dest`, in one transaction."""
    records = [replace(r, source="imported") for r in source.records()]
    added = dest.commit_batch(source.targets(), source.workloads(), records)
    return ImportResult(added, len(records) - added)


def _write_jsonl(frame: pd.DataFrame, path: str | os.PathLike) -> None:
    """One JSON object per line, floats written exactly (pandas' own writer keeps 15 decimals at most)."""
    opener = gzip.open if os.fspath(path).endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as f:
        for row in frame.to_dict("records"):
            f.write(json.dumps({k: _scalar(v) for k, v in row.items()}, ensure_ascii=False, allow_nan=False) + "\n")


def _format(path: str | os.PathLike) -> str:
    name = Path(path).name.lower()
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith((".jsonl", ".jsonl.gz")):
        return "jsonl"
    raise DatabaseError(f"{path}: expected a .parquet, .jsonl or .jsonl.gz file")


def _read(path: str | os.PathLike) -> pd.DataFrame:
    fmt = _format(path)
    if not Path(path).is_file():
        raise DatabaseError(f"{path}: no such file")
    try:
        if fmt == "parquet":
            frame = pd.read_parquet(path)
        elif Path(path).stat().st_size == 0:
            frame = pd.DataFrame(columns=list(COLUMNS))
        else:
            frame = pd.read_json(path, orient="records", lines=True, precise_float=True, dtype=False)
    except (OSError, ValueError) as error:
        raise DatabaseError(f"{path}: cannot read it as {fmt}: {str(error).splitlines()[0]}") from None
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise DatabaseError(f"{path}: not an autofuse records export (missing columns: {', '.join(missing)})")
    return frame


def _scalar(value: Any) -> Any:
    """A table cell as a plain Python value: NaN/NA (pandas' missing) become None."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return None
    return value.item() if isinstance(value, np.generic) else value


def _list(value: Any) -> list:
    """A list cell: Parquet gives numpy arrays, JSONL lists."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    return [str(v) for v in value]


def _target_value(name: str, value: Any) -> Any:
    return tuple(_list(value)) if name == "isa" else str(_scalar(value) or "")
