"""Recurrent layers: RNN, GRU and LSTM as one `jax.lax.scan` per direction.

The input projection X·Wᵀ + Wb is computed for every time step at once; the scan
carries only the recurrent part. `sequence_lens` is honoured with a mask: past a
batch entry's length its state is held and its Y rows are zero, and the reverse
direction reverses only the valid prefix of each sequence.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from autofuse.ops.registry import MANY_TO_MANY, Ctx, op

Activation = Callable[[Any], Any]

# name -> (function of (x, alpha, beta), default alpha, default beta, how many params it takes)
_ACTIVATIONS: dict[str, tuple[Callable[..., Any], float, float, int]] = {
    "relu": (lambda x, a, b: jnp.maximum(x, 0), 0.0, 0.0, 0),
    "tanh": (lambda x, a, b: jnp.tanh(x), 0.0, 0.0, 0),
    "sigmoid": (lambda x, a, b: jax.nn.sigmoid(x), 0.0, 0.0, 0),
    "softsign": (lambda x, a, b: x / (1 + jnp.abs(x)), 0.0, 0.0, 0),
    "softplus": (lambda x, a, b: jnp.logaddexp(x, 0), 0.0, 0.0, 0),
    "leakyrelu": (lambda x, a, b: jnp.where(x >= 0, x, a * x), 0.01, 0.0, 1),
    "thresholdedrelu": (lambda x, a, b: jnp.where(x > a, x, 0), 1.0, 0.0, 1),
    "elu": (lambda x, a, b: jnp.where(x >= 0, x, a * (jnp.exp(x) - 1)), 1.0, 0.0, 1),
    "affine": (lambda x, a, b: a * x + b, 1.0, 0.0, 2),
    "scaledtanh": (lambda x, a, b: a * jnp.tanh(b * x), 1.0, 1.0, 2),
    "hardsigmoid": (lambda x, a, b: jnp.clip(a * x + b, 0, 1), 0.2, 0.5, 2),
}


def _activations(ctx: Ctx, defaults: Sequence[str], directions: int, dtype) -> list[list[Activation]]:
    """The activation functions of each direction; alpha/beta are consumed in order."""
    names = list(ctx.attr("activations", None) or ())
    if not names:
        names = list(defaults) * directions
    elif len(names) == len(defaults) and directions == 2:
        names = names * 2
    alphas = list(ctx.attr("activation_alpha", None) or ())
    betas = list(ctx.attr("activation_beta", None) or ())
    funcs: list[Activation] = []
    for name in names:
        fn, alpha, beta, n_params = _ACTIVATIONS[name.lower()]
        if n_params >= 1 and alphas:
            alpha = alphas.pop(0)
        if n_params >= 2 and betas:
            beta = betas.pop(0)
        a, b = np.asarray(alpha, dtype), np.asarray(beta, dtype)
        funcs.append(lambda x, fn=fn, a=a, b=b: fn(x, a, b))
    per = len(defaults)
    return [funcs[d * per:(d + 1) * per] for d in range(directions)]


def _clipper(ctx: Ctx, dtype) -> Activation:
    clip = ctx.attr("clip", None)
    if clip is None:
        return lambda x: x
    limit = np.asarray(clip, dtype)
    return lambda x: jnp.clip(x, -limit, limit)


def _scan_direction(step: Callable, xw, init: tuple, lens, reverse: bool):
    """Runs `step` over time (axis 0 of xw) with a per-batch length mask."""
    steps, batch = xw.shape[0], xw.shape[1]
    t = jnp.arange(steps)[:, None]
    lens = jnp.full((batch,), steps, jnp.int64) if lens is None else jnp.asarray(lens).astype(jnp.int64)
    mask = t < lens[None, :]
    order = jnp.where(mask, lens[None, :] - 1 - t, t) if reverse else None
    if reverse:
        xw = jnp.take_along_axis(xw, order[:, :, None], axis=0)

    def body(carry, inputs):
        x_t, m_t = inputs
        new = step(x_t, carry)
        keep = m_t[:, None]
        new = tuple(jnp.where(keep, n, o) for n, o in zip(new, carry))
        return new, jnp.where(keep, new[0], jnp.zeros((), new[0].dtype))

    final, ys = jax.lax.scan(body, init, (xw, mask))
    if reverse:
        ys = jnp.take_along_axis(ys, order[:, :, None], axis=0)
    return ys, final


def _recurrent(ctx: Ctx, x, w, r, b, lens, initial: Sequence[Any], gates: int, make_step: Callable):
    """Shared driver: layouts, directions, input projection; returns (Y, finals)."""
    layout = int(ctx.attr("layout", 0))
    x = jnp.asarray(x)
    if layout:
        x = jnp.swapaxes(x, 0, 1)
        initial = [None if s is None else jnp.swapaxes(jnp.asarray(s), 0, 1) for s in initial]
    dtype = x.dtype
    batch = x.shape[1]
    hidden = int(ctx.attr("hidden_size", None) or r.shape[-1])
    direction = ctx.attr("direction", "forward")
    n_dir = 2 if direction == "bidirectional" else 1
    ys, finals = [], []
    for d in range(n_dir):
        w_d, r_d = jnp.asarray(w)[d], jnp.asarray(r)[d]
        b_d = jnp.zeros((2 * gates * hidden,), dtype) if b is None else jnp.asarray(b)[d]
        xw = jnp.einsum("tbi,gi->tbg", x, w_d, precision=jax.lax.Precision.HIGHEST) + b_d[:gates * hidden]
        init = tuple(jnp.zeros((batch, hidden), dtype) if s is None else jnp.asarray(s)[d] for s in initial)
        step = make_step(d, r_d, b_d[gates * hidden:], hidden)
        y, final = _scan_direction(step, xw, init, lens, reverse=(direction == "reverse" or d == 1))
        ys.append(y)
        finals.append(final)
    y = jnp.stack(ys, axis=1)  # [T, D, B, H]
    states = [jnp.stack([f[k] for f in finals]) for k in range(len(initial))]  # [D, B, H]
    if layout:
        y = jnp.transpose(y, (2, 0, 1, 3))
        states = [jnp.swapaxes(s, 0, 1) for s in states]
    return (y, *states)


def _dot(h, r):
    return jnp.matmul(h, r.T, precision=jax.lax.Precision.HIGHEST)


@op("RNN", mapping=MANY_TO_MANY)
def rnn(ctx: Ctx, x, w, r, b=None, sequence_lens=None, initial_h=None):
    n_dir = 2 if ctx.attr("direction", "forward") == "bidirectional" else 1
    acts = _activations(ctx, ("Tanh",), n_dir, np.dtype(x.dtype))
    clip = _clipper(ctx, np.dtype(x.dtype))

    def make_step(d, r_d, rb, hidden):
        (f,) = acts[d]
        return lambda xw_t, state: (f(clip(xw_t + _dot(state[0], r_d) + rb)),)

    return _recurrent(ctx, x, w, r, b, sequence_lens, [initial_h], 1, make_step)


@op("GRU", mapping=MANY_TO_MANY)
def gru(ctx: Ctx, x, w, r, b=None, sequence_lens=None, initial_h=None):
    n_dir = 2 if ctx.attr("direction", "forward") == "bidirectional" else 1
    acts = _activations(ctx, ("Sigmoid", "Tanh"), n_dir, np.dtype(x.dtype))
    clip = _clipper(ctx, np.dtype(x.dtype))
    linear_before_reset = int(ctx.attr("linear_before_reset", 0))

    def make_step(d, r_d, rb, hidden):
        f, g = acts[d]
        rz, rr, rh = r_d[:hidden], r_d[hidden:2 * hidden], r_d[2 * hidden:]
        bz, br, bh = rb[:hidden], rb[hidden:2 * hidden], rb[2 * hidden:]

        def step(xw_t, state):
            (h,) = state
            xz, xr, xh = xw_t[:, :hidden], xw_t[:, hidden:2 * hidden], xw_t[:, 2 * hidden:]
            z = f(clip(xz + _dot(h, rz) + bz))
            reset = f(clip(xr + _dot(h, rr) + br))
            if linear_before_reset:
                cand = g(clip(xh + reset * (_dot(h, rh) + bh)))
            else:
                cand = g(clip(xh + _dot(reset * h, rh) + bh))
            return ((1 - z) * cand + z * h,)

        return step

    return _recurrent(ctx, x, w, r, b, sequence_lens, [initial_h], 3, make_step)


@op("LSTM", mapping=MANY_TO_MANY)
def lstm(ctx: Ctx, x, w, r, b=None, sequence_lens=None, initial_h=None, initial_c=None, p=None):
    n_dir = 2 if ctx.attr("direction", "forward") == "bidirectional" else 1
    acts = _activations(ctx, ("Sigmoid", "Tanh", "Tanh"), n_dir, np.dtype(x.dtype))
    clip = _clipper(ctx, np.dtype(x.dtype))
    input_forget = int(ctx.attr("input_forget", 0))

    def make_step(d, r_d, rb, hidden):
        f, g, h_act = acts[d]
        if p is None:
            pi = po = pf = jnp.zeros((hidden,), x.dtype)
        else:
            p_d = jnp.asarray(p)[d]
            pi, po, pf = p_d[:hidden], p_d[hidden:2 * hidden], p_d[2 * hidden:]

        def step(xw_t, state):
            h, c = state
            gates = xw_t + _dot(h, r_d) + rb
            gi, go, gf, gc = (gates[:, k * hidden:(k + 1) * hidden] for k in range(4))
            i = f(clip(gi + pi * c))
            forget = 1 - i if input_forget else f(clip(gf + pf * c))
            c_new = forget * c + i * g(clip(gc))
            o = f(clip(go + po * c_new))
            return o * h_act(c_new), c_new

        return step

    y, y_h, y_c = _recurrent(ctx, x, w, r, b, sequence_lens, [initial_h, initial_c], 4, make_step)
    return y, y_h, y_c
