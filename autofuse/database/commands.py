"""`autofuse db stats|export|import|merge`: the tuning database on the command line.

`autofuse/cli.py` only calls `add_db_parser`; pandas is imported when a command runs.
"""
from __future__ import annotations

import argparse
import json
from typing import Any


def add_db_parser(sub: Any) -> None:
    """Adds the `db` command group to the CLI's subparsers."""
    db = sub.add_parser("db", help="inspect, export, import and merge tuning databases")
    db.set_defaults(func=_usage(db))
    actions = db.add_subparsers(dest="db_command", metavar="ACTION")

    stats = actions.add_parser("stats", help="counts: records, failures by kind, workloads, targets, models")
    stats.add_argument("db", help="the tuning database (.db)")
    stats.add_argument("--json", action="store_true", help="print the counts as JSON")
    stats.set_defaults(func=cmd_stats)

    export = actions.add_parser("export", help="write every record to a Parquet or JSONL file")
    export.add_argument("db", help="the tuning database (.db)")
    export.add_argument("out", help="out.parquet, out.jsonl or out.jsonl.gz")
    export.set_defaults(func=cmd_export)

    imp = actions.add_parser("import", help="add the records of an exported file (created if missing)")
    imp.add_argument("db", help="the tuning database to add to (.db)")
    imp.add_argument("file", help="a .parquet, .jsonl or .jsonl.gz written by `autofuse db export`")
    imp.set_defaults(func=cmd_import)

    merge = actions.add_parser("merge", help="add every record of database B to database A")
    merge.add_argument("a", metavar="A", help="the database to add to (created if missing)")
    merge.add_argument("b", metavar="B", help="the database to read from")
    merge.set_defaults(func=cmd_merge)


def _usage(parser: argparse.ArgumentParser) -> Any:
    def run(args: argparse.Namespace) -> int:
        parser.print_help()
        return 1
    return run


def cmd_stats(args: argparse.Namespace) -> int:
    from autofuse.database.sqlite import open_database

    with open_database(args.db, create=False) as db:
        stats = db.stats()
    print(json.dumps(stats, indent=2) if args.json else format_stats(stats))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from autofuse.database.io import export_records
    from autofuse.database.sqlite import open_database

    with open_database(args.db, create=False) as db:
        n = export_records(db, args.out)
        workloads, targets = len(db.workloads()), len(db.targets())
    print(f"{args.out}: {_count(n, 'record')} exported ({_count(workloads, 'workload')}, {_count(targets, 'target')})")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from autofuse.database.io import import_records
    from autofuse.database.sqlite import open_database

    with open_database(args.db) as db:
        result = import_records(db, args.file)
    print(f"{args.db}: {_count(result.added, 'record')} imported from {args.file}, {result.duplicates} already there")
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from autofuse.database.io import merge_databases
    from autofuse.database.sqlite import open_database

    with open_database(args.b, create=False) as source, open_database(args.a) as dest:
        result = merge_databases(dest, source)
    print(f"{args.a}: {_count(result.added, 'record')} merged from {args.b}, {result.duplicates} already there")
    return 0


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def format_stats(stats: dict) -> str:
    """`db stats` for humans: one line per count, one per target."""
    failures = stats["failures"]
    lines = [
        f"{stats['path']}: schema version {stats['schema_version']}, {stats['size_bytes'] / 2**20:.1f} MiB",
        f"records    {stats['records']} ({stats['measured']} measured, {stats['imported']} imported)",
        f"failures   {sum(failures.values())}" + (": " + ", ".join(f"{k} {v}" for k, v in failures.items()) if failures else ""),
        f"workloads  {stats['workloads']}, {stats['best']} with a best record (per target)",
        f"models     {', '.join(stats['models']) or '-'}",
        f"targets    {stats['targets']}",
    ]
    for t in stats["per_target"]:
        lines.append(f"  {t['key']}  {t['kind']} {t['device']}, jax {t['jax_version']}: "
                     f"{t['records']} records, {t['best']} workloads with a best")
    return "\n".join(lines)
