"""ONNX element types as numpy dtypes, without importing onnx.

The table follows `onnx.TensorProto.DataType`; the sub-byte and float8 types come
from ml_dtypes, which JAX already depends on.
"""
from __future__ import annotations

import ml_dtypes
import numpy as np

ONNX_TO_NUMPY: dict[int, np.dtype] = {
    1: np.dtype(np.float32),
    2: np.dtype(np.uint8),
    3: np.dtype(np.int8),
    4: np.dtype(np.uint16),
    5: np.dtype(np.int16),
    6: np.dtype(np.int32),
    7: np.dtype(np.int64),
    8: np.dtype(object),  # STRING
    9: np.dtype(np.bool_),
    10: np.dtype(np.float16),
    11: np.dtype(np.float64),
    12: np.dtype(np.uint32),
    13: np.dtype(np.uint64),
    14: np.dtype(np.complex64),
    15: np.dtype(np.complex128),
    16: np.dtype(ml_dtypes.bfloat16),
    17: np.dtype(ml_dtypes.float8_e4m3fn),
    18: np.dtype(ml_dtypes.float8_e4m3fnuz),
    19: np.dtype(ml_dtypes.float8_e5m2),
    20: np.dtype(ml_dtypes.float8_e5m2fnuz),
    21: np.dtype(ml_dtypes.uint4),
    22: np.dtype(ml_dtypes.int4),
    23: np.dtype(ml_dtypes.float4_e2m1fn),
    24: np.dtype(ml_dtypes.float8_e8m0fnu),
    25: np.dtype(ml_dtypes.uint2),
    26: np.dtype(ml_dtypes.int2),
}

NUMPY_TO_ONNX: dict[np.dtype, int] = {v: k for k, v in ONNX_TO_NUMPY.items()}


def to_numpy_dtype(onnx_type: int) -> np.dtype:
    """The numpy dtype of an ONNX element type number."""
    try:
        return ONNX_TO_NUMPY[int(onnx_type)]
    except KeyError:
        raise ValueError(f"unknown ONNX element type {onnx_type}") from None


def to_onnx_dtype(dtype: np.dtype | type) -> int:
    """The ONNX element type number of a numpy dtype."""
    return NUMPY_TO_ONNX[np.dtype(dtype)]


def is_float(dtype: np.dtype) -> bool:
    """True for every floating dtype, the ml_dtypes ones included."""
    dtype = np.dtype(dtype)
    return np.issubdtype(dtype, np.floating) or dtype.kind == "V" and "float" in dtype.name or "float" in dtype.name
