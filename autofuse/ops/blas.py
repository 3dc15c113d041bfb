"""autofuse-internal BLAS op (domain "autofuse"): a matrix product with a constant weight through OpenBLAS.

Only the rewrite rules of `autofuse.rewrite.blas` put it into a model, never an ONNX file:

* `BlasMatMul(x, w, bias?)`: x (..., K) @ w (K, N) [+ bias (N,)], then ReLU when
  the attribute `relu` is 1; `split` (default 1) runs parts of the product on
  XLA's intra-op threads, 0 runs it whole on the calling thread. Runs OpenBLAS's sgemm through the FFI kernel of
  `autofuse.blas` on CPU for float32, the XLA dot elsewhere.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

from autofuse.ops.registry import MANY_TO_MANY, Ctx, op

DOMAIN = "autofuse"


def _blas_matmul_flops(ctx: Ctx, inputs: Sequence[Any], outputs: Sequence[Any]) -> float:
    """2 * output elements * K."""
    x, y = (inputs[0] if inputs else None), (outputs[0] if outputs else None)
    if x is None or y is None or not x.is_static or not y.is_static:
        return 0.0
    return 2.0 * math.prod(y.shape) * int(x.shape[-1])


@op("BlasMatMul", mapping=MANY_TO_MANY, domain=DOMAIN, flops=_blas_matmul_flops)
def blas_matmul(ctx: Ctx, x, w, bias=None):
    from autofuse.blas import blas_matmul as run

    return run(x, w, bias, relu=bool(ctx.attr("relu", 0)), split=bool(ctx.attr("split", 1)))
