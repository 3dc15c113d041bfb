"""Real data for accuracy checks: scikit-learn's digits and a small MLP trained on them.

`digits_split()` is a fixed, stratified train/test split of the 1,797 8x8 images
(pixels scaled to [0, 1]). `digits_model()` trains a 64-256-256-10 ReLU MLP on
the training split with optax (Adam, fixed seed, full-batch steps), exports it
to ONNX (Gemm nodes, symbolic batch) and caches it under
`$AUTOFUSE_CACHE/datasets`, so it is trained once per machine.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from autofuse.errors import AutofuseError

# Bump when the architecture or training changes, so cached models are retrained.
DIGITS_VERSION = 1
HIDDEN = (256, 256)
STEPS = 400
LEARNING_RATE = 3e-3
WEIGHT_DECAY = 1e-4
TEST_FRACTION = 0.3


class Split(NamedTuple):
    """Float32 images (n, 64) in [0, 1] and int64 labels, train and test."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def digits_split(seed: int = 0) -> Split:
    """The fixed train/test split of scikit-learn's digits."""
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        raise AutofuseError("the digits dataset needs scikit-learn: pip install scikit-learn") from None
    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    y = data.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=TEST_FRACTION, random_state=seed, stratify=y)
    return Split(x_train, y_train, x_test, y_test)


def train_mlp(split: Split, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """(W (in, out), b) per layer of a ReLU MLP trained with optax on the training split."""
    import jax
    import jax.numpy as jnp
    import optax

    sizes = (split.x_train.shape[1], *HIDDEN, 10)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(sizes) - 1)
    params = [(jax.random.normal(k, (i, o), jnp.float32) * jnp.sqrt(2.0 / i), jnp.zeros((o,), jnp.float32))
              for k, i, o in zip(keys, sizes[:-1], sizes[1:])]

    def logits(p, x):
        for w, b in p[:-1]:
            x = jax.nn.relu(x @ w + b)
        w, b = p[-1]
        return x @ w + b

    def loss(p, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(logits(p, x), y).mean()

    optimizer = optax.adamw(LEARNING_RATE, weight_decay=WEIGHT_DECAY)

    @jax.jit
    def step(p, state, x, y):
        grads = jax.grad(loss)(p, x, y)
        updates, state = optimizer.update(grads, state, p)
        return optax.apply_updates(p, updates), state

    state = optimizer.init(params)
    x, y = jnp.asarray(split.x_train), jnp.asarray(split.y_train)
    for _ in range(STEPS):
        params, state = step(params, state, x, y)
    return [(np.asarray(w, np.float32), np.asarray(b, np.float32)) for w, b in params]


def cache_dir() -> Path:
    """Where trained dataset models are kept."""
    root = os.environ.get("AUTOFUSE_CACHE") or Path.home() / ".cache" / "autofuse"
    return Path(root) / "datasets"


def digits_model(seed: int = 0) -> Path:
    """The trained digits MLP as ONNX (input 'x' (N, 64), output 'logits' (N, 10)), cached."""
    target = cache_dir() / f"digits-mlp-seed{seed}-v{DIGITS_VERSION}.onnx"
    if not target.is_file():
        from autofuse.frontend.export import mlp_onnx, write_model

        write_model(mlp_onnx(train_mlp(digits_split(seed), seed), name="digits_mlp"), target)
    return target

