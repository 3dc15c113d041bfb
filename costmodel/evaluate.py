"""Leave-one-model-out evaluation: ranking quality and search efficiency on models the GNN never saw.

For each held-out model, a fresh GNN is trained on the records of every
workload that does not occur in it, then ranks the held-out model's tasks.
The analytic model and seeded random rankings are scored on the same tasks, and
the oracle (the measured order itself) bounds what any ranking could save.
Search efficiency replays the search offline on the measured candidates:
measuring in the order a model ranks them, how many measurements does it take
to come within 5% of the best model latency the candidates allow?
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from autofuse.costmodel.base import AnalyticModel, RandomModel
from autofuse.costmodel.gnn import GNNConfig
from autofuse.costmodel.metrics import RankingReport, best_so_far_curve, measurements_to_reach, ranking_report
from autofuse.costmodel.train import TrainConfig, TrainingError, make_dataset, train


@dataclass(frozen=True)
class FoldResult:
    """One held-out model: ranking reports and search-efficiency curves per ranker."""

    model: str
    reports: dict[str, RankingReport]
    curves: dict[str, tuple[np.ndarray, np.ndarray]]  # ranker -> (measurements, model latency s)
    to_reach: dict[str, float]  # ranker -> measurements to come within 5% of the best


def _curves(scores: dict[str, np.ndarray], latencies: np.ndarray, groups: np.ndarray, weights: dict[str, float],
            random_orders: int, within: float) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, float]]:
    tasks = list(dict.fromkeys(groups.tolist()))
    index = {g: np.flatnonzero(groups == g) for g in tasks}
    task_latencies = [latencies[index[g]] for g in tasks]
    task_weights = [weights[g] for g in tasks]
    curves, reach = {}, {}
    for name, s in scores.items():
        orders = [np.argsort(s[index[g]], kind="mergesort") for g in tasks]
        curves[name] = best_so_far_curve(orders, task_latencies, task_weights)
        reach[name] = float(measurements_to_reach(*curves[name], within))
    rng = np.random.default_rng(0)
    random_curves = [best_so_far_curve([rng.permutation(len(lat)) for lat in task_latencies], task_latencies,
                                       task_weights) for _ in range(random_orders)]
    counts = random_curves[0][0]
    curves["random"] = (counts, np.mean([values for _, values in random_curves], axis=0))
    reach["random"] = float(np.mean([measurements_to_reach(c, v, within) for c, v in random_curves]))
    return curves, reach


def leave_one_model_out(frame: Any, *, models: Sequence[str] | None = None,
                        weights: Mapping[str, Mapping[str, float]] | None = None,
                        train_config: TrainConfig = TrainConfig(), model_config: GNNConfig = GNNConfig(),
                        random_orders: int = 20, within: float = 0.05,
                        log: Callable[[str], None] | None = None) -> list[FoldResult]:
    """Trains and scores one fold per held-out model (default: `evaluated_models(frame)`).

    A fold trains on every record whose workload does not occur in the held-out
    model (synthetic models' records included), and tests on the model's records.
    `weights[model][workload_key]` is how often a task runs per inference of
    the model (`datasets.records.task_weights`); missing weights count as 1.
    """
    from autofuse.datasets.records import samples_of

    all_models = sorted({m for ms in frame["models"] for m in ms})
    results = []
    for held_out in models or evaluated_models(frame):
        in_model = frame["models"].map(lambda ms: held_out in ms)
        # A workload recorded for several models (or in several databases) leaves training with any of them.
        held_workloads = frame["workload_key"].isin(set(frame.loc[in_model, "workload_key"]))
        train_frame, test_frame = frame[~held_workloads], frame[in_model]
        if test_frame.empty:
            raise TrainingError(f"no records of model {held_out}; known: {', '.join(all_models)}")
        if log:
            log(f"{held_out}: training on {len(train_frame)} records, testing on {len(test_frame)}")
        model = train(make_dataset(*samples_of(train_frame)), config=train_config, model_config=model_config)
        samples, latencies, groups = samples_of(test_frame)
        scores = {"gnn": model.predict(samples), "analytic": AnalyticModel().predict(samples),
                  "oracle": np.log(latencies)}
        reports = {name: ranking_report(s, latencies, groups) for name, s in scores.items()}
        reports["random"] = ranking_report(RandomModel(0).predict(samples), latencies, groups)
        model_weights = (weights or {}).get(held_out, {})
        group_weights = {g: float(model_weights.get(k, 1.0)) for g, k in zip(groups, test_frame["workload_key"])}
        curves, reach = _curves(scores, latencies, groups, group_weights, random_orders, within)
        results.append(FoldResult(held_out, reports, curves, reach))
        if log:
            log("  " + "  ".join(f"{n}: rho {r.spearman:.3f} top1 {r.top1:.2f}" for n, r in reports.items()))
    return results


def evaluated_models(frame: Any) -> list[str]:
    """The models a frame's records come from, synthetic ones (training data only) left out."""
    from autofuse.datasets.synthetic import PREFIX

    return sorted({m for ms in frame["models"] for m in ms if not str(m).startswith(PREFIX)})


def summary_table(results: Sequence[FoldResult]) -> str:
    """A plain-text table: per held-out model and ranker, the ranking metrics and measurements to 5%;
    then their means over models and, weighting each model by its tasks, over tasks."""
    lines = ["model            ranker    tasks samples spearman kendall   top1   top5  to-5%"]
    for fold in results:
        for name, report in fold.reports.items():
            lines.append(f"{fold.model:16s} {name:8s} {report.row()}  {fold.to_reach.get(name, float('nan')):5.1f}")
    for name in ("gnn", "analytic", "random", "oracle"):
        rhos = [f.reports[name].spearman for f in results]
        taus = [f.reports[name].kendall for f in results]
        top1 = [f.reports[name].top1 for f in results]
        top5 = [f.reports[name].top5 for f in results]
        reach = [f.to_reach.get(name, np.nan) for f in results]
        lines.append(f"{'mean':16s} {name:8s} {'':12s}  {np.nanmean(rhos):7.3f} {np.nanmean(taus):7.3f}"
                     f"  {np.nanmean(top1):6.3f} {np.nanmean(top5):6.3f}  {np.nanmean(reach):5.1f}")
    for name in ("gnn", "analytic", "random", "oracle"):
        tasks = np.array([f.reports[name].tasks for f in results], np.float64)
        rhos = np.array([f.reports[name].spearman for f in results])
        taus = np.array([f.reports[name].kendall for f in results])
        rho, tau = (float(np.nansum(tasks * v) / max(tasks.sum(), 1)) for v in (rhos, taus))
        lines.append(f"{'over tasks':16s} {name:8s} {int(tasks.sum()):5d} {'':6s}  {rho:7.3f} {tau:7.3f}")
    return "\n".join(lines)
