"""The tuning database: every measurement, keyed by workload and target, kept across runs.

`open_database(path)` opens the embedded default (SQLite, `sqlite.py`);
`autofuse.database.io` exports, imports and merges through pandas (Parquet, JSONL).
"""
from __future__ import annotations

from autofuse.database.base import (
    ERROR_KINDS,
    Database,
    DatabaseError,
    Record,
    Workload,
    candidate_key,
)
from autofuse.database.sqlite import SCHEMA_VERSION, SQLiteDatabase, open_database
from autofuse.database.target import Target, current_target

__all__ = [
    "ERROR_KINDS", "SCHEMA_VERSION", "Database", "DatabaseError", "Record", "SQLiteDatabase", "Target",
    "Workload", "candidate_key", "current_target", "open_database",
]
