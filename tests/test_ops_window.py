"""Channels-last pooling windows: the strided-slice form equals XLA's reduce_window."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from autofuse.ops.internal import _reduce_window_nhwc, _sliced_window


@pytest.mark.parametrize("kernel, strides, dilations, pads", [
    ((3, 3), (2, 2), (1, 1), [(1, 1), (1, 1)]),     # ResNet's max pool
    ((2, 3), (2, 1), (1, 2), [(0, 1), (2, 0)]),     # asymmetric pads, dilation
    ((1, 1), (3, 3), (1, 1), [(0, 0), (0, 0)]),
    ((4, 4), (1, 1), (1, 1), [(0, 2), (1, 0)]),
])
@pytest.mark.parametrize("reduce", ["max", "add"])
def test_sliced_window_equals_reduce_window(kernel, strides, dilations, pads, reduce):
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 9, 11, 5)).astype(np.float32))
    fn, init = (lax.max, -np.inf) if reduce == "max" else (lax.add, 0.0)
    expected = lax.reduce_window(x, jnp.asarray(init, x.dtype), fn, (1, *kernel, 1), (1, *strides, 1),
                                 [(0, 0), *pads, (0, 0)], window_dilation=(1, *dilations, 1))
    got = _sliced_window(x, init, fn, kernel, strides, dilations, pads)
    assert got.shape == expected.shape
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-6, atol=1e-6)


def test_large_windows_keep_reduce_window():
    x = jnp.ones((1, 9, 9, 2), jnp.float32)
    hlo = jax.jit(lambda x: _reduce_window_nhwc(x, 0.0, lax.add, (5, 5), (1, 1), (1, 1),
                                                              [(0, 0), (0, 0)])).lower(x).as_text()
    assert "reduce_window" in hlo
