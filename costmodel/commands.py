"""`autofuse dataset collect` and `autofuse costmodel train|eval` on the command line.

`autofuse/cli.py` only calls `add_parsers`; jax, optax and pandas are imported when a command runs.
"""
from __future__ import annotations

import argparse
import json
from typing import Any

from autofuse.datasets.records import DEFAULT_REWRITES, MEASURE_SECONDS, ROUNDS


def add_parsers(sub: Any) -> None:
    """Adds the `dataset` and `costmodel` command groups to the CLI's subparsers."""
    dataset = sub.add_parser("dataset", help="measure candidates across models into a tuning database")
    dataset.set_defaults(func=_usage(dataset))
    actions = dataset.add_subparsers(dest="dataset_command", metavar="ACTION")
    collect = actions.add_parser("collect", help="measure every task's candidates of the given models")
    collect.add_argument("models", nargs="+", help=".onnx files, zoo names (autofuse zoo lists them) or "
                                                   "synthetic models (synth:cnn-<seed>, synth:mlp-<seed>)")
    collect.add_argument("--db", required=True, metavar="PATH", help="tuning database, created if missing")
    collect.add_argument("--rewrites", default=",".join(DEFAULT_REWRITES), metavar="FAMILIES",
                         help="rewrite families applied before cutting tasks, as the tuner does "
                              f"(default {','.join(DEFAULT_REWRITES)}; '' for none)")
    collect.add_argument("--max-candidates", type=int, default=16, metavar="N",
                         help="candidates per task: the default and a seeded sample of the rest (default 16)")
    collect.add_argument("--measure-seconds", type=float, default=MEASURE_SECONDS, metavar="S",
                         help=f"minimum timing per distinct program (default {MEASURE_SECONDS})")
    collect.add_argument("--rounds", type=int, default=ROUNDS, metavar="N",
                         help=f"interleaved rounds the timing of a task's programs is spread over (default {ROUNDS})")
    collect.add_argument("--seed", type=int, default=0, help="seed for inputs and the sample (default 0)")
    collect.set_defaults(func=cmd_collect)

    costmodel = sub.add_parser("costmodel", help="train and evaluate the learned cost model")
    costmodel.set_defaults(func=_usage(costmodel))
    actions = costmodel.add_subparsers(dest="costmodel_command", metavar="ACTION")
    train = actions.add_parser("train", help="train the GNN on a database's records and save it")
    train.add_argument("--db", required=True, action="append", metavar="PATH", help="tuning database (repeatable)")
    train.add_argument("-o", "--output", required=True, metavar="MODEL.npz", help="where to save (.npz + .json)")
    _add_training_options(train)
    train.set_defaults(func=cmd_train)

    evaluate = actions.add_parser("eval", help="leave-one-model-out ranking metrics and search-efficiency curves")
    evaluate.add_argument("--db", required=True, action="append", metavar="PATH", help="tuning database (repeatable)")
    evaluate.add_argument("--models", metavar="M1,M2",
                          help="held-out models (default: every model in the data but synthetic ones)")
    evaluate.add_argument("--plot", metavar="CURVES.png", help="write the search-efficiency curves here")
    evaluate.add_argument("--json", action="store_true", help="print the results as JSON")
    _add_training_options(evaluate)
    evaluate.set_defaults(func=cmd_eval)


def _add_training_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=int, default=3000, help="optimisation steps (default 3000)")
    p.add_argument("--hidden", type=int, default=64, help="GNN width (default 64)")
    p.add_argument("--layers", type=int, default=3, help="message-passing layers (default 3)")
    p.add_argument("--seed", type=int, default=0, help="seed for initialisation and batches (default 0)")


def _usage(parser: argparse.ArgumentParser) -> Any:
    def run(args: argparse.Namespace) -> int:
        parser.print_help()
        return 1
    return run


def _configs(args: argparse.Namespace) -> tuple[Any, Any]:
    from autofuse.costmodel.gnn import GNNConfig
    from autofuse.costmodel.train import TrainConfig

    return TrainConfig(steps=args.steps, seed=args.seed), GNNConfig(hidden=args.hidden, layers=args.layers)


def _frame(paths: list[str]) -> Any:
    import pandas as pd

    from autofuse.database import open_database
    from autofuse.datasets.records import aggregate_repeats, training_frame

    frames = []
    for path in paths:
        with open_database(path, create=False) as db:
            frames.append(training_frame(db))
    return aggregate_repeats(pd.concat(frames, ignore_index=True))


def cmd_collect(args: argparse.Namespace) -> int:
    from autofuse.database import open_database
    from autofuse.datasets.records import collect

    with open_database(args.db) as db:
        rewrites = tuple(f.strip() for f in args.rewrites.split(",") if f.strip())
        added = collect(args.models, db, rewrites=rewrites, max_candidates=args.max_candidates,
                        min_seconds=args.measure_seconds, rounds=args.rounds, seed=args.seed)
    print(f"{added} records added to {args.db}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from autofuse.costmodel.metrics import ranking_report
    from autofuse.costmodel.train import make_dataset, train
    from autofuse.datasets.records import samples_of

    train_config, model_config = _configs(args)
    samples, latencies, groups = samples_of(_frame(args.db))
    model = train(make_dataset(samples, latencies, groups), config=train_config, model_config=model_config,
                  log=print)
    path = model.save(args.output)
    report = ranking_report(model.predict(samples), latencies, groups)
    print(f"trained on {len(samples)} records of {report.tasks} ranked tasks; on its own training data: "
          f"Spearman {report.spearman:.3f}, top-1 {report.top1:.3f}")
    print(f"saved {path} ({path.stat().st_size / 1024:.0f} KiB) and {path.with_suffix('.json').name}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from autofuse.costmodel.evaluate import evaluated_models, leave_one_model_out, summary_table
    from autofuse.costmodel.plot import plot_curves
    from autofuse.datasets.records import task_weights

    train_config, model_config = _configs(args)
    frame = _frame(args.db)
    models = [m.strip() for m in args.models.split(",")] if args.models else evaluated_models(frame)
    results = leave_one_model_out(frame, models=models, weights=task_weights(models), train_config=train_config,
                                  model_config=model_config, log=None if args.json else print)
    if args.json:
        print(json.dumps([{"model": f.model, "to_reach_5pct": f.to_reach,
                           "reports": {n: vars(r) for n, r in f.reports.items()}} for f in results], indent=2))
    else:
        print(summary_table(results))
    if args.plot:
        path = plot_curves(args.plot, [(f.model, f.curves) for f in results])
        if not args.json:
            print(f"curves written to {path}")
    return 0
