"""Checks shared by the rules that give a product a constant-weight lowering (BLAS, packed GEMM).

Each returns why a value cannot be used (a reason the rule declines with), or None / the value.
"""
from __future__ import annotations

import numpy as np

from autofuse.rewrite.engine import View


def float32_decline(view: View, value: str, what: str) -> str | None:
    """Why `value` is not a float32 tensor of known shape (None when it is)."""
    t = view.type(value)
    if t is None:
        return f"{what}'s shape is unknown"
    return None if t.dtype == "float32" else f"{what} is {t.dtype}, not float32"


def weight_decline(view: View, value: str, what: str = "B") -> str | None:
    """Why `value` is not a constant float32 2-D weight (None when it is)."""
    w = view.tensor(value)
    if w is None:
        return f"{what} is not constant"
    if w.ndim != 2:
        return f"{what} is {w.ndim}-D, not a 2-D weight"
    return None if w.dtype == np.float32 else f"{what} is {w.dtype}, not float32"


def column_bias(view: View, value: str, columns: int, rank: int) -> np.ndarray | str:
    """A constant that broadcasts as one value per output column, as (columns,) float32; else why not."""
    b = view.tensor(value)
    if b is None:
        return "the bias is not constant"
    b = np.asarray(b)
    if b.ndim > rank or b.size != columns or (b.ndim and b.shape[-1] != columns):
        return f"the bias of shape {list(b.shape)} is not one value per output column ({columns})"
    return b.reshape(columns).astype(np.float32)
