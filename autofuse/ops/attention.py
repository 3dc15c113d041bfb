"""Attention-family ops: Attention, RotaryEmbedding, and the newest fused LLM blocks."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from autofuse.dtypes import to_numpy_dtype
from autofuse.ops.registry import MANY_TO_MANY, ONE_TO_MANY, ONE_TO_ONE, Ctx, op

# qk_matmul_output modes (Attention's fourth output).
_QK_WITH_BIAS = 2
_QK_AFTER_SOFTMAX = 3


# ----------------------------------------------------------------- helpers


def _str_attr(ctx: Ctx, name: str, default: str) -> str:
    """A string attribute as str (the frontend may hand over bytes)."""
    value = ctx.attr(name, default)
    return value.decode() if isinstance(value, bytes) else str(value)


def _split_heads(x: jax.Array, heads: int) -> jax.Array:
    """(batch, seq, heads * size) -> (batch, heads, seq, size)."""
    b, s, hidden = x.shape
    return jnp.transpose(jnp.reshape(x, (b, s, heads, hidden // heads)), (0, 2, 1, 3))


def _merge_heads(x: jax.Array) -> jax.Array:
    """(batch, heads, seq, size) -> (batch, seq, heads * size)."""
    b, h, s, d = x.shape
    return jnp.reshape(jnp.transpose(x, (0, 2, 1, 3)), (b, s, h * d))


def _safe_softmax(x: jax.Array) -> jax.Array:
    """Softmax over the last axis; a row that is all -inf gives zeros, not NaN."""
    m = jnp.max(x, axis=-1, keepdims=True)
    zero = jnp.zeros((), x.dtype)
    m = jnp.where(jnp.isneginf(m), zero, m)
    e = jnp.exp(x - m)
    s = jnp.sum(e, axis=-1, keepdims=True)
    s = jnp.where(s == zero, jnp.ones((), x.dtype), s)
    return e / s


def _neg_inf_where_false(allowed: jax.Array, dtype) -> jax.Array:
    """An additive bias: 0 where attending is allowed, -inf where masked."""
    return jnp.where(allowed, jnp.zeros((), dtype), jnp.asarray(-jnp.inf, dtype))


def _offset_diff(q_len: int, kv_len: int, offset) -> jax.Array:
    """(i + offset) - j, shaped (q, kv) for a scalar offset, (batch, 1, q, kv) per batch."""
    i = jnp.arange(q_len).reshape(q_len, 1)
    j = jnp.arange(kv_len).reshape(1, kv_len)
    if isinstance(offset, int):
        return i + offset - j
    return (i + jnp.reshape(offset, (-1, 1, 1, 1)).astype(jnp.int64)) - j


def _pad_mask(mask: jax.Array, kv_len: int) -> jax.Array:
    """Pads a short mask's last axis up to kv_len with False / -inf."""
    pad = kv_len - mask.shape[-1]
    if pad <= 0:
        return mask
    fill = False if mask.dtype == jnp.bool_ else -jnp.inf
    widths = [(0, 0)] * (mask.ndim - 1) + [(0, pad)]
    return jnp.pad(mask, widths, constant_values=jnp.asarray(fill, mask.dtype))


def _attention_bias(ctx: Ctx, q_dtype, q_len: int, kv_len: int, mask, past_len, nonpad) -> jax.Array:
    """The additive bias from attn_mask, is_causal, the sliding window and nonpad_kv_seqlen."""
    is_causal = bool(ctx.attr("is_causal", 0))
    left = int(ctx.attr("left_window_size", -1))
    right = int(ctx.attr("right_window_size", -1))
    if mask is not None:
        mask = _pad_mask(mask, kv_len)
        if mask.dtype == jnp.bool_:
            mask = _neg_inf_where_false(mask, q_dtype)
    if past_len is None and nonpad is not None:
        offset = nonpad - q_len  # external cache: per-batch frontier
    else:
        offset = int(past_len or 0)
    bias = jnp.zeros((q_len, kv_len), q_dtype) if mask is None else mask
    if is_causal:
        if left >= 0 or right >= 0:
            bias = jnp.zeros((q_len, kv_len), bias.dtype) + bias
        bias = bias + _neg_inf_where_false(_offset_diff(q_len, kv_len, offset) >= 0, bias.dtype)
    elif mask is not None:
        bias = jnp.zeros((q_len, kv_len), q_dtype) + mask
    if left >= 0 or right >= 0:
        diff = _offset_diff(q_len, kv_len, offset)
        allowed = jnp.ones(diff.shape, jnp.bool_)
        if left >= 0:
            allowed &= diff <= left
        if right >= 0:
            allowed &= -diff <= right
        bias = jnp.zeros((q_len, kv_len), bias.dtype) + bias
        bias = bias + _neg_inf_where_false(allowed, bias.dtype)
    if nonpad is not None:
        valid = jnp.arange(kv_len)[None, :] < jnp.reshape(nonpad, (-1, 1))
        pad_bias = _neg_inf_where_false(valid, bias.dtype)
        bias = bias + jnp.reshape(pad_bias, (pad_bias.shape[0], 1, 1, kv_len))
    return bias


def _compute_dtype(dtype) -> np.dtype:
    """float64 for float64 data, else float32 (16-bit floats accumulate in float32)."""
    return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)


def _softcap(x: jax.Array, cap: float) -> jax.Array:
    if cap > 0:
        c = jnp.asarray(cap, x.dtype)
        return jnp.tanh(x / c) * c
    return x


# ----------------------------------------------------------------- Attention


@op("Attention", mapping=MANY_TO_MANY, since=23)
def attention(ctx: Ctx, q, k, v, attn_mask=None, past_key=None, past_value=None, nonpad_kv_seqlen=None):
    """Scaled dot-product attention with GQA, masks, KV cache and softcap (opset 23-25)."""
    rank = q.ndim
    q_heads = ctx.attr("q_num_heads", None)
    kv_heads = ctx.attr("kv_num_heads", None)
    if rank == 3:
        q, k, v = _split_heads(q, q_heads), _split_heads(k, kv_heads), _split_heads(v, kv_heads)
    dtype = q.dtype
    scale = ctx.attr("scale", None)
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[3])
    root = jnp.asarray(np.sqrt(np.float64(scale)), dtype)
    if past_key is not None:
        k = jnp.concatenate([past_key, k], axis=2)
    if past_value is not None:
        v = jnp.concatenate([past_value, v], axis=2)
    present_key, present_value = k, v
    q_len, kv_len = q.shape[2], k.shape[2]
    past_len = past_key.shape[2] if past_key is not None else None
    bias = _attention_bias(ctx, dtype, q_len, kv_len, attn_mask, past_len, nonpad_kv_seqlen)
    groups = q.shape[1] // k.shape[1]
    if groups > 1:
        k, v = jnp.repeat(k, groups, axis=1), jnp.repeat(v, groups, axis=1)
    qk = jnp.matmul(q * root, jnp.swapaxes(k * root, -1, -2))
    softcap = ctx.attr("softcap", None)
    if softcap is not None:
        qk = _softcap(qk, float(softcap))
    with_bias = qk + bias
    mode = int(ctx.attr("qk_matmul_output_mode", 0))
    qk_out = with_bias if mode == _QK_WITH_BIAS else qk
    precision = ctx.attr("softmax_precision", None)
    logits = with_bias.astype(to_numpy_dtype(precision)) if precision is not None else with_bias
    probs = _safe_softmax(logits)
    all_masked = jnp.isneginf(jnp.max(bias, axis=-1, keepdims=True))
    probs = jnp.where(all_masked, jnp.zeros((), probs.dtype), probs)
    if mode == _QK_AFTER_SOFTMAX:
        qk_out = probs
    y = jnp.matmul(probs.astype(dtype), v)
    if rank == 3:
        y = _merge_heads(y)
    outputs = (y, present_key, present_value, qk_out.astype(dtype))
    return outputs[: max(1, len(ctx.node.outputs))]


# ----------------------------------------------------------------- RotaryEmbedding


@op("RotaryEmbedding", mapping=ONE_TO_MANY, since=23)
def rotary_embedding(ctx: Ctx, x, cos_cache, sin_cache, position_ids=None):
    """Rotates the first rotary_embedding_dim features of each head by cos/sin caches."""
    rank = x.ndim
    if rank == 4:  # (batch, heads, seq, size) -> (batch, seq, heads, size)
        h = jnp.transpose(x, (0, 2, 1, 3))
    else:
        b, s, hidden = x.shape
        heads = int(ctx.attr("num_heads", 0))
        h = jnp.reshape(x, (b, s, heads, hidden // heads))
    dim = int(ctx.attr("rotary_embedding_dim", 0)) or h.shape[3]
    rotate, keep = h[..., :dim], h[..., dim:]
    if position_ids is not None:
        cos_cache = jnp.take(cos_cache, position_ids, axis=0)
        sin_cache = jnp.take(sin_cache, position_ids, axis=0)
    cos, sin = cos_cache[:, :, None, :], sin_cache[:, :, None, :]
    interleaved = bool(ctx.attr("interleaved", 0))
    if interleaved:
        x1, x2 = rotate[..., 0::2], rotate[..., 1::2]
    else:
        x1, x2 = rotate[..., : dim // 2], rotate[..., dim // 2:]
    real = cos * x1 - sin * x2
    imag = sin * x1 + cos * x2
    if interleaved:
        rotated = jnp.reshape(jnp.stack([real, imag], axis=-1), rotate.shape)
    else:
        rotated = jnp.concatenate([real, imag], axis=-1)
    out = jnp.concatenate([rotated, keep], axis=-1).astype(x.dtype)
    if rank == 4:
        return jnp.transpose(out, (0, 2, 1, 3))
    return jnp.reshape(out, x.shape)


# ----------------------------------------------------------------- SwiGLU


@op("SwiGLU", mapping=ONE_TO_ONE)
def swiglu(ctx: Ctx, a, b):
    """a * sigmoid(alpha * a) * b."""
    alpha = jnp.asarray(float(ctx.attr("alpha", 1.0)), a.dtype)
    gate = jax.nn.sigmoid(alpha * a).astype(a.dtype)
    return (a * gate * b).astype(a.dtype)


# ----------------------------------------------------------------- FlexAttention


def _flex_softmax_dtype(dtype, precision) -> np.dtype:
    """Softmax precision: the attribute, else float32 for 16-bit inputs, else the input type."""
    if precision is not None:
        return to_numpy_dtype(precision)
    return np.dtype(np.float32) if np.dtype(dtype).itemsize < 4 else np.dtype(dtype)


def _run_mod(ctx: Ctx, graph, value: jax.Array) -> jax.Array:
    """Runs a one-in, one-out score_mod / prob_mod subgraph, keeping the dtype."""
    (out,) = ctx.run_subgraph(graph, [value])
    return jnp.asarray(out).astype(value.dtype)


@op("FlexAttention", mapping=MANY_TO_MANY, domain="ai.onnx.preview")
def flex_attention(ctx: Ctx, q, k, v):
    """Attention whose scores and probabilities pass through optional subgraphs."""
    scale = ctx.attr("scale", None)
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[3])
    groups = q.shape[1] // k.shape[1]
    if groups > 1:
        k, v = jnp.repeat(k, groups, axis=1), jnp.repeat(v, groups, axis=1)
    root = jnp.asarray(np.sqrt(np.float32(scale)), q.dtype)
    scores = jnp.matmul(q * root, jnp.swapaxes(k * root, -1, -2))
    cdtype = _flex_softmax_dtype(q.dtype, ctx.attr("softmax_precision", None))
    scores = scores.astype(cdtype)
    score_mod = ctx.attr("score_mod", None)
    if score_mod is not None:
        scores = _run_mod(ctx, score_mod, scores)
    e = jnp.exp(scores - jnp.max(scores, axis=-1, keepdims=True))
    probs = e / jnp.sum(e, axis=-1, keepdims=True)
    prob_mod = ctx.attr("prob_mod", None)
    if prob_mod is not None:
        probs = _run_mod(ctx, prob_mod, probs)
    return jnp.matmul(probs, v.astype(cdtype)).astype(v.dtype)


# ----------------------------------------------------------------- LinearAttention


def _per_head(x: jax.Array, heads: int) -> jax.Array:
    """(B, T, H*X) -> (B, H, T, X) in float32 (X may be 1 for per-head scalars)."""
    return _split_heads(x, heads).astype(jnp.float32)


@op("LinearAttention", mapping=MANY_TO_MANY, since=27)
def linear_attention(ctx: Ctx, query, key, value, past_state=None, decay=None, beta=None):
    """Recurrent linear attention (linear / gated / delta / gated_delta state updates)."""
    rule = _str_attr(ctx, "update_rule", "gated_delta")
    q_heads, kv_heads = int(ctx.attr("q_num_heads")), int(ctx.attr("kv_num_heads"))
    b, t, _ = query.shape
    d_k = query.shape[-1] // q_heads
    d_v = value.shape[-1] // kv_heads
    q4, k4, v4 = _per_head(query, q_heads), _per_head(key, kv_heads), _per_head(value, kv_heads)
    gate = None if decay is None else _per_head(decay, kv_heads)
    mix = None if beta is None else _per_head(beta, beta.shape[-1])
    if past_state is not None:
        state0, state_dtype = past_state.astype(jnp.float32), past_state.dtype
    else:
        state0, state_dtype = jnp.zeros((b, kv_heads, d_k, d_v), jnp.float32), query.dtype
    scale = ctx.attr("scale", None)
    scale = 1.0 / math.sqrt(d_k) if not scale else float(scale)
    groups = q_heads // kv_heads
    gating, delta = rule in ("gated", "gated_delta"), rule in ("delta", "gated_delta")

    def step(state, i):
        k_t, v_t, q_t = k4[:, :, i], v4[:, :, i], q4[:, :, i]
        if gating:
            state = state * jnp.exp(gate[:, :, i])[..., None]
        if delta:
            v_t = mix[:, :, i] * (v_t - jnp.einsum("bhdm,bhd->bhm", state, k_t))
        state = state + k_t[..., :, None] * v_t[..., None, :]
        read = jnp.repeat(state, groups, axis=1) if groups > 1 else state
        return state, scale * jnp.einsum("bhd,bhdm->bhm", q_t, read)

    state, outs = jax.lax.scan(step, state0, jnp.arange(t))  # outs: (T, B, Hq, d_v)
    y = jnp.reshape(jnp.transpose(outs, (1, 0, 2, 3)), (b, t, q_heads * d_v))
    return y.astype(query.dtype), state.astype(state_dtype)


# ----------------------------------------------------------------- CausalConvWithState


@op("CausalConvWithState", mapping=MANY_TO_MANY, since=27)
def causal_conv_with_state(ctx: Ctx, x, weight, bias=None, past_state=None):
    """Depthwise causal 1-D conv over [past_state, x]; returns (y, the last k-1 inputs)."""
    batch, channels, length = x.shape
    k = weight.shape[2]
    if past_state is None:
        past_state = jnp.zeros((batch, channels, k - 1), x.dtype)
    padded = jnp.concatenate([past_state.astype(x.dtype), x], axis=2)
    wide = padded.astype(_compute_dtype(x.dtype))
    w = weight.astype(wide.dtype)
    y = sum(wide[:, :, j:j + length] * w[None, :, 0, j:j + 1] for j in range(k))
    if bias is not None:
        y = y + bias.astype(wide.dtype)[None, :, None]
    y = y.astype(x.dtype)
    activation = _str_attr(ctx, "activation", "none")
    if activation in ("silu", "swish"):
        f = y.astype(jnp.float32)
        y = (f * jax.nn.sigmoid(f)).astype(x.dtype)
    return y, padded[:, :, padded.shape[2] - (k - 1):]
