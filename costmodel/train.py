"""Training the GNN with optax: a pairwise ranking loss within tasks plus regression.

Only the order of candidates within a task matters to the search, so the main
loss is RankNet's logistic loss over pairs of candidates of the same task
(workload on target) whose measured latencies differ by more than a margin;
a smaller regression term on the normalised log latency keeps scores on one
scale across tasks. Batches hold whole groups (several candidates of a few
tasks), so every batch has pairs. AdamW with global-norm clipping and a warmup
+ cosine schedule for training from scratch; a constant small rate for the
incremental fine-tune (`FineTuner`) run after each round of measurements.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from autofuse.costmodel.base import Sample
from autofuse.costmodel.features import GraphArrays, GraphBatch, batch, featurize, pow2
from autofuse.costmodel.gnn import GNNConfig, GNNModel, Params, apply, init_params
from autofuse.errors import AutofuseError


class TrainingError(AutofuseError):
    """The data cannot train a model (too few samples, bad latencies)."""


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings (a batch holds `groups_per_batch` x `per_group` samples at most)."""

    steps: int = 3000
    groups_per_batch: int = 8
    per_group: int = 15
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    clip_norm: float = 1.0
    regression_weight: float = 0.1
    margin: float = 0.01  # log-latency differences below this count as ties (1%)
    seed: int = 0


class Dataset(NamedTuple):
    """Featurised samples with their log latencies and task-group ids."""

    graphs: list[GraphArrays]
    log_latency: np.ndarray
    group: np.ndarray  # int ids, one per task (workload on target)


def group_key(sample: Sample) -> str:
    """The ranking group of a sample: its workload on its target."""
    return f"{sample.workload_key}@{json.dumps(dict(sample.target), sort_keys=True)}"


def make_dataset(samples: Sequence[Sample], latencies_s: Sequence[float],
                 groups: Sequence[str] | None = None) -> Dataset:
    """Featurises samples; `groups` defaults to `group_key` of each sample."""
    latencies = np.asarray(latencies_s, np.float64)
    if len(latencies) != len(samples):
        raise TrainingError(f"{len(samples)} samples but {len(latencies)} latencies")
    if len(latencies) and not (np.all(np.isfinite(latencies)) and np.all(latencies > 0)):
        raise TrainingError("latencies must be positive, finite seconds")
    names = list(groups) if groups is not None else [group_key(s) for s in samples]
    ids = {name: i for i, name in enumerate(dict.fromkeys(names))}
    return Dataset([featurize(s) for s in samples], np.log(latencies), np.array([ids[n] for n in names], np.int32))


def loss_fn(params: Params, graphs: GraphBatch, y: jax.Array, group: jax.Array,
            margin: float, regression_weight: float) -> jax.Array:
    """RankNet loss over same-group pairs plus weighted squared error (y normalised, padding group -1)."""
    pred = apply(params, graphs)
    valid = graphs.graph_mask
    same = (group[:, None] == group[None, :]) & valid[:, None] & valid[None, :]
    slower = same & (y[:, None] - y[None, :] > margin)  # pair (i, j): i measured slower than j
    pair_loss = jax.nn.softplus(-(pred[:, None] - pred[None, :]))
    rank = jnp.sum(jnp.where(slower, pair_loss, 0.0)) / jnp.maximum(jnp.sum(slower), 1)
    regression = jnp.sum(jnp.where(valid, (pred - y) ** 2, 0.0)) / jnp.maximum(jnp.sum(valid), 1)
    return rank + regression_weight * regression


class _Step(NamedTuple):
    params: Params
    opt_state: optax.OptState


StepFn = Callable[[_Step, GraphBatch, jax.Array, jax.Array], tuple[_Step, jax.Array]]


def _make_step(optimizer: optax.GradientTransformation, margin: float, regression_weight: float) -> StepFn:
    @jax.jit
    def step(state: _Step, graphs: GraphBatch, y: jax.Array, group: jax.Array) -> tuple[_Step, jax.Array]:
        loss, grads = jax.value_and_grad(loss_fn)(state.params, graphs, y, group, margin, regression_weight)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        return _Step(optax.apply_updates(state.params, updates), opt_state), loss
    return step


def _floors(data: Dataset, config: TrainConfig) -> dict[str, int]:
    """Padded sizes that fit any batch drawn from `data`, so the jitted step compiles once."""
    capacity = config.groups_per_batch * config.per_group
    return {"min_graphs": pow2(capacity + 1),
            "min_nodes": pow2(capacity * max(len(g.nodes) for g in data.graphs) + 1),
            "min_edges": pow2(capacity * max(max(len(g.senders) for g in data.graphs), 1))}


def _sample_batch(data: Dataset, rng: np.random.Generator, config: TrainConfig, y_mean: float,
                  y_std: float, floors: dict[str, int]) -> tuple[GraphBatch, np.ndarray, np.ndarray]:
    """A batch of whole groups: `groups_per_batch` groups, up to `per_group` samples each."""
    by_group: dict[int, list[int]] = {}
    for i, g in enumerate(data.group.tolist()):
        by_group.setdefault(g, []).append(i)
    chosen_groups = rng.choice(list(by_group), size=min(config.groups_per_batch, len(by_group)), replace=False)
    picked: list[int] = []
    for g in chosen_groups:
        members = by_group[int(g)]
        picked += list(rng.choice(members, size=min(config.per_group, len(members)), replace=False))
    graphs = batch([data.graphs[i] for i in picked], **floors)
    size = len(graphs.graph_mask)
    y = np.zeros(size, np.float32)
    group = np.full(size, -1, np.int32)
    y[: len(picked)] = (data.log_latency[picked] - y_mean) / y_std
    group[: len(picked)] = data.group[picked]
    return graphs, y, group


def train(data: Dataset, *, config: TrainConfig = TrainConfig(), model_config: GNNConfig = GNNConfig(),
          log: Callable[[str], None] | None = None) -> GNNModel:
    """Trains a fresh GNN on `data` for `config.steps` steps."""
    if len(data.graphs) < 2:
        raise TrainingError(f"need at least 2 measured samples to train, got {len(data.graphs)}")
    y_mean = float(data.log_latency.mean())
    y_std = float(max(data.log_latency.std(), 1e-3))
    schedule = optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, max(config.steps // 20, 1),
                                                  config.steps, config.learning_rate * 0.02)
    optimizer = optax.chain(optax.clip_by_global_norm(config.clip_norm),
                            optax.adamw(schedule, weight_decay=config.weight_decay))
    params = init_params(model_config, jax.random.PRNGKey(config.seed))
    state = _Step(params, optimizer.init(params))
    step = _make_step(optimizer, config.margin / y_std, config.regression_weight)
    rng = np.random.default_rng(config.seed)
    start, recent = time.perf_counter(), []
    floors = _floors(data, config)
    for i in range(config.steps):
        graphs, y, group = _sample_batch(data, rng, config, y_mean, y_std, floors)
        state, loss = step(state, graphs, y, group)
        recent.append(float(loss))
        if log and (i + 1) % max(config.steps // 10, 1) == 0:
            log(f"step {i + 1}/{config.steps}: loss {np.mean(recent):.4f} ({time.perf_counter() - start:.0f} s)")
            recent = []
    meta = {"trained_on": {"samples": len(data.graphs), "groups": int(len(set(data.group.tolist())))},
            "train_config": {k: v for k, v in vars(config).items()}}
    return GNNModel(state.params, model_config, y_mean=y_mean, y_std=y_std, meta=meta)


class FineTuner:
    """Incremental training of a `GNNModel` on the measurements of a run, within a time bound.

    New measurements join a replay buffer (capped, newest kept); each update
    takes steps on batches drawn half from the new measurements and half from
    the buffer, at a constant small learning rate, until the time budget or
    `max_steps` is spent. The first update pays for jit compilation.
    """

    def __init__(self, model: GNNModel, *, config: TrainConfig | None = None, max_steps: int = 200,
                 buffer_size: int = 4096) -> None:
        self.model = model
        self.config = config or replace(TrainConfig(), learning_rate=5e-4)
        self.max_steps = max_steps
        self.buffer_size = buffer_size
        optimizer = optax.chain(optax.clip_by_global_norm(self.config.clip_norm),
                                optax.adamw(self.config.learning_rate, weight_decay=self.config.weight_decay))
        self._state = _Step(model.params, optimizer.init(model.params))
        self._step = _make_step(optimizer, self.config.margin / model.y_std, self.config.regression_weight)
        self._replay = Dataset([], np.zeros(0), np.zeros(0, np.int32))
        self._group_ids: dict[str, int] = {}
        self._rng = np.random.default_rng(self.config.seed)

    def update(self, samples: Sequence[Sample], latencies_s: Sequence[float], *, time_budget_s: float) -> int:
        """Fine-tunes on `samples`; returns the number of steps taken."""
        if not samples:
            return 0
        deadline = time.perf_counter() + time_budget_s
        names = [group_key(s) for s in samples]
        for name in names:
            self._group_ids.setdefault(name, len(self._group_ids))
        fresh = make_dataset(samples, latencies_s)._replace(
            group=np.array([self._group_ids[n] for n in names], np.int32))
        keep = -self.buffer_size
        replay = self._replay = Dataset((self._replay.graphs + fresh.graphs)[keep:],
                                        np.concatenate([self._replay.log_latency, fresh.log_latency])[keep:],
                                        np.concatenate([self._replay.group, fresh.group])[keep:])
        steps, floors = 0, _floors(replay, self.config)
        while steps < self.max_steps and time.perf_counter() < deadline:
            data = fresh if steps % 2 == 0 else replay
            graphs, y, group = _sample_batch(data, self._rng, self.config, self.model.y_mean, self.model.y_std,
                                             floors)
            self._state, _ = self._step(self._state, graphs, y, group)
            steps += 1
        self.model.params = self._state.params
        return steps
