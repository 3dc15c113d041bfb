"""A direction-aware message-passing GNN in plain JAX, and the `GNNModel` cost model built on it.

The network (pure `init_params` / `apply` functions over a params dict):
node and edge features are embedded; each layer sends messages along edges in
both directions with separate weights (producer -> consumer and consumer ->
producer, as in the TPU learned performance model's GraphSAGE), sums them per
node (GIN-style sum aggregation keeps counts visible), and updates each node
with a residual, layer-normalised step. A readout takes the sum and the max of
the node states per graph, joins the graph's global features, and an MLP head
predicts the normalised log latency.

`GNNModel` holds the params with the normalisation of the targets; it saves as
an `.npz` of arrays plus a `.json` of metadata (versioned; no pickle).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from autofuse.costmodel.base import Sample
from autofuse.costmodel.features import (EDGE_FEATURES, FEATURE_VERSION, GLOBAL_FEATURES, NODE_FEATURES,
                                         GraphArrays, GraphBatch, batch, featurize)
from autofuse.errors import AutofuseError

FORMAT_VERSION = 1
Params = dict[str, dict[str, jax.Array]]


class CostModelFileError(AutofuseError):
    """A saved cost model is missing, unreadable or of another version."""


@dataclass(frozen=True)
class GNNConfig:
    """The network's shape."""

    hidden: int = 64
    layers: int = 3


def _dense(key: jax.Array, fan_in: int, fan_out: int) -> dict[str, jax.Array]:
    scale = jnp.sqrt(2.0 / fan_in)
    return {"w": jax.random.normal(key, (fan_in, fan_out), jnp.float32) * scale,
            "b": jnp.zeros((fan_out,), jnp.float32)}


def _apply_dense(p: dict[str, jax.Array], x: jax.Array) -> jax.Array:
    return x @ p["w"] + p["b"]


def _layer_norm(p: dict[str, jax.Array], x: jax.Array) -> jax.Array:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + 1e-5) * p["scale"] + p["bias"]


def init_params(config: GNNConfig, key: jax.Array) -> Params:
    """Random initial parameters for `config`."""
    h = config.hidden
    keys = iter(jax.random.split(key, 6 + 3 * config.layers))
    params: Params = {
        "node_embed": _dense(next(keys), NODE_FEATURES, h),
        "edge_embed": _dense(next(keys), EDGE_FEATURES, h),
    }
    for i in range(config.layers):
        params[f"layer{i}/forward"] = _dense(next(keys), 3 * h, h)
        params[f"layer{i}/backward"] = _dense(next(keys), 3 * h, h)
        params[f"layer{i}/self"] = _dense(next(keys), h, h)
        params[f"layer{i}/norm"] = {"scale": jnp.ones((h,), jnp.float32), "bias": jnp.zeros((h,), jnp.float32)}
    params["head0"] = _dense(next(keys), 2 * h + GLOBAL_FEATURES, h)
    params["head1"] = _dense(next(keys), h, h)
    params["head2"] = _dense(next(keys), h, 1)
    return params


def apply(params: Params, graphs: GraphBatch) -> jax.Array:
    """Normalised log-latency predictions, one per graph slot of the batch (padding included)."""
    layers = sum(1 for k in params if k.endswith("/self"))
    n, g = graphs.nodes.shape[0], graphs.globals.shape[0]
    h = jax.nn.relu(_apply_dense(params["node_embed"], graphs.nodes))
    e = jax.nn.relu(_apply_dense(params["edge_embed"], graphs.edges))
    for i in range(layers):
        src, dst = h[graphs.senders], h[graphs.receivers]
        forward = jax.nn.relu(_apply_dense(params[f"layer{i}/forward"], jnp.concatenate([src, dst, e], -1)))
        backward = jax.nn.relu(_apply_dense(params[f"layer{i}/backward"], jnp.concatenate([dst, src, e], -1)))
        incoming = jax.ops.segment_sum(forward, graphs.receivers, num_segments=n)
        outgoing = jax.ops.segment_sum(backward, graphs.senders, num_segments=n)
        update = _apply_dense(params[f"layer{i}/self"], h) + incoming + outgoing
        h = h + jax.nn.relu(_layer_norm(params[f"layer{i}/norm"], update))
    pooled_sum = jax.ops.segment_sum(h, graphs.node_graph, num_segments=g)
    pooled_max = jax.ops.segment_max(h, graphs.node_graph, num_segments=g)
    pooled_max = jnp.where(jnp.isfinite(pooled_max), pooled_max, 0.0)
    x = jnp.concatenate([pooled_sum, pooled_max, graphs.globals], -1)
    x = jax.nn.relu(_apply_dense(params["head0"], x))
    x = jax.nn.relu(_apply_dense(params["head1"], x))
    return _apply_dense(params["head2"], x)[:, 0]


_apply_jit = jax.jit(apply)


# Prediction pads to at least these sizes, so the tuner's pools (tens of candidates of a
# task of a dozen nodes) all share one compiled shape.
PREDICT_FLOORS = {"min_graphs": 256, "min_nodes": 1024, "min_edges": 1024}


def predict_graphs(params: Params, graphs: Sequence[GraphArrays], chunk: int = 255) -> np.ndarray:
    """Normalised predictions for featurised graphs, in padded chunks of at most `chunk`."""
    out = []
    for start in range(0, len(graphs), chunk):
        part = graphs[start:start + chunk]
        out.append(np.asarray(_apply_jit(params, batch(part, **PREDICT_FLOORS)))[: len(part)])
    return np.concatenate(out) if out else np.zeros(0)


def pretrained_path() -> Path:
    """The shipped pretrained model (its `.npz`; the `.json` lies beside it)."""
    return Path(__file__).resolve().parent / "pretrained" / "cpu_x86_64.npz"


class GNNModel:
    """The learned cost model: a GNN over task graphs, fine-tuned on each run's measurements."""

    def __init__(self, params: Params, config: GNNConfig, *, y_mean: float, y_std: float,
                 meta: dict[str, Any] | None = None) -> None:
        self.params = params
        self.config = config
        self.y_mean = float(y_mean)
        self.y_std = float(y_std)
        self.meta = dict(meta or {})
        self._tuner: Any = None  # the fine-tuning state, made on the first update

    def predict(self, samples: Sequence[Sample]) -> np.ndarray:
        """Predicted log latency (natural log of seconds), one per sample."""
        graphs = [featurize(s) for s in samples]
        return predict_graphs(self.params, graphs).astype(np.float64) * self.y_std + self.y_mean

    def update(self, samples: Sequence[Sample], latencies_s: Sequence[float], *,
               time_budget_s: float = 10.0) -> None:
        """Fine-tunes on new measurements (with a replay of earlier ones) for at most `time_budget_s`."""
        from autofuse.costmodel.train import FineTuner

        if self._tuner is None:
            self._tuner = FineTuner(self)
        self._tuner.update(samples, latencies_s, time_budget_s=time_budget_s)

    def save(self, path: str | Path) -> Path:
        """Writes `path` (.npz of parameters) and its `.json` metadata; returns the .npz path."""
        path = Path(path).with_suffix(".npz")
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {f"{layer}/{name}": np.asarray(value) for layer, group in self.params.items()
                  for name, value in group.items()}
        np.savez_compressed(path, **arrays)
        meta = {"format_version": FORMAT_VERSION, "feature_version": FEATURE_VERSION,
                "config": asdict(self.config), "y_mean": self.y_mean, "y_std": self.y_std, **self.meta}
        path.with_suffix(".json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "GNNModel":
        """Reads a model written by `save`; refuses other format or feature versions."""
        path = Path(path).with_suffix(".npz")
        try:
            meta = json.loads(path.with_suffix(".json").read_text())
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        except (OSError, ValueError) as error:
            raise CostModelFileError(f"cost model {path}: {error}") from None
        for field, expected in (("format_version", FORMAT_VERSION), ("feature_version", FEATURE_VERSION)):
            if meta.get(field) != expected:
                raise CostModelFileError(f"cost model {path}: {field} {meta.get(field)!r}, "
                                         f"this autofuse reads {expected}; retrain it")
        params: Params = {}
        for key, value in arrays.items():
            layer, _, name = key.rpartition("/")
            params.setdefault(layer, {})[name] = jnp.asarray(value)
        config = GNNConfig(**meta["config"])
        extra = {k: v for k, v in meta.items()
                 if k not in ("format_version", "feature_version", "config", "y_mean", "y_std")}
        expected_shapes = jax.tree_util.tree_map(jnp.shape, init_params(config, jax.random.PRNGKey(0)))
        if jax.tree_util.tree_map(jnp.shape, params) != expected_shapes:
            raise CostModelFileError(f"cost model {path}: parameters do not match config {meta['config']}")
        return cls(params, config, y_mean=meta["y_mean"], y_std=meta["y_std"], meta=extra)
