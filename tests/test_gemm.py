"""autofuse's packed GEMM kernel: equals XLA for products and convolutions, falls back, survives jax.export."""
from __future__ import annotations

import jax
import numpy as np
import pytest
from jax import export

from autofuse import gemm
from autofuse.errors import AutofuseError
from autofuse.executable import NATIVE_TARGETS


@pytest.fixture
def kernel():
    if gemm.kernel_targets() is None:
        pytest.skip(gemm.unavailable_reason())
    return gemm.kernel_targets()


def _rng(seed=0):
    return np.random.default_rng(seed)


def _matmul_reference(x, w, b, r, lo, hi):
    y = x.astype(np.float64) @ w.astype(np.float64) + b
    y = y if r is None else y + r
    return np.clip(y, lo, hi)


@pytest.mark.parametrize("k, n", [(7, 3), (300, 33), (16, 64), (1, 1), (513, 100)])
def test_pack_and_unpack_are_inverse(k, n):
    w = _rng().standard_normal((k, n)).astype(np.float32)
    packed = gemm.pack_weight(w)
    assert packed.shape == (k * gemm.panels(n) * 32,)
    assert np.count_nonzero(packed) == np.count_nonzero(w)  # the padding is zeros
    np.testing.assert_array_equal(np.asarray(gemm.unpack_weight(packed, k, n)), w)


def test_a_block_of_the_packed_weight_is_contiguous():
    k, n = 600, 70
    w = np.arange(k * n, dtype=np.float32).reshape(k, n)
    packed = gemm.pack_weight(w)
    width = gemm.panels(n) * 32
    second_block_panel_1 = packed[256 * width + 256 * 32:256 * width + 2 * 256 * 32].reshape(256, 32)
    np.testing.assert_array_equal(second_block_panel_1, w[256:512, 32:64])


@pytest.mark.parametrize("lead, k, n", [((5,), 7, 3), ((2, 3), 16, 9), ((13,), 300, 33), ((0,), 4, 3),
                                        ((130,), 260, 70), ((2, 1, 25), 513, 65), ((600,), 40, 31)])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("lo, hi", [(-np.inf, np.inf), (0.0, np.inf), (0.0, 6.0), (-np.inf, -0.5)])
def test_gemm_kernel_equals_the_dot(kernel, lead, k, n, residual, lo, hi):
    rng = _rng(k)
    x, w = rng.standard_normal((*lead, k)).astype(np.float32), rng.standard_normal((k, n)).astype(np.float32)
    b, r = rng.standard_normal(n).astype(np.float32), rng.standard_normal((*lead, n)).astype(np.float32)
    r = r if residual else None
    run = jax.jit(lambda x, wp, b, *r: gemm.gemm(x, wp, b, n, residual=r[0] if r else None, lo=lo, hi=hi))
    got = np.asarray(run(x, gemm.pack_weight(w), b, *(() if r is None else (r,))))
    assert got.shape == (*lead, n)
    np.testing.assert_allclose(got, _matmul_reference(x, w, b, r, lo, hi), rtol=1e-4, atol=1e-4 * np.sqrt(k))


def _conv_reference(x, w, b, strides, pads, dilations, r):
    y = jax.lax.conv_general_dilated(
        x, w, strides, ((pads[0], pads[2]), (pads[1], pads[3])), rhs_dilation=dilations,
        dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=jax.lax.Precision.HIGHEST)
    y = np.asarray(y, np.float64) + b
    y = y if r is None else y + r
    return np.maximum(y, 0)


@pytest.mark.parametrize("x_shape, kernel_hw, n, strides, pads, dilations", [
    ((1, 30, 30, 3), (7, 7), 16, (2, 2), (3, 3, 3, 3), (1, 1)),     # a stem: short channel runs, padding
    ((1, 14, 14, 40), (3, 3), 64, (1, 1), (1, 1, 1, 1), (1, 1)),
    ((2, 9, 11, 5), (3, 2), 37, (2, 1), (0, 1, 2, 0), (2, 1)),     # asymmetric pads, dilation, batch 2
    ((1, 7, 7, 33), (1, 1), 70, (2, 2), (0, 0, 0, 0), (1, 1)),      # strided pointwise
    ((1, 5, 5, 300), (3, 3), 5, (1, 1), (1, 1, 1, 1), (1, 2)),     # K spans several reduction blocks
])
@pytest.mark.parametrize("residual", [False, True])
def test_conv_kernel_equals_xla(kernel, x_shape, kernel_hw, n, strides, pads, dilations, residual):
    rng = _rng(n)
    c = x_shape[-1]
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal((*kernel_hw, c, n)).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    shape = gemm.conv_output_shape(x_shape, kernel_hw, strides, pads, dilations, n)
    r = rng.standard_normal(shape).astype(np.float32) if residual else None

    def run(x, wp, b, *r):
        return gemm.conv_nhwc(x, wp, b, n, kernel=kernel_hw, strides=strides, pads=pads, dilations=dilations,
                              residual=r[0] if r else None, lo=0.0)

    got = np.asarray(jax.jit(run)(x, gemm.pack_weight(w.reshape(-1, n)), b, *(() if r is None else (r,))))
    expected = _conv_reference(x, w, b, strides, pads, dilations, r)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


@pytest.mark.parametrize("x_shape, n, pads", [
    ((1, 14, 14, 40), 64, (1, 1, 1, 1)),
    ((2, 9, 11, 5), 37, (1, 1, 1, 1)),      # odd sizes: the last tiles are cut, batch 2
    ((1, 8, 7, 300), 33, (0, 1, 2, 0)),     # asymmetric pads, C spans several reduction blocks
    ((1, 6, 6, 17), 70, (0, 0, 0, 0)),      # valid: 4x4 outputs
    ((1, 3, 3, 4), 3, (2, 2, 2, 2)),        # more padding than image
    ((1, 32, 31, 64), 64, (1, 1, 1, 1)),    # many tiles: chunks transformed in L2, a ragged last one
    ((2, 48, 45, 8), 8, (1, 1, 1, 1)),      # chunks across the batch
])
@pytest.mark.parametrize("residual", [False, True])
def test_winograd_kernel_equals_the_convolution(kernel, x_shape, n, pads, residual):
    rng = _rng(n)
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal((3, 3, x_shape[-1], n)).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    shape = gemm.conv_output_shape(x_shape, (3, 3), (1, 1), pads, (1, 1), n)
    r = rng.standard_normal(shape).astype(np.float32) if residual else None

    def run(x, up, b, *r):
        return gemm.winograd_nhwc(x, up, b, n, pads=pads, residual=r[0] if r else None, lo=0.0)

    up = gemm.pack_winograd(w)
    got = np.asarray(jax.jit(run)(x, up, b, *(() if r is None else (r,))))
    expected = _conv_reference(x, w, b, (1, 1), pads, (1, 1), r)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    hlo = jax.jit(run).lower(x, up, b, *(() if r is None else (r,))).as_text()
    assert hlo.count(f"custom_call @{gemm.WINOGRAD_TARGET}") == 1


def test_winograd_xla_form_recovers_the_kernel_and_nan_propagates(monkeypatch, kernel):
    w = _rng().standard_normal((3, 3, 6, 5)).astype(np.float32)
    up = gemm.pack_winograd(w)
    assert up.shape == (16 * 6 * 32,)
    np.testing.assert_allclose(np.asarray(gemm.unpack_winograd(up, 6, 5)), w, rtol=1e-5, atol=1e-5)
    x = _rng(1).standard_normal((1, 5, 5, 6)).astype(np.float32)
    b = np.zeros(5, np.float32)
    run = jax.jit(lambda x, up, b: gemm.winograd_nhwc(x, up, b, 5, lo=0.0, hi=6.0))
    native = np.asarray(run(x, up, b))
    monkeypatch.setenv("AUTOFUSE_GEMM_KERNEL", "xla")
    fallback = jax.jit(lambda x, up, b: gemm.winograd_nhwc(x, up, b, 5, lo=0.0, hi=6.0))
    assert "custom_call" not in fallback.lower(x, up, b).as_text()
    np.testing.assert_allclose(np.asarray(fallback(x, up, b)), native, rtol=1e-4, atol=1e-5)
    monkeypatch.delenv("AUTOFUSE_GEMM_KERNEL")
    x[0, 2, 2, 0] = np.nan
    assert np.isnan(np.asarray(run(x, up, b))[0, 1:4, 1:4]).all()
    with pytest.raises(AutofuseError, match="pack_winograd"):
        gemm.pack_winograd(np.ones((5, 5, 2, 2), np.float32))


def test_nan_propagates_through_the_clamp(kernel):
    x = np.full((3, 4), np.nan, np.float32)
    wp, b = gemm.pack_weight(np.ones((4, 2), np.float32)), np.zeros(2, np.float32)
    got = np.asarray(jax.jit(lambda x, wp, b: gemm.gemm(x, wp, b, 2, lo=0.0, hi=6.0))(x, wp, b))
    assert np.isnan(got).all()


def test_xla_form_is_used_when_asked(monkeypatch, kernel):
    x, w = _rng().standard_normal((4, 8)).astype(np.float32), _rng(1).standard_normal((8, 5)).astype(np.float32)
    b = np.zeros(5, np.float32)
    monkeypatch.setenv("AUTOFUSE_GEMM_KERNEL", "xla")
    assert gemm.kernel_targets() is None and gemm.unavailable_reason() == "AUTOFUSE_GEMM_KERNEL=xla"
    hlo = jax.jit(lambda x, wp, b: gemm.gemm(x, wp, b, 5)).lower(x, gemm.pack_weight(w), b).as_text()
    assert "custom_call" not in hlo
    np.testing.assert_allclose(np.asarray(jax.jit(lambda x, wp, b: gemm.gemm(x, wp, b, 5))(x, gemm.pack_weight(w), b)),
                               x @ w, rtol=1e-5, atol=1e-5)


def test_kernel_calls_are_single_custom_calls_and_export(kernel):
    x, w = _rng().standard_normal((3, 6, 6, 4)).astype(np.float32), _rng(1).standard_normal((36, 8)).astype(np.float32)
    b = np.zeros(8, np.float32)

    def model(x, wp, b):
        y = gemm.conv_nhwc(x, wp, b, 8, kernel=(3, 3), pads=(1, 1, 1, 1), lo=0.0)
        return gemm.gemm(y, gemm.pack_weight(np.eye(8, dtype=np.float32)), b, 8, residual=y)

    hlo = jax.jit(model).lower(x, gemm.pack_weight(w), b).as_text()
    assert hlo.count(f"custom_call @{gemm.GEMM_TARGET}") == 1 and hlo.count(f"custom_call @{gemm.CONV_TARGET}") == 1
    assert set(kernel) <= set(NATIVE_TARGETS)
    exported = export.export(jax.jit(model), disabled_checks=[
        export.DisabledSafetyCheck.custom_call(t) for t in kernel])(x, gemm.pack_weight(w), b)
    again = export.deserialize(exported.serialize())
    np.testing.assert_allclose(np.asarray(again.call(x, gemm.pack_weight(w), b)),
                               np.asarray(jax.jit(model)(x, gemm.pack_weight(w), b)), rtol=1e-6)


def _attention_reference(q, k, v, bias, scale):
    s = np.einsum("bqhd,bkhd->bhqk", q.astype(np.float64) * scale, k)
    s = s if bias is None else s + bias
    m = s.max(-1, keepdims=True)
    m[np.isneginf(m)] = 0.0
    e = np.exp(s - m)
    z = e.sum(-1, keepdims=True)
    z[z == 0] = 1.0
    return np.einsum("bhqk,bkhd->bqhd", e / z, v)


@pytest.mark.parametrize("b, sq, skv, h, d, dv, bias", [
    (1, 128, 128, 12, 64, 64, None),       # BERT-base
    (1, 20, 20, 3, 64, 64, (1, 1, 20, 20)),  # GPT-2's causal mask, short
    (2, 7, 13, 3, 5, 9, (2, 1, 7, 13)),     # ragged: rows, columns and D below a tile
    (1, 30, 300, 2, 40, 40, (1, 2, 30, 300)),  # Skv beyond one reduction block
    (1, 1, 1, 1, 1, 1, None),
])
def test_attention_kernel_equals_softmax_attention(kernel, b, sq, skv, h, d, dv, bias):
    rng = _rng()
    q, k = rng.standard_normal((b, sq, h, d)).astype(np.float32), rng.standard_normal((b, skv, h, d)).astype(np.float32)
    v = rng.standard_normal((b, skv, h, dv)).astype(np.float32)
    mask = None if bias is None else np.where(rng.random(bias) < 0.3, -np.inf, rng.standard_normal(bias)).astype(np.float32)
    args = (q, k, v) + (() if mask is None else (mask,))
    fn = jax.jit(lambda q, k, v, *m: gemm.attention(q, k, v, m[0] if m else None, scale=0.125))
    assert f"custom_call @{gemm.ATTENTION_TARGET}" in fn.lower(*args).as_text()
    np.testing.assert_allclose(np.asarray(fn(*args)), _attention_reference(q, k, v, mask, 0.125), rtol=2e-5, atol=2e-6)


def test_attention_rows_masked_everywhere_give_zeros_and_nan_propagates(kernel):
    q = k = v = np.ones((1, 4, 1, 8), np.float32)
    mask = np.zeros((1, 1, 4, 4), np.float32)
    mask[0, 0, 1] = -np.inf
    q_nan = q.copy()
    q_nan[0, 2] = np.nan
    got = np.asarray(jax.jit(lambda q, k, v, m: gemm.attention(q, k, v, m))(q_nan, k, v, mask))
    assert (got[0, 1] == 0).all() and np.isnan(got[0, 2]).all() and (got[0, [0, 3]] == 1).all()


def test_bad_operands_are_named():
    with pytest.raises(AutofuseError, match=r"gemm of x \(2, 5\): the packed weight holds 128 floats, K=5 and N=3 need 160"):
        gemm.gemm(np.zeros((2, 5), np.float32), gemm.pack_weight(np.zeros((4, 3), np.float32)), np.zeros(3), 3)
    with pytest.raises(AutofuseError, match=r"attention: q \(2, 3\)"):
        gemm.attention(np.zeros((2, 3), np.float32), np.zeros((2, 3), np.float32), np.zeros((2, 3), np.float32))
    with pytest.raises(AutofuseError, match="does not broadcast"):
        gemm.attention(*(np.zeros((1, 2, 2, 4), np.float32),) * 3, np.zeros((3, 1, 2, 2), np.float32))
    with pytest.raises(AutofuseError, match="2-D"):
        gemm.pack_weight(np.zeros((2, 3, 4), np.float32))
    with pytest.raises(AutofuseError, match="does not fit"):
        gemm.conv_nhwc(np.zeros((1, 2, 2, 1), np.float32), gemm.pack_weight(np.zeros((9, 2), np.float32)),
                       np.zeros(2, np.float32), 2, kernel=(3, 3))


@pytest.mark.parametrize("x_shape, kernel_hw, strides, pads, dilations", [
    ((1, 112, 112, 64), (3, 3), (2, 2), (1, 1, 1, 1), (1, 1)),  # ResNet's stem pool
    ((2, 9, 10, 20), (2, 3), (1, 2), (0, 1, 1, 2), (1, 1)),
    ((1, 7, 7, 5), (3, 3), (2, 2), (0, 0, 0, 0), (2, 1)),
])
def test_max_pool_kernel_equals_padded_reduce_window(kernel, x_shape, kernel_hw, strides, pads, dilations):
    x = _rng().standard_normal(x_shape).astype(np.float32)
    x[0, 1, 1, 1] = np.nan

    def xla(x):
        return jax.lax.reduce_window(x, -np.inf, jax.lax.max, (1, *kernel_hw, 1), (1, *strides, 1),
                                     ((0, 0), (pads[0], pads[2]), (pads[1], pads[3]), (0, 0)),
                                     window_dilation=(1, *dilations, 1))

    fn = jax.jit(lambda x: gemm.max_pool_nhwc(x, kernel=kernel_hw, strides=strides, pads=pads, dilations=dilations,
                                              xla=xla))
    assert f"custom_call @{gemm.MAX_POOL_TARGET}" in fn.lower(x).as_text()
    np.testing.assert_array_equal(np.asarray(fn(x)), np.asarray(jax.jit(xla)(x)))


@pytest.mark.parametrize("bias", [None, (1, 1, 9, 9)])
def test_attention_of_a_fused_projection_reads_it_in_place(kernel, bias):
    rng = _rng(3)
    qkv = rng.standard_normal((2, 9, 3 * 4 * 8)).astype(np.float32)
    mask = None if bias is None else np.triu(np.full(bias, -np.inf, np.float32), 1)
    args = (qkv,) + (() if mask is None else (mask,))
    fn = jax.jit(lambda x, *m: gemm.attention_qkv(x, 4, m[0] if m else None, scale=0.3))
    assert f"custom_call @{gemm.ATTENTION_QKV_TARGET}" in fn.lower(*args).as_text()
    q, k, v = (part.reshape(2, 9, 4, 8) for part in np.split(qkv, 3, axis=-1))
    np.testing.assert_allclose(np.asarray(fn(*args)), _attention_reference(q, k, v, mask, 0.3), rtol=2e-5, atol=2e-6)
    with pytest.raises(AutofuseError, match=r"qkv \(2, 9, 96\) is not \[B, S, 3 \* 5 \* D\]"):
        gemm.attention_qkv(qkv, 5)


@pytest.mark.parametrize("shape, bias", [((128, 768), True), ((3, 5, 20), False), ((1, 1), True)])
def test_layer_norm_kernel_equals_the_formula(kernel, shape, bias):
    rng = _rng(4)
    x = (rng.standard_normal(shape) * 3 + 1).astype(np.float32)
    scale, shift = rng.standard_normal(shape[-1]).astype(np.float32), rng.standard_normal(shape[-1]).astype(np.float32)
    args = (x, scale) + ((shift,) if bias else ())
    fn = jax.jit(lambda x, s, *b: gemm.layer_norm(x, s, b[0] if b else None, eps=1e-5))
    assert f"custom_call @{gemm.LAYER_NORM_TARGET}" in fn.lower(*args).as_text()
    x64 = x.astype(np.float64)
    ref = (x64 - x64.mean(-1, keepdims=True)) / np.sqrt(x64.var(-1, keepdims=True) + 1e-5) * scale + (shift if bias else 0)
    np.testing.assert_allclose(np.asarray(fn(*args)), ref, rtol=1e-5, atol=1e-5)
