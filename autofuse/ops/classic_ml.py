"""Classic ML and miscellany: NonMaxSuppression, random generators, string ops,
TfIdfVectorizer, the training optimizers (ai.onnx.preview.training) and a few
ai.onnx.ml ops.

String ops work on numpy object arrays, so they only run when their inputs are
concrete (`ctx.eager`); ops whose output shape depends on values are registered
with `dynamic_shape=True`, which makes the backend bind their inputs as
compile-time constants.
"""
from __future__ import annotations

import re
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from autofuse.dtypes import to_numpy_dtype
from autofuse.errors import ShapeError
from autofuse.ir import Const
from autofuse.ops.registry import MANY_TO_MANY, ONE_TO_MANY, ONE_TO_ONE, Ctx, op

TRAINING = "ai.onnx.preview.training"
ML = "ai.onnx.ml"


def _concrete(ctx: Ctx, value: Any, what: str) -> np.ndarray:
    """A numpy view of an input these numpy-only ops need at compile time."""
    try:
        return np.asarray(value)
    except Exception:
        raise ShapeError(f"{ctx.node.label}: {what} must be known at compile time") from None


# ----------------------------------------------------------------- NonMaxSuppression

def _corners(boxes: np.ndarray, center: bool) -> np.ndarray:
    """Boxes as (y1, x1, y2, x2) with y1 <= y2 and x1 <= x2."""
    if center:
        xc, yc, w, h = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
        return np.stack([yc - h / 2, xc - w / 2, yc + h / 2, xc + w / 2], axis=1)
    y1 = np.minimum(boxes[:, 0], boxes[:, 2])
    y2 = np.maximum(boxes[:, 0], boxes[:, 2])
    x1 = np.minimum(boxes[:, 1], boxes[:, 3])
    x2 = np.maximum(boxes[:, 1], boxes[:, 3])
    return np.stack([y1, x1, y2, x2], axis=1)


def _iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    top = np.maximum(box[0], others[:, 0])
    left = np.maximum(box[1], others[:, 1])
    bottom = np.minimum(box[2], others[:, 2])
    right = np.minimum(box[3], others[:, 3])
    inter = np.clip(bottom - top, 0, None) * np.clip(right - left, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    union = area + areas - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0)


def _nms_one(boxes: np.ndarray, scores: np.ndarray, limit: int, iou_max: float, min_score: float | None) -> list[int]:
    order = np.argsort(-scores, kind="stable")
    if min_score is not None:
        order = order[scores[order] > min_score]
    kept: list[int] = []
    for index in order:
        if len(kept) >= limit:
            break
        if kept and np.any(_iou(boxes[index], boxes[kept]) > iou_max):
            continue
        kept.append(int(index))
    return kept


@op("NonMaxSuppression", mapping=MANY_TO_MANY, dynamic_shape=True)
def non_max_suppression(ctx: Ctx, boxes, scores, max_output=None, iou_threshold=None, score_threshold=None):
    boxes = _concrete(ctx, boxes, "boxes")
    scores = _concrete(ctx, scores, "scores")
    limit = 0 if max_output is None else int(np.asarray(max_output).reshape(-1)[0])
    iou_max = 0.0 if iou_threshold is None else float(np.asarray(iou_threshold).reshape(-1)[0])
    min_score = None if score_threshold is None else float(np.asarray(score_threshold).reshape(-1)[0])
    center = bool(ctx.attr("center_point_box", 0))
    selected = []
    for b in range(boxes.shape[0]):
        corners = _corners(boxes[b].astype(np.float64), center)
        for c in range(scores.shape[1]):
            for index in _nms_one(corners, scores[b, c], limit, iou_max, min_score):
                selected.append((b, c, index))
    return np.asarray(selected, np.int64).reshape(-1, 3)


# ----------------------------------------------------------------- random generators

def _key(ctx: Ctx):
    seed = ctx.attr("seed", None)
    if seed is None:
        seed = np.random.randint(0, 2**31 - 1)
    return jax.random.key(int(seed))


def _random_dtype(ctx: Ctx, like=None) -> np.dtype:
    code = ctx.attr("dtype", None)
    if code is not None:
        return to_numpy_dtype(code)
    return np.dtype(like.dtype) if like is not None else np.dtype(np.float32)


def _normal(ctx: Ctx, shape: Sequence[int], dtype: np.dtype):
    sample = jax.random.normal(_key(ctx), tuple(shape), jnp.float32)
    mean, scale = float(ctx.attr("mean", 0.0)), float(ctx.attr("scale", 1.0))
    return (sample * scale + mean).astype(dtype)


def _uniform(ctx: Ctx, shape: Sequence[int], dtype: np.dtype):
    low, high = float(ctx.attr("low", 0.0)), float(ctx.attr("high", 1.0))
    return jax.random.uniform(_key(ctx), tuple(shape), jnp.float32, low, high).astype(dtype)


@op("RandomNormal", mapping=ONE_TO_ONE, nondeterministic=True)
def random_normal(ctx: Ctx):
    return _normal(ctx, ctx.attr("shape"), _random_dtype(ctx))


@op("RandomUniform", mapping=ONE_TO_ONE, nondeterministic=True)
def random_uniform(ctx: Ctx):
    return _uniform(ctx, ctx.attr("shape"), _random_dtype(ctx))


@op("RandomNormalLike", mapping=ONE_TO_ONE, nondeterministic=True)
def random_normal_like(ctx: Ctx, x):
    return _normal(ctx, np.shape(x), _random_dtype(ctx, x))


@op("RandomUniformLike", mapping=ONE_TO_ONE, nondeterministic=True)
def random_uniform_like(ctx: Ctx, x):
    return _uniform(ctx, np.shape(x), _random_dtype(ctx, x))


@op("Bernoulli", mapping=ONE_TO_ONE, nondeterministic=True)
def bernoulli(ctx: Ctx, p):
    draw = jax.random.uniform(_key(ctx), np.shape(p), jnp.float64)
    return (draw < jnp.asarray(p).astype(jnp.float64)).astype(_random_dtype(ctx, p))


# ----------------------------------------------------------------- strings

def _strings(ctx: Ctx, value: Any) -> np.ndarray:
    array = _concrete(ctx, value, "string input")
    return array.astype(object)


def _string_array(items: Sequence[str], shape: Sequence[int]) -> np.ndarray:
    out = np.empty(len(items), dtype=object)
    out[:] = list(items)
    return out.reshape(tuple(shape))


@op("StringConcat", mapping=ONE_TO_MANY, dynamic_shape=True)
def string_concat(ctx: Ctx, x, y):
    return np.asarray(np.add(_strings(ctx, x), _strings(ctx, y)), dtype=object)


@op("RegexFullMatch", mapping=ONE_TO_ONE, dynamic_shape=True)
def regex_full_match(ctx: Ctx, x):
    pattern = re.compile(ctx.attr("pattern"))
    x = _strings(ctx, x)
    flat = [pattern.fullmatch(str(s)) is not None for s in x.reshape(-1)]
    return np.asarray(flat, bool).reshape(x.shape)


@op("StringSplit", mapping=MANY_TO_MANY, dynamic_shape=True)
def string_split(ctx: Ctx, x):
    x = _strings(ctx, x)
    delimiter = ctx.attr("delimiter", None) or None
    maxsplit = ctx.attr("maxsplit", None)
    maxsplit = -1 if maxsplit is None else int(maxsplit)
    parts = [str(s).split(delimiter, maxsplit) for s in x.reshape(-1)]
    width = max((len(p) for p in parts), default=0)
    padded = [p + [""] * (width - len(p)) for p in parts]
    flat = [item for p in padded for item in p]
    counts = np.asarray([len(p) for p in parts], np.int64).reshape(x.shape)
    return _string_array(flat, x.shape + (width,)), counts


@op("StringNormalizer", mapping=MANY_TO_MANY, dynamic_shape=True)
def string_normalizer(ctx: Ctx, x):
    x = _strings(ctx, x)
    action = ctx.attr("case_change_action", "NONE")
    sensitive = bool(ctx.attr("is_case_sensitive", 0))
    stops = set(ctx.attr("stopwords", None) or ())
    if not sensitive:
        stops = {w.lower() for w in stops}
    words = [str(w) for w in x.reshape(-1)]
    kept = [w for w in words if (w if sensitive else w.lower()) not in stops]
    if action == "LOWER":
        kept = [w.lower() for w in kept]
    elif action == "UPPER":
        kept = [w.upper() for w in kept]
    if not kept:
        kept = [""]
    shape = (1, len(kept)) if x.ndim == 2 else (len(kept),)
    return _string_array(kept, shape)


# ----------------------------------------------------------------- TfIdfVectorizer

def _pool_as_ids(ctx: Ctx, x, pool: Sequence[Any]):
    """String inputs and pool become integer ids (0 = not in the pool)."""
    vocab = {s: i + 1 for i, s in enumerate(dict.fromkeys(pool))}
    strings = _strings(ctx, x)
    ids = np.vectorize(lambda s: vocab.get(s, 0), otypes=[np.int64])(strings) if strings.size else \
        np.zeros(strings.shape, np.int64)
    return jnp.asarray(ids), [vocab[s] for s in pool]


@op("TfIdfVectorizer", mapping=MANY_TO_MANY)
def tfidf_vectorizer(ctx: Ctx, x):
    min_n, max_n = int(ctx.attr("min_gram_length")), int(ctx.attr("max_gram_length"))
    max_skip = int(ctx.attr("max_skip_count"))
    counts_start = list(ctx.attr("ngram_counts"))
    indexes = list(ctx.attr("ngram_indexes"))
    pool = ctx.attr("pool_strings", None)
    if pool is not None:
        x, pool = _pool_as_ids(ctx, x, pool)
    else:
        pool = list(ctx.attr("pool_int64s"))
    x = jnp.asarray(x).astype(jnp.int64)
    rows = x if x.ndim == 2 else x[None, :]
    length = rows.shape[1]
    width = max(indexes) + 1 if indexes else 0
    totals = jnp.zeros((rows.shape[0], width), jnp.float32)
    bounds = counts_start + [len(pool)]
    first_gram = 0  # number of n-grams of smaller sizes before this size in the pool
    for n in range(1, len(counts_start) + 1):
        start, stop = bounds[n - 1], bounds[n]
        grams = np.asarray(pool[start:stop], np.int64).reshape(-1, n)
        first_gram += len(grams)
        if n < min_n or n > max_n:
            continue
        skips = [0] if n == 1 else range(max_skip + 1)
        for g, gram in enumerate(grams):
            count = jnp.zeros((rows.shape[0],), jnp.float32)
            for skip in skips:
                span = (n - 1) * (skip + 1) + 1
                if span > length:
                    continue
                hit = jnp.ones((rows.shape[0], length - span + 1), bool)
                for k in range(n):
                    offset = k * (skip + 1)
                    hit = hit & (rows[:, offset:offset + length - span + 1] == gram[k])
                count = count + hit.sum(axis=1).astype(jnp.float32)
            column = indexes[first_gram - len(grams) + g]
            totals = totals.at[:, column].add(count)
    mode = ctx.attr("mode", "TF")
    weights = ctx.attr("weights", None)
    weights = jnp.ones((width,), jnp.float32) if not weights else jnp.asarray(_scatter_weights(weights, indexes, width))
    if mode == "IDF":
        totals = jnp.minimum(totals, 1) * weights
    elif mode == "TFIDF":
        totals = totals * weights
    return totals if x.ndim == 2 else totals[0]


def _scatter_weights(weights: Sequence[float], indexes: Sequence[int], width: int) -> np.ndarray:
    """Per-output-column weights (weights are given in pool order)."""
    out = np.zeros(width, np.float32)
    for w, i in zip(weights, indexes):
        out[i] = w
    return out


# ----------------------------------------------------------------- training optimizers

def _split_groups(values: Sequence[Any], groups: int) -> list[list[Any]]:
    n = len(values) // groups
    return [list(values[k * n:(k + 1) * n]) for k in range(groups)]


@op("Adagrad", mapping=ONE_TO_MANY, domain=TRAINING)
def adagrad(ctx: Ctx, r, t, *tensors):
    xs, gs, hs = _split_groups(tensors, 3)
    decay = float(ctx.attr("decay_factor", 0.0))
    eps = float(ctx.attr("epsilon", 1e-6))
    norm = float(ctx.attr("norm_coefficient", 0.0))
    rate = jnp.asarray(r) / (1 + jnp.asarray(t) * decay)
    new_x, new_h = [], []
    for x, g, h in zip(xs, gs, hs):
        g_reg = norm * x + g
        h_new = h + g_reg * g_reg
        new_x.append((x - rate * g_reg / (jnp.sqrt(h_new) + eps)).astype(x.dtype))
        new_h.append(h_new.astype(h.dtype))
    return tuple(new_x + new_h)


@op("Momentum", mapping=ONE_TO_MANY, domain=TRAINING)
def momentum(ctx: Ctx, r, t, *tensors):
    xs, gs, vs = _split_groups(tensors, 3)
    alpha, beta = float(ctx.attr("alpha")), float(ctx.attr("beta"))
    norm = float(ctx.attr("norm_coefficient"))
    nesterov = ctx.attr("mode") == "nesterov"
    beta_now = jnp.where(jnp.asarray(t) > 0, beta, 1.0)
    new_x, new_v = [], []
    for x, g, v in zip(xs, gs, vs):
        g_reg = norm * x + g
        v_new = alpha * v + beta_now * g_reg
        step = g_reg + alpha * v_new if nesterov else v_new
        new_x.append((x - r * step).astype(x.dtype))
        new_v.append(v_new.astype(v.dtype))
    return tuple(new_x + new_v)


@op("Adam", mapping=ONE_TO_MANY, domain=TRAINING)
def adam(ctx: Ctx, r, t, *tensors):
    xs, gs, vs, hs = _split_groups(tensors, 4)
    alpha, beta = float(ctx.attr("alpha", 0.9)), float(ctx.attr("beta", 0.999))
    eps = float(ctx.attr("epsilon", 1e-6))
    norm, norm_post = float(ctx.attr("norm_coefficient", 0.0)), float(ctx.attr("norm_coefficient_post", 0.0))
    t = jnp.asarray(t).astype(jnp.float64)
    corrected = jnp.asarray(r) * jnp.sqrt(1 - beta ** t) / (1 - alpha ** t)
    rate = jnp.where(t > 0, corrected, jnp.asarray(r))
    new_x, new_v, new_h = [], [], []
    for x, g, v, h in zip(xs, gs, vs, hs):
        g_reg = norm * x + g
        v_new = alpha * v + (1 - alpha) * g_reg
        h_new = beta * h + (1 - beta) * g_reg * g_reg
        x_new = (1 - norm_post) * (x - rate * (v_new / (jnp.sqrt(h_new) + eps)))
        new_x.append(x_new.astype(x.dtype))
        new_v.append(v_new.astype(v.dtype))
        new_h.append(h_new.astype(h.dtype))
    return tuple(new_x + new_v + new_h)


# ----------------------------------------------------------------- ai.onnx.ml

@op("Binarizer", mapping=ONE_TO_ONE, domain=ML)
def binarizer(ctx: Ctx, x):
    threshold = jnp.asarray(ctx.attr("threshold", 0.0), x.dtype)
    return jnp.where(x > threshold, jnp.ones((), x.dtype), jnp.zeros((), x.dtype))


@op("ArrayFeatureExtractor", mapping=ONE_TO_MANY, domain=ML)
def array_feature_extractor(ctx: Ctx, x, indices):
    x = jnp.asarray(x)
    picked = jnp.take(x, jnp.asarray(indices).reshape(-1), axis=-1)
    return picked[None, :] if x.ndim == 1 else picked


def _attr_array(ctx: Ctx, names: Sequence[str]) -> np.ndarray | None:
    for name in names:
        value = ctx.attr(name, None)
        if value is None:
            continue
        if isinstance(value, Const):
            return value.array
        return np.asarray(value, dtype=object if isinstance(value[0], str) else None) if value else None
    return None


@op("LabelEncoder", mapping=ONE_TO_ONE, domain=ML, dynamic_shape=True)
def label_encoder(ctx: Ctx, x):
    keys = _attr_array(ctx, ("keys_tensor", "keys_strings", "keys_int64s", "keys_floats"))
    values = _attr_array(ctx, ("values_tensor", "values_strings", "values_int64s", "values_floats"))
    default = _attr_array(ctx, ("default_tensor",))
    out_dtype = ctx.out_dtype(0) or values.dtype
    if default is None:
        if values.dtype == object:
            default = np.asarray(ctx.attr("default_string", "_Unused"), object)
        elif values.dtype.kind == "f":
            default = np.asarray(ctx.attr("default_float", -0.0))
        else:
            default = np.asarray(ctx.attr("default_int64", -1))
    table = dict(zip(keys.reshape(-1).tolist(), values.reshape(-1).tolist()))
    fallback = default.reshape(-1)[0].item() if hasattr(default.reshape(-1)[0], "item") else default.reshape(-1)[0]
    x = _concrete(ctx, x, "LabelEncoder input")
    flat = [table.get(v, fallback) for v in x.reshape(-1).tolist()]
    if np.dtype(out_dtype) == object:
        return _string_array(flat, x.shape)
    return np.asarray(flat, dtype=out_dtype).reshape(x.shape)


def _tree_condition(mode, value, split, member):
    """Each node's branch test (ONNX TreeEnsemble modes 0..6) for one feature value."""
    return jnp.select(
        [mode == 0, mode == 1, mode == 2, mode == 3, mode == 4, mode == 5],
        [value <= split, value < split, value >= split, value > split, value == split, value != split],
        jnp.any(value[..., None] == member, axis=-1),
    )


def _post_transform(scores, kind: int):
    if kind == 1:
        return jax.nn.softmax(scores, axis=-1)
    if kind == 2:
        return jax.nn.sigmoid(scores)
    if kind == 3:  # softmax that leaves all-zero rows at zero
        e = jnp.where(scores == 0, 0, jnp.exp(scores - jnp.max(scores, axis=-1, keepdims=True)))
        total = jnp.sum(e, axis=-1, keepdims=True)
        return jnp.where(total == 0, 0, e / jnp.where(total == 0, 1, total))
    if kind == 4:
        return jnp.sqrt(2.0).astype(scores.dtype) * jax.scipy.special.erfinv(2 * scores - 1)
    return scores


def _membership_table(ctx: Ctx, modes: np.ndarray) -> np.ndarray:
    """Per node, its BRANCH_MEMBER values padded with NaN (NaN separates sets)."""
    values = _attr_array(ctx, ("membership_values",))
    sets: list[list[float]] = []
    if values is not None:
        current: list[float] = []
        for v in values.reshape(-1).tolist():
            if np.isnan(v):
                sets.append(current)
                current = []
            else:
                current.append(v)
        if current:
            sets.append(current)
    table = np.full((len(modes), max([len(s) for s in sets] + [1])), np.nan)
    member_nodes = [i for i, m in enumerate(modes) if m == 6]
    for node, values_set in zip(member_nodes, sets):
        table[node, :len(values_set)] = values_set
    return table


@op("TreeEnsemble", mapping=MANY_TO_MANY, domain=ML, since=5)
def tree_ensemble(ctx: Ctx, x):
    ints = lambda name: jnp.asarray(np.asarray(ctx.attr(name, None) or (), np.int64))  # noqa: E731
    x = jnp.asarray(x)
    modes_np = _attr_array(ctx, ("nodes_modes",)).reshape(-1).astype(np.int64)
    modes = jnp.asarray(modes_np)
    splits = jnp.asarray(_attr_array(ctx, ("nodes_splits",)).reshape(-1)).astype(x.dtype)
    member = jnp.asarray(_membership_table(ctx, modes_np)).astype(x.dtype)
    features, true_ids, false_ids = ints("nodes_featureids"), ints("nodes_truenodeids"), ints("nodes_falsenodeids")
    true_leaf, false_leaf = ints("nodes_trueleafs").astype(bool), ints("nodes_falseleafs").astype(bool)
    missing = ints("nodes_missing_value_tracks_true")
    missing = missing.astype(bool) if missing.size else jnp.zeros(modes.shape, bool)
    roots = np.asarray(ctx.attr("tree_roots"), np.int64)
    targets = ints("leaf_targetids")
    weights = jnp.asarray(_attr_array(ctx, ("leaf_weights",)).reshape(-1)).astype(x.dtype)
    n_targets = int(ctx.attr("n_targets"))
    samples = x.shape[0]
    index = jnp.broadcast_to(jnp.asarray(roots)[None, :], (samples, len(roots)))
    at_leaf = jnp.zeros(index.shape, bool)

    def step(_, carry):
        index, at_leaf = carry
        value = jnp.take_along_axis(x, features[index], axis=1)
        go_true = _tree_condition(modes[index], value, splits[index], member[index])
        go_true = jnp.where(jnp.isnan(value), missing[index], go_true)
        new_index = jnp.where(go_true, true_ids[index], false_ids[index])
        new_leaf = jnp.where(go_true, true_leaf[index], false_leaf[index])
        return jnp.where(at_leaf, index, new_index), at_leaf | new_leaf

    index, _ = jax.lax.fori_loop(0, len(modes_np), step, (index, at_leaf))
    contrib = weights[index]  # [N, trees]
    onehot = targets[index][..., None] == jnp.arange(n_targets)  # [N, trees, T]
    aggregate = int(ctx.attr("aggregate_function", 1))
    if aggregate in (2, 3):
        fill = jnp.asarray(np.inf if aggregate == 2 else -np.inf, x.dtype)
        spread = jnp.where(onehot, contrib[..., None], fill)
        scores = spread.min(axis=1) if aggregate == 2 else spread.max(axis=1)
        scores = jnp.where(jnp.isinf(scores), 0, scores)
    else:
        scores = jnp.sum(jnp.where(onehot, contrib[..., None], 0), axis=1)
        if aggregate == 0:
            scores = scores / len(roots)
    return _post_transform(scores, int(ctx.attr("post_transform", 0))).astype(x.dtype)
