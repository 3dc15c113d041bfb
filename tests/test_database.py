"""The tuning database: records, best per target, crash safety, concurrent readers, export/import/merge, CLI."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import replace

import pytest

from autofuse.cli import main
from autofuse.database import (
    DatabaseError,
    Record,
    Target,
    Workload,
    candidate_key,
    current_target,
    open_database,
)
from autofuse.database.io import COLUMNS, export_records, import_records, merge_databases, to_frame
from autofuse.errors import AutofuseError

TARGET = Target("cpu", "Test CPU (2 cores)", ("avx2", "avx512f"), "0.1", "0.1", "XLA_FLAGS=--xla_cpu_use_onednn=true")
OTHER = replace(TARGET, device="Other CPU (64 cores)")
CONV = Workload("w-conv", {"nodes": [{"op": "Conv", "shape": [1, 64, 56, 56]}], "edges": []}, ("resnet50",))
GEMM = Workload("w-gemm", {"nodes": [{"op": "Gemm", "shape": [1, 768]}], "edges": []}, ("bert_base",))


def record(workload: Workload, target: Target, candidate: dict, median_s: float | None,
           error_kind: str | None = None, **fields) -> Record:
    return Record(workload.key, target.key, candidate, candidate_key(candidate), median_s,
                  None if median_s is None else median_s / 20, 0 if median_s is None else 10, 0.25,
                  None if error_kind else 1e-6, error_kind, f"{error_kind} failed" if error_kind else None, **fields)


@pytest.fixture
def db(tmp_path):
    database = open_database(tmp_path / "tuning.db")
    for target in (TARGET, OTHER):
        database.commit_target(target)
    for workload in (CONV, GEMM):
        database.commit_workload(workload)
    yield database
    database.close()


def fill(db) -> list[Record]:
    """A few records of both workloads on both targets, failures among them."""
    records = [
        record(CONV, TARGET, {"node:0/algorithm": "direct"}, 3e-3),
        record(CONV, TARGET, {"node:0/algorithm": "winograd4"}, 2e-3),
        record(CONV, TARGET, {"node:0/algorithm": "im2col"}, 1e-3, "mismatch"),
        record(CONV, TARGET, {"node:0/algorithm": "fft"}, None, "compile"),
        record(CONV, OTHER, {"node:0/algorithm": "direct"}, 0.5e-3),
        record(GEMM, TARGET, {"global/rewrites": "folding"}, None, "timeout"),
    ]
    for r in records:
        db.commit_record(r)
    return records


# --- records, best, has


def test_round_trip_through_a_reopened_file(db, tmp_path):
    written = fill(db)
    db.close()
    again = open_database(tmp_path / "tuning.db", create=False)
    stored = again.records()
    assert [replace(r, created_at=0.0) for r in stored] == written
    assert all(r.created_at > 1e9 for r in stored)
    assert again.targets() == [TARGET, OTHER] and again.targets()[0].key == TARGET.key
    assert again.workloads() == [CONV, GEMM]
    assert [r.candidate for r in again.records(CONV.key, OTHER.key)] == [{"node:0/algorithm": "direct"}]
    assert len(again.records(target_key=TARGET.key)) == 5
    again.close()


def test_best_ignores_failures_and_other_targets(db):
    fill(db)
    best = db.best(CONV.key, TARGET.key)
    assert best.candidate == {"node:0/algorithm": "winograd4"} and best.median_s == 2e-3
    assert db.best(CONV.key, OTHER.key).median_s == 0.5e-3
    assert db.best(GEMM.key, TARGET.key) is None  # only a timeout
    assert db.best(GEMM.key, OTHER.key) is None


def test_has_covers_failures_and_is_per_target(db):
    fill(db)
    assert db.has(CONV.key, TARGET.key, candidate_key({"node:0/algorithm": "fft"}))
    assert not db.has(CONV.key, OTHER.key, candidate_key({"node:0/algorithm": "fft"}))
    assert not db.has(CONV.key, TARGET.key, candidate_key({"node:0/algorithm": "unknown"}))


def test_candidate_key_is_canonical():
    assert candidate_key({"a": 1, "b": "x"}) == candidate_key({"b": "x", "a": 1})
    assert candidate_key({"a": 1}) != candidate_key({"a": 2})
    with pytest.raises(DatabaseError, match="JSON"):
        candidate_key({"a": object()})


def test_recommitting_a_workload_merges_its_models(db):
    db.commit_workload(replace(CONV, models=("densenet121", "resnet50")))
    assert {w.key: w.models for w in db.workloads()}[CONV.key] == ("resnet50", "densenet121")


def test_bad_records_are_refused_with_a_reason(db):
    with pytest.raises(DatabaseError, match="needs median_s"):
        record(CONV, TARGET, {"a": 1}, None)
    with pytest.raises(DatabaseError, match="error_kind 'oops'"):
        record(CONV, TARGET, {"a": 1}, None, "oops")
    with pytest.raises(DatabaseError, match="not the key of its candidate"):
        db.commit_record(replace(record(CONV, TARGET, {"a": 1}, 1.0), candidate_key="0123"))
    with pytest.raises(DatabaseError, match="commit its workload and its target first"):
        db.commit_record(record(replace(CONV, key="w-unknown"), TARGET, {"a": 1}, 1.0))
    assert db.records() == []


def test_stats_counts(db):
    fill(db)
    stats = db.stats()
    assert stats["records"] == 6 and stats["measured"] == 6 and stats["imported"] == 0
    assert stats["failures"] == {"compile": 1, "mismatch": 1, "timeout": 1}
    assert stats["workloads"] == 2 and stats["targets"] == 2
    assert stats["models"] == ["bert_base", "resnet50"]
    assert stats["best"] == 2  # conv on both targets; gemm has no success
    assert [t["records"] for t in stats["per_target"]] == [5, 1]


# --- crash safety and concurrency (separate processes)

WRITER = """
import sys
from autofuse.database import Record, Target, Workload, candidate_key, open_database
db = open_database(sys.argv[1])
target = Target("cpu", "test", (), "0", "0", "")
db.commit_target(target)
db.commit_workload(Workload("w", {}, ()))
i = 0
while True:
    candidate = {"i": i}
    db.commit_record(Record("w", target.key, candidate, candidate_key(candidate), 1.0 + i, 0.0, 1,
                            None, None, None, None))
    print(i, flush=True)
    i += 1
"""


def test_sigkill_of_the_writer_loses_no_committed_record(tmp_path):
    path = tmp_path / "killed.db"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    reported = []
    for line in proc.stdout:
        reported.append(int(line))
        if len(reported) == 150:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    reported += [int(line) for line in proc.stdout.read().split()]
    assert proc.returncode == -signal.SIGKILL
    with open_database(path, create=False) as db:
        stored = sorted(r.candidate["i"] for r in db.records())
    assert set(reported) <= set(stored)
    assert stored == list(range(len(stored))) and len(stored) <= len(reported) + 1  # at most one in flight
    assert sqlite3.connect(path).execute("PRAGMA integrity_check").fetchone()[0] == "ok"


READER = """
import json, sqlite3, sys, time
from autofuse.database import open_database
path, n = sys.argv[1], int(sys.argv[2])
db = open_database(path, create=False)
snapshot = sqlite3.connect(path, isolation_level=None)
snapshot.execute("BEGIN")
before = snapshot.execute("SELECT COUNT(*) FROM records").fetchone()[0]
print("ready", flush=True)
seen = []
deadline = time.monotonic() + 60
while time.monotonic() < deadline and (not seen or seen[-1] < n):
    count = len(db.records())
    if not seen or count != seen[-1]:
        seen.append(count)
after = snapshot.execute("SELECT COUNT(*) FROM records").fetchone()[0]
print(json.dumps({"seen": seen, "before": before, "after": after}))
"""


def test_a_reader_process_reads_while_the_writer_commits(db, tmp_path):
    n = 40
    reader = subprocess.Popen([sys.executable, "-c", READER, str(tmp_path / "tuning.db"), str(n)],
                              stdout=subprocess.PIPE, text=True)
    assert reader.stdout.readline().strip() == "ready"
    slowest = 0.0
    for i in range(n):
        t0 = time.perf_counter()
        db.commit_record(record(CONV, TARGET, {"i": i}, 1e-3))  # not blocked by the reader's open snapshot
        slowest = max(slowest, time.perf_counter() - t0)
        time.sleep(0.01)
    out, _ = reader.communicate(timeout=120)
    assert reader.returncode == 0
    result = json.loads(out)
    assert result["before"] == result["after"] == 0  # the reader's snapshot stayed consistent
    assert result["seen"] == sorted(result["seen"]) and result["seen"][-1] == n
    assert len(result["seen"]) >= 3  # it saw the table grow while the writer committed
    assert slowest < 5.0


# --- files that are not (this version's) tuning databases


def test_corrupt_file_names_the_path(tmp_path):
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(DatabaseError, match="junk.db: not an autofuse tuning database"):
        open_database(path)


def test_other_sqlite_file_is_refused(tmp_path):
    path = tmp_path / "other.db"
    sqlite3.connect(path).execute("CREATE TABLE t (x)")
    with pytest.raises(DatabaseError, match="other.db: an SQLite file, but not an autofuse tuning database"):
        open_database(path)


@pytest.mark.parametrize("version, message", [(99, "newer autofuse"), (0, "older")])
def test_other_schema_versions_are_refused(tmp_path, version, message):
    path = tmp_path / "versioned.db"
    open_database(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(version),))
    with pytest.raises(DatabaseError, match=f"versioned.db: .*{message}"):
        open_database(path)


def test_missing_or_unwritable_paths(tmp_path):
    with pytest.raises(DatabaseError, match="absent.db: no such tuning database"):
        open_database(tmp_path / "absent.db", create=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(DatabaseError, match="file/sub.db: cannot create"):
        open_database(tmp_path / "file" / "sub.db")
    with pytest.raises(DatabaseError, match="is a folder"):
        open_database(tmp_path)


# --- export, import, merge


@pytest.mark.parametrize("suffix", ["parquet", "jsonl"])
def test_export_import_round_trip(db, tmp_path, suffix):
    written = fill(db)
    out = tmp_path / f"records.{suffix}"
    assert export_records(db, out) == len(written)
    with open_database(tmp_path / "fresh.db") as fresh:
        assert import_records(fresh, out).added == len(written)
        assert [replace(r, source="measured") for r in fresh.records()] == db.records()
        assert {r.source for r in fresh.records()} == {"imported"}
        assert fresh.targets() == db.targets() and fresh.workloads() == db.workloads()
        assert fresh.best(CONV.key, TARGET.key) == replace(db.best(CONV.key, TARGET.key), source="imported")
        again = import_records(fresh, out)
        assert (again.added, again.duplicates) == (0, len(written))
    assert import_records(db, out).added == 0  # back into its origin: all duplicates


def test_import_refuses_bad_files(db, tmp_path):
    fill(db)
    with pytest.raises(DatabaseError, match="records.csv: expected a .parquet"):
        import_records(db, tmp_path / "records.csv")
    out = tmp_path / "records.jsonl"
    export_records(db, out)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    rows[2]["target_device"] = "Edited CPU"
    out.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(DatabaseError, match="records.jsonl: row 2: target_key .* is not the key"):
        import_records(db, out)
    out.write_text(json.dumps({"something": 1}) + "\n")
    with pytest.raises(DatabaseError, match="not an autofuse records export .*workload_key"):
        import_records(db, out)


def test_merge_dedupes_and_keeps_targets(db, tmp_path):
    fill(db)
    other = open_database(tmp_path / "other.db")
    merge_databases(other, db)  # other now holds copies of db's records...
    other.commit_record(record(GEMM, OTHER, {"global/rewrites": "layout"}, 4e-4))  # ...and one of its own
    other.commit_workload(replace(GEMM, models=("gpt2",)))
    result = merge_databases(db, other)
    assert (result.added, result.duplicates) == (1, 6)
    assert len(db.records()) == 7
    assert db.best(GEMM.key, OTHER.key).source == "imported"
    assert db.best(GEMM.key, TARGET.key) is None  # the other target's record is not applied here
    assert {w.key: w.models for w in db.workloads()}[GEMM.key] == ("bert_base", "gpt2")
    other.close()


def test_to_frame_has_one_row_per_record_with_target_and_workload(db):
    fill(db)
    frame = to_frame(db)
    assert list(frame.columns) == list(COLUMNS) and len(frame) == 6
    row = frame[frame.target_key == OTHER.key].iloc[0]
    assert row.target_device == OTHER.device and row.workload_models == ["resnet50"]
    assert row.workload_description == CONV.description and row.candidate == {"node:0/algorithm": "direct"}


# --- the target fingerprint


def test_current_target_fingerprints_this_machine(monkeypatch):
    target = current_target("cpu")
    assert target.kind == "cpu" and "cores" in target.device and target.jax_version
    assert current_target("cpu").key == target.key
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_use_onednn=true")
    flagged = current_target("cpu")
    assert flagged.xla_flags == "XLA_FLAGS=--xla_cpu_use_onednn=true measure=cold-weights"
    assert flagged.key != target.key and target.xla_flags.endswith("measure=cold-weights")
    with pytest.raises(AutofuseError, match="--target tpu"):
        current_target("tpu")


def test_gpu_target_without_a_gpu_is_a_clear_error():
    import jax

    if any(d.platform == "gpu" for d in jax.devices()):
        assert current_target("gpu").isa[0].startswith("sm_")
    else:
        with pytest.raises(AutofuseError, match="--target gpu: JAX sees no GPU"):
            current_target("gpu")


# --- the CLI


def test_cli_stats_export_import_merge(db, tmp_path, capsys):
    fill(db)
    path = str(tmp_path / "tuning.db")
    assert main(["db", "stats", path]) == 0
    out = capsys.readouterr().out
    assert "records    6 (6 measured, 0 imported)" in out and "compile 1, mismatch 1, timeout 1" in out
    assert main(["db", "stats", path, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["best"] == 2

    assert main(["db", "export", path, str(tmp_path / "out.parquet")]) == 0
    assert "6 records exported (2 workloads, 2 targets)" in capsys.readouterr().out
    assert main(["db", "import", str(tmp_path / "copy.db"), str(tmp_path / "out.parquet")]) == 0
    assert "6 records imported" in capsys.readouterr().out
    db.commit_record(record(GEMM, TARGET, {"global/rewrites": "layout"}, 1e-3))
    assert main(["db", "merge", str(tmp_path / "copy.db"), path]) == 0
    out = capsys.readouterr().out
    assert "1 record merged" in out and "6 already there" in out
    assert main(["db", "stats", str(tmp_path / "copy.db"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["imported"] == 7


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["db", "stats", str(tmp_path / "missing.db")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("autofuse: error:") and "missing.db: no such tuning database" in err
    assert err.count("\n") == 1
    assert not (tmp_path / "missing.db").exists()
    assert main(["db"]) == 1
