"""The embedded default database: one SQLite file in WAL mode.

The tuning driver is the only writer and commits every record in its own
transaction with `synchronous=FULL`, so a record is on disk when
`commit_record` returns: a SIGKILL of the driver (or a power cut) loses only
what was still in flight. WAL lets any number of reader processes
(`autofuse db stats`, a cost-model trainer) read a consistent snapshot while
the writer commits, without ever blocking it.
"""
from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterable, Iterator

from autofuse.database.base import DatabaseError, Record, Workload, candidate_key, canonical_json
from autofuse.database.target import Target

SCHEMA_VERSION = 1
FORMAT = "autofuse-tuning-db"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS targets (
    key TEXT PRIMARY KEY, kind TEXT NOT NULL, device TEXT NOT NULL, isa TEXT NOT NULL,
    jax_version TEXT NOT NULL, jaxlib_version TEXT NOT NULL, xla_flags TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS workloads (key TEXT PRIMARY KEY, description TEXT NOT NULL, models TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY,
    workload_key TEXT NOT NULL REFERENCES workloads(key),
    target_key TEXT NOT NULL REFERENCES targets(key),
    candidate_key TEXT NOT NULL, candidate TEXT NOT NULL,
    median_s REAL, iqr_s REAL, repeats INTEGER NOT NULL, compile_s REAL, max_rel_diff REAL,
    error_kind TEXT, error TEXT, source TEXT NOT NULL, created_at REAL NOT NULL,
    UNIQUE (workload_key, target_key, candidate_key, created_at));
CREATE INDEX IF NOT EXISTS records_by_target ON records (target_key);
CREATE INDEX IF NOT EXISTS records_best ON records (workload_key, target_key, median_s) WHERE error_kind IS NULL;
"""
_RECORD_COLUMNS = ("workload_key, target_key, candidate, candidate_key, median_s, iqr_s, repeats, compile_s,"
                   " max_rel_diff, error_kind, error, source, created_at")


def open_database(path: str | os.PathLike, *, create: bool = True) -> SQLiteDatabase:
    """Opens the tuning database at `path`, creating it (and its folder) when missing and `create`."""
    return SQLiteDatabase(path, create=create)


class SQLiteDatabase:
    """A `Database` in one SQLite file; safe to share between the threads of one process."""

    def __init__(self, path: str | os.PathLike, *, create: bool = True) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise DatabaseError(f"{self.path}: is a folder, not a tuning database")
        if not self.path.exists():
            if not create:
                raise DatabaseError(f"{self.path}: no such tuning database")
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise DatabaseError(f"{self.path}: cannot create the database: {error}") from None
        self._lock = threading.RLock()
        try:
            self._conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as error:
            raise DatabaseError(f"{self.path}: cannot open the database: {error}") from None
        try:
            self._setup(create)
        except BaseException:
            self._conn.close()
            raise

    def _setup(self, create: bool) -> None:
        with self._guard("open it"):
            tables = {row[0] for row in self._conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if "meta" not in tables:
                if tables or not create:
                    raise DatabaseError(f"{self.path}: an SQLite file, but not an autofuse tuning database")
                self._conn.executescript(
                    "BEGIN IMMEDIATE;" + _SCHEMA
                    + f"INSERT OR IGNORE INTO meta VALUES ('format', '{FORMAT}'), ('schema_version', '{SCHEMA_VERSION}');"
                    + "COMMIT;")
            meta = dict(self._conn.execute("SELECT key, value FROM meta").fetchall())
            if meta.get("format") != FORMAT:
                raise DatabaseError(f"{self.path}: an SQLite file, but not an autofuse tuning database")
            try:
                version = int(meta.get("schema_version", ""))
            except ValueError:
                raise DatabaseError(f"{self.path}: unreadable schema version {meta.get('schema_version')!r}") from None
            if version > SCHEMA_VERSION:
                raise DatabaseError(
                    f"{self.path}: written by a newer autofuse (schema version {version}; this one reads up to "
                    f"{SCHEMA_VERSION}): upgrade autofuse, or export it there and import the file here")
            if version < SCHEMA_VERSION:
                raise DatabaseError(
                    f"{self.path}: schema version {version} is older than any this autofuse can migrate "
                    f"(it reads {SCHEMA_VERSION})")
            mode = self._conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode != "wal":
                raise DatabaseError(f"{self.path}: the file system does not support SQLite's WAL mode (got {mode})")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute("PRAGMA foreign_keys=ON")

    @contextmanager
    def _guard(self, action: str) -> Iterator[None]:
        """Turns SQLite's errors into one-line DatabaseErrors that name the file."""
        try:
            yield
        except sqlite3.Error as error:
            if "not a database" in str(error):
                raise DatabaseError(f"{self.path}: not an autofuse tuning database (corrupt, or another kind of file)") from None
            raise DatabaseError(f"{self.path}: cannot {action}: {error}") from None

    @contextmanager
    def _transaction(self, action: str) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken at once (BEGIN IMMEDIATE) and committed on exit."""
        with self._lock, self._guard(action):
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _read(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self._lock, self._guard("read it"):
            return self._conn.execute(sql, params).fetchall()

    # writes

    def commit_workload(self, workload: Workload) -> None:
        with self._transaction("store a workload") as conn:
            self._put_workload(conn, workload)

    def commit_target(self, target: Target) -> None:
        with self._transaction("store a target") as conn:
            self._put_target(conn, target)

    def commit_record(self, record: Record) -> None:
        with self._transaction("store a record") as conn:
            self._put_record(conn, record)

    def commit_batch(self, targets: Iterable[Target], workloads: Iterable[Workload],
                     records: Iterable[Record]) -> int:
        with self._transaction("store a batch of records") as conn:
            for target in targets:
                self._put_target(conn, target)
            for workload in workloads:
                self._put_workload(conn, workload)
            return sum(self._put_record(conn, record) for record in records)

    def _put_target(self, conn: sqlite3.Connection, t: Target) -> None:
        conn.execute("INSERT OR IGNORE INTO targets VALUES (?, ?, ?, ?, ?, ?, ?)",
                     (t.key, t.kind, t.device, json.dumps(list(t.isa)), t.jax_version, t.jaxlib_version, t.xla_flags))

    def _put_workload(self, conn: sqlite3.Connection, w: Workload) -> None:
        """A new workload is inserted; a known one only gains model names (its key is its structure)."""
        row = conn.execute("SELECT models FROM workloads WHERE key = ?", (w.key,)).fetchone()
        if row is None:
            try:
                description = canonical_json(w.description)
            except (TypeError, ValueError) as error:
                raise DatabaseError(f"workload {w.key}: description is not JSON-able: {error}") from None
            conn.execute("INSERT INTO workloads VALUES (?, ?, ?)", (w.key, description, json.dumps(list(w.models))))
            return
        models = json.loads(row[0])
        merged = models + [m for m in dict.fromkeys(w.models) if m not in models]
        if merged != models:
            conn.execute("UPDATE workloads SET models = ? WHERE key = ?", (json.dumps(merged), w.key))

    def _put_record(self, conn: sqlite3.Connection, r: Record) -> bool:
        """Inserts a record unless the same (workload, target, candidate, created_at) is there; True if new."""
        expected = candidate_key(r.candidate)
        if r.candidate_key != expected:
            raise DatabaseError(f"record for workload {r.workload_key}: candidate_key {r.candidate_key} "
                                f"is not the key of its candidate ({expected})")
        if not r.created_at:
            r = replace(r, created_at=time.time())
        try:
            cursor = conn.execute(
                f"INSERT OR IGNORE INTO records ({_RECORD_COLUMNS}) VALUES ({', '.join('?' * 13)})",
                (r.workload_key, r.target_key, canonical_json(r.candidate), r.candidate_key, r.median_s, r.iqr_s,
                 r.repeats, r.compile_s, r.max_rel_diff, r.error_kind, r.error, r.source, r.created_at))
        except sqlite3.IntegrityError:
            raise DatabaseError(f"{self.path}: record for workload {r.workload_key} on target {r.target_key}: "
                                "commit its workload and its target first") from None
        return cursor.rowcount == 1

    # reads

    def records(self, workload_key: str | None = None, target_key: str | None = None) -> list[Record]:
        where, params = _where(workload_key=workload_key, target_key=target_key)
        rows = self._read(f"SELECT {_RECORD_COLUMNS} FROM records {where} ORDER BY id", params)
        return [_record(row) for row in rows]

    def best(self, workload_key: str, target_key: str) -> Record | None:
        rows = self._read(
            f"SELECT {_RECORD_COLUMNS} FROM records WHERE workload_key = ? AND target_key = ? "
            "AND error_kind IS NULL AND median_s IS NOT NULL ORDER BY median_s, id LIMIT 1",
            (workload_key, target_key))
        return _record(rows[0]) if rows else None

    def has(self, workload_key: str, target_key: str, candidate_key: str) -> bool:
        return bool(self._read(
            "SELECT 1 FROM records WHERE workload_key = ? AND target_key = ? AND candidate_key = ? LIMIT 1",
            (workload_key, target_key, candidate_key)))

    def workloads(self) -> list[Workload]:
        rows = self._read("SELECT key, description, models FROM workloads ORDER BY rowid")
        return [Workload(key, json.loads(description), tuple(json.loads(models))) for key, description, models in rows]

    def targets(self) -> list[Target]:
        rows = self._read("SELECT kind, device, isa, jax_version, jaxlib_version, xla_flags FROM targets ORDER BY rowid")
        return [Target(kind, device, tuple(json.loads(isa)), jv, jlv, flags) for kind, device, isa, jv, jlv, flags in rows]

    def stats(self) -> dict:
        with self._lock, self._guard("read it"):
            self._conn.execute("BEGIN")  # one snapshot for every count
            try:
                stats = _counts(self._conn)
            finally:
                self._conn.execute("COMMIT")
        size = sum(p.stat().st_size for p in (self.path, Path(f"{self.path}-wal")) if p.exists())
        return {"path": str(self.path), "schema_version": SCHEMA_VERSION, "size_bytes": size, **stats}

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> SQLiteDatabase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _counts(conn: sqlite3.Connection) -> dict:
    """Records by source and by failure kind, workloads, targets, models, best records per target."""
    by_source = dict(conn.execute("SELECT source, COUNT(*) FROM records GROUP BY source").fetchall())
    failures = dict(conn.execute("SELECT error_kind, COUNT(*) FROM records WHERE error_kind IS NOT NULL "
                                 "GROUP BY error_kind ORDER BY error_kind").fetchall())
    models = {m for (text,) in conn.execute("SELECT models FROM workloads") for m in json.loads(text)}
    per_target = [
        {"key": key, "kind": kind, "device": device, "jax_version": jv, "records": n, "best": best}
        for key, kind, device, jv, n, best in conn.execute(
            "SELECT t.key, t.kind, t.device, t.jax_version, COUNT(r.id), "
            "COUNT(DISTINCT CASE WHEN r.error_kind IS NULL THEN r.workload_key END) "
            "FROM targets t LEFT JOIN records r ON r.target_key = t.key GROUP BY t.key ORDER BY t.rowid")]
    return {
        "records": sum(by_source.values()),
        "measured": by_source.get("measured", 0),
        "imported": by_source.get("imported", 0),
        "failures": failures,
        "workloads": conn.execute("SELECT COUNT(*) FROM workloads").fetchone()[0],
        "targets": len(per_target),
        "models": sorted(models),
        "best": sum(t["best"] for t in per_target),
        "per_target": per_target,
    }


def _where(**equal: str | None) -> tuple[str, tuple]:
    names = [name for name, value in equal.items() if value is not None]
    if not names:
        return "", ()
    return "WHERE " + " AND ".join(f"{name} = ?" for name in names), tuple(equal[name] for name in names)


def _record(row: tuple[Any, ...]) -> Record:
    w, t, candidate, *rest = row
    return Record(w, t, json.loads(candidate), *rest)
