"""The tuning database's data and interface: workloads, records, and what stores them.

A record is one measurement of one candidate (a dict of decisions) for one
workload (a subgraph, keyed structurally) on one target (a machine fingerprint,
see `target.py`). Records are never overwritten: a candidate measured twice
keeps both records, and failures are records too, never ranked as best.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Protocol

from autofuse.errors import AutofuseError

if TYPE_CHECKING:
    from autofuse.database.target import Target

ERROR_KINDS = ("compile", "runtime", "timeout", "crash", "mismatch")
SOURCES = ("measured", "imported")


class DatabaseError(AutofuseError):
    """A tuning database (or a file exported from one) cannot be opened, read or written."""


def canonical_json(value: Any) -> str:
    """The one JSON text of a JSON-able value: sorted keys, no spaces."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def stable_hash(value: Any) -> str:
    """A short (64-bit, hex) hash of a JSON-able value, the same on every machine and run."""
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()[:16]


def candidate_key(candidate: dict) -> str:
    """The key of a candidate: a stable hash of its canonical JSON."""
    try:
        return stable_hash(candidate)
    except (TypeError, ValueError) as error:
        raise DatabaseError(f"candidate {candidate!r} is not JSON-able: {error}") from None


@dataclass(frozen=True)
class Workload:
    """A task subgraph: its structural key, a JSON-able description, the models it was seen in."""

    key: str
    description: dict
    models: tuple[str, ...] = ()


@dataclass(frozen=True)
class Record:
    """One measurement of one candidate of one workload on one target.

    A success has `error_kind` None and a `median_s`; a failure names its kind
    ("compile", "runtime", "timeout", "crash", "mismatch") and may keep a time
    (a mismatch ran, but its outputs were wrong).
    """

    workload_key: str
    target_key: str
    candidate: dict
    candidate_key: str
    median_s: float | None
    iqr_s: float | None
    repeats: int
    compile_s: float | None
    max_rel_diff: float | None
    error_kind: str | None
    error: str | None
    source: str = "measured"
    created_at: float = 0.0

    def __post_init__(self) -> None:
        what = f"record of candidate {self.candidate_key} for workload {self.workload_key}"
        if self.error_kind is not None and self.error_kind not in ERROR_KINDS:
            raise DatabaseError(f"{what}: error_kind {self.error_kind!r} is not one of {', '.join(ERROR_KINDS)}")
        if self.error_kind is None and self.median_s is None:
            raise DatabaseError(f"{what}: a successful record needs median_s")
        if self.source not in SOURCES:
            raise DatabaseError(f"{what}: source {self.source!r} is not one of {', '.join(SOURCES)}")

    @property
    def ok(self) -> bool:
        """Whether the candidate compiled, ran and matched the reference."""
        return self.error_kind is None


class Database(Protocol):
    """What the tuner, the cost model and the CLI need from a store of tuning records.

    Writers commit the workload and the target before their records; each
    `commit_*` call is one transaction, durable when it returns.
    """

    def commit_workload(self, workload: Workload) -> None:
        """Stores a workload, or adds its model names to the stored one."""

    def commit_target(self, target: Target) -> None:
        """Stores a target fingerprint (a no-op when it is already there)."""

    def commit_record(self, record: Record) -> None:
        """Stores one record; `created_at` 0 becomes the current time."""

    def commit_batch(self, targets: Iterable[Target], workloads: Iterable[Workload],
                     records: Iterable[Record]) -> int:
        """Stores all of them in one transaction; returns how many records were new."""

    def records(self, workload_key: str | None = None, target_key: str | None = None) -> list[Record]:
        """Records in commit order, optionally of one workload and/or one target."""

    def best(self, workload_key: str, target_key: str) -> Record | None:
        """The successful record with the lowest median on this target, if any."""

    def has(self, workload_key: str, target_key: str, candidate_key: str) -> bool:
        """Whether this candidate was tried on this target, successfully or not."""

    def workloads(self) -> list[Workload]:
        """Every stored workload."""

    def targets(self) -> list[Target]:
        """Every stored target."""

    def stats(self) -> dict:
        """Counts for `autofuse db stats` (JSON-able)."""

    def close(self) -> None:
        """Releases the store; later calls fail."""
