"""How good a ranking is: rank correlation within tasks, top-k recall, and search efficiency.

Every metric is computed per task (ranking group) and then averaged, because
the search only ever compares candidates of the same task. Tasks whose
measured latencies are all equal carry no ranking information and are skipped
by the correlations.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np


def rankdata(x: Sequence[float]) -> np.ndarray:
    """Ranks from 1, ties sharing their average rank."""
    x = np.asarray(x, np.float64)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), np.float64)
    sorted_x = x[order]
    start = 0
    for end in range(1, len(x) + 1):
        if end == len(x) or sorted_x[end] != sorted_x[start]:
            ranks[order[start:end]] = (start + end + 1) / 2.0
            start = end
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho (Pearson correlation of average ranks); nan if either side is constant."""
    rx, ry = rankdata(x), rankdata(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = math.sqrt(float(rx @ rx) * float(ry @ ry))
    return float(rx @ ry) / denom if denom else math.nan


def kendall(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b (ties in either variable accounted for); nan if either side is constant."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    dx = np.sign(x[:, None] - x[None, :])
    dy = np.sign(y[:, None] - y[None, :])
    upper = np.triu_indices(len(x), 1)
    dx, dy = dx[upper], dy[upper]
    denom = math.sqrt(float(np.sum(dx != 0)) * float(np.sum(dy != 0)))
    return float(np.sum(dx * dy)) / denom if denom else math.nan


def _groups(groups: Sequence[str]) -> dict[str, np.ndarray]:
    out: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        out.setdefault(str(g), []).append(i)
    return {g: np.array(idx) for g, idx in out.items()}


def top_k_recall(scores: Sequence[float], latencies: Sequence[float], groups: Sequence[str], k: int) -> float:
    """Fraction of tasks (with at least two candidates) whose fastest measured candidate
    (any candidate tied with it) is among the `k` best-scored ones."""
    scores, latencies = np.asarray(scores), np.asarray(latencies)
    hits, total = 0, 0
    for idx in _groups(groups).values():
        if len(idx) < 2:
            continue
        best = set(idx[latencies[idx] <= latencies[idx].min()].tolist())
        chosen = idx[np.argsort(scores[idx], kind="mergesort")[:k]]
        hits += bool(best & set(chosen.tolist()))
        total += 1
    return hits / total if total else math.nan


@dataclass(frozen=True)
class RankingReport:
    """Within-task ranking quality of one model on one data split."""

    tasks: int
    samples: int
    spearman: float
    kendall: float
    top1: float
    top5: float

    def row(self) -> str:
        return (f"{self.tasks:5d} {self.samples:6d}  {self.spearman:7.3f} {self.kendall:7.3f}"
                f"  {self.top1:6.3f} {self.top5:6.3f}")


def ranking_report(scores: Sequence[float], latencies: Sequence[float], groups: Sequence[str]) -> RankingReport:
    """Mean Spearman and Kendall over tasks, and top-1 / top-5 recall."""
    scores, latencies = np.asarray(scores), np.asarray(latencies)
    rhos, taus = [], []
    for idx in _groups(groups).values():
        if len(idx) >= 2 and np.ptp(latencies[idx]) > 0:
            rho = spearman(scores[idx], latencies[idx])
            tau = kendall(scores[idx], latencies[idx])
            rhos.append(0.0 if math.isnan(rho) else rho)  # constant scores rank nothing
            taus.append(0.0 if math.isnan(tau) else tau)
    return RankingReport(len(rhos), len(latencies), float(np.mean(rhos)) if rhos else math.nan,
                         float(np.mean(taus)) if taus else math.nan,
                         top_k_recall(scores, latencies, groups, 1), top_k_recall(scores, latencies, groups, 5))


def best_so_far_curve(orders: Sequence[np.ndarray], latencies: Sequence[np.ndarray],
                      weights: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """A model's latency as the search measures more candidates.

    Task i has candidate latencies `latencies[i]`, a measurement order
    `orders[i]` (the ranking under test) and a weight (how often it runs per
    inference). The search measures in rounds, one candidate of every task
    not yet exhausted per round; after each round the model's latency is the
    weighted sum of each task's best measured latency. Returns the total
    measurements after each round and the model latency then.
    """
    best = [math.inf] * len(orders)
    counts, values = [], []
    for k in range(max(len(o) for o in orders)):
        for i, (order, lat) in enumerate(zip(orders, latencies)):
            if k < len(order):
                best[i] = min(best[i], float(lat[order[k]]))
        counts.append(sum(min(k + 1, len(o)) for o in orders))
        values.append(sum(w * b for w, b in zip(weights, best)))
    return np.array(counts), np.array(values)


def measurements_to_reach(counts: np.ndarray, values: np.ndarray, within: float = 0.05) -> int:
    """Measurements the search needs to come within `within` of the best latency it ever finds."""
    return int(counts[np.argmax(values <= values.min() * (1.0 + within))])
