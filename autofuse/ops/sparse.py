"""autofuse-internal sparse ops (domain "autofuse"): balanced-sparse matrix products.

Only `autofuse.sparsity.rewrite` puts them into a model, never an ONNX file:

* `SparseMatMul(x, values, offsets, bias?)`: x (..., K) times a balanced-sparse
  (K, n) weight in the compressed format of `autofuse.sparsity.compressed`,
  plus an optional bias broadcast over the output; attributes `outputs` (n)
  and `window`. Runs the native kernel on CPU, the XLA gather form elsewhere.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

from autofuse.ops.registry import MANY_TO_MANY, Ctx, op

DOMAIN = "autofuse"


def _sparse_matmul_flops(ctx: Ctx, inputs: Sequence[Any], outputs: Sequence[Any]) -> float:
    """2 * output rows * kept weights (padding columns excluded)."""
    y, values = outputs[0] if outputs else None, inputs[1] if len(inputs) > 1 else None
    if y is None or values is None or not y.is_static or not values.is_static:
        return 0.0
    _, windows, kept, _ = values.shape
    return 2.0 * math.prod(y.shape[:-1]) * int(ctx.attr("outputs")) * windows * kept


@op("SparseMatMul", mapping=MANY_TO_MANY, domain=DOMAIN, flops=_sparse_matmul_flops)
def sparse_matmul(ctx: Ctx, x, values, offsets, bias=None):
    from autofuse.sparsity.matmul import sparse_matmul as run

    y = run(x, values, offsets, outputs=int(ctx.attr("outputs")), window=int(ctx.attr("window")))
    return y if bias is None else y + bias.astype(y.dtype)
