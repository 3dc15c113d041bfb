"""autofuse-internal ops (domain "autofuse") run by autofuse's own GEMM kernel (`autofuse.gemm`).

Only the rules of `autofuse.rewrite.packed` put them into a model; their weight
is packed there, once (`autofuse.gemm.pack_weight`):

* `PackedMatMul(x, wp, bias, residual?)`: x (..., K) @ W (K, n) + bias (n,)
  [+ residual (..., n)], clamped to [`lo`, `hi`] (float attributes, default
  -inf and inf: ReLU is lo=0); attribute `n`.
* `PackedConvNHWC(x, wp, bias, residual?)`: a group-1 NHWC convolution by a
  (kh, kw, C, n) kernel; attributes `n`, `kernel_shape`, `strides`, `dilations`,
  `pads` (top, left, bottom, right), `lo` and `hi`, with the same epilogue.
* `PackedWinogradNHWC(x, up, bias, residual?)`: a stride-1, undilated, group-1 3x3 NHWC
  convolution as Winograd F(2x2, 3x3), the kernel transformed and packed by
  `autofuse.gemm.pack_winograd`; attributes `n`, `pads`, `lo`, `hi`, the same epilogue.
* `PackedAttention(q, k, v, bias?)`: softmax(`scale` * q k^T + bias) v per batch and
  head, with q, k, v and the output in [B, S, H, D] layout; the bias broadcasts to
  [B, H, Sq, Skv].
* `PackedAttentionQKV(qkv, bias?)`: the same with q, k and v the three parts of qkv's last
  axis, [B, S, 3 * `heads` * D] (a fused projection's output, read in place).
* `PackedLayerNorm(x, scale, bias?)`: LayerNormalization over the last axis (attribute
  `epsilon`), Y only.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

from autofuse.ops.registry import MANY_TO_MANY, Ctx, op

DOMAIN = "autofuse"


def _flops(ctx: Ctx, inputs: Sequence[Any], outputs: Sequence[Any]) -> float:
    """2 * output elements * reduction length (the packed weight holds K * 32 floats per panel)."""
    w, y = (inputs[1] if len(inputs) > 1 else None), (outputs[0] if outputs else None)
    if w is None or y is None or not w.is_static or not y.is_static or not y.shape:
        return 0.0
    width = 32 * -(-int(y.shape[-1]) // 32)
    return 2.0 * math.prod(y.shape) * (math.prod(w.shape) / width if width else 0.0)


def _ints(value: Any, default: Sequence[int]) -> tuple[int, ...]:
    return tuple(int(v) for v in value) if value else tuple(default)


def _clamp(ctx: Ctx) -> dict[str, float]:
    return {"lo": float(ctx.attr("lo", -math.inf)), "hi": float(ctx.attr("hi", math.inf))}


@op("PackedMatMul", mapping=MANY_TO_MANY, domain=DOMAIN, flops=_flops)
def packed_matmul(ctx: Ctx, x, wp, bias, residual=None):
    from autofuse.gemm import gemm

    return gemm(x, wp, bias, int(ctx.attr("n")), residual=residual, **_clamp(ctx))


@op("PackedConvNHWC", mapping=MANY_TO_MANY, domain=DOMAIN, flops=_flops)
def packed_conv_nhwc(ctx: Ctx, x, wp, bias, residual=None):
    from autofuse.gemm import conv_nhwc

    return conv_nhwc(x, wp, bias, int(ctx.attr("n")), kernel=_ints(ctx.attr("kernel_shape"), ()),
                     strides=_ints(ctx.attr("strides"), (1, 1)), pads=_ints(ctx.attr("pads"), (0, 0, 0, 0)),
                     dilations=_ints(ctx.attr("dilations"), (1, 1)), residual=residual, **_clamp(ctx))


def _winograd_flops(ctx: Ctx, inputs: Sequence[Any], outputs: Sequence[Any]) -> float:
    """The direct convolution's 2 * output elements * 9 * C (the work done, not the multiplies saved)."""
    x, y = inputs[0], (outputs[0] if outputs else None)
    if x is None or y is None or not x.is_static or not y.is_static or len(x.shape) != 4:
        return 0.0
    return 2.0 * math.prod(y.shape) * 9 * int(x.shape[3])


@op("PackedWinogradNHWC", mapping=MANY_TO_MANY, domain=DOMAIN, flops=_winograd_flops)
def packed_winograd_nhwc(ctx: Ctx, x, up, bias, residual=None):
    from autofuse.gemm import winograd_nhwc

    return winograd_nhwc(x, up, bias, int(ctx.attr("n")), pads=_ints(ctx.attr("pads"), (1, 1, 1, 1)),
                         residual=residual, **_clamp(ctx))


def _attention_flops(ctx: Ctx, inputs: Sequence[Any], outputs: Sequence[Any]) -> float:
    """2 * B * H * Sq * Skv * (D + Dv): the two products."""
    q, k, y = inputs[0], inputs[1], (outputs[0] if outputs else None)
    if any(t is None or not t.is_static or len(t.shape) != 4 for t in (q, k, y)):
        return 0.0
    b, sq, h, d = q.shape
    return 2.0 * b * h * sq * k.shape[1] * (d + y.shape[3])


@op("PackedAttention", mapping=MANY_TO_MANY, domain=DOMAIN, flops=_attention_flops)
def packed_attention(ctx: Ctx, q, k, v, bias=None):
    from autofuse.gemm import attention

    return attention(q, k, v, bias, scale=float(ctx.attr("scale", 1.0)))


def _qkv_flops(ctx: Ctx, inputs: Sequence[Any], outputs: Sequence[Any]) -> float:
    """4 * B * H * S * S * D."""
    y = outputs[0] if outputs else None
    if y is None or not y.is_static or len(y.shape) != 4:
        return 0.0
    b, s, h, d = y.shape
    return 4.0 * b * h * s * s * d


@op("PackedAttentionQKV", mapping=MANY_TO_MANY, domain=DOMAIN, flops=_qkv_flops)
def packed_attention_qkv(ctx: Ctx, qkv, bias=None):
    from autofuse.gemm import attention_qkv

    return attention_qkv(qkv, int(ctx.attr("heads")), bias, scale=float(ctx.attr("scale", 1.0)))


@op("PackedLayerNorm", mapping=MANY_TO_MANY, domain=DOMAIN)
def packed_layer_norm(ctx: Ctx, x, scale, bias=None):
    from autofuse.gemm import layer_norm

    return layer_norm(x, scale, bias, eps=float(ctx.attr("epsilon", 1e-5)))
