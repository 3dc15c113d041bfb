"""The compressed format and the sparse matmul: native kernel and XLA form equal the masked dense product."""
from __future__ import annotations

import jax
import numpy as np
import pytest

from autofuse.sparsity import native
from autofuse.sparsity.compressed import compress, compress_magnitude, decompress
from autofuse.sparsity.matmul import sparse_matmul
from autofuse.sparsity.patterns import bank_mask, parse_pattern

PATTERNS = ["balanced:4/16", "balanced:2/16", "nm:2:4", "nm:1:8", "balanced:8/32", "balanced:16/64"]


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("outputs", [16, 40])
def test_compress_round_trip(pattern, outputs):
    p = parse_pattern(pattern)
    rows = np.random.default_rng(0).standard_normal((outputs, 128)).astype(np.float32)
    mask = bank_mask(np.abs(rows), p)
    packed = compress(rows, mask, p)
    np.testing.assert_array_equal(decompress(packed), rows * mask)
    assert packed.offsets.dtype == np.uint8 and packed.values.shape == packed.offsets.shape
    assert packed.values.shape[0] * 16 >= outputs and packed.values.shape[-1] == 16
    assert packed.nbytes == -(-outputs // 16) * 16 * 128 * p.keep // p.bank * 5


def test_compress_refuses_an_unbalanced_mask():
    p = parse_pattern("nm:2:4")
    rows = np.ones((16, 16), np.float32)
    mask = bank_mask(rows, p)
    mask[3, 0] = not mask[3, 0]
    with pytest.raises(Exception, match="not balanced"):
        compress(rows, mask, p)


def _check(pattern: str, m: int, k: int, n: int, impl: str) -> None:
    rng = np.random.default_rng(m * 7 + n)
    packed = compress_magnitude(rng.standard_normal((n, k)).astype(np.float32), parse_pattern(pattern))
    x = rng.standard_normal((m, k)).astype(np.float32)
    expected = x.astype(np.float64) @ decompress(packed).T.astype(np.float64)
    run = jax.jit(lambda a, v, o: sparse_matmul(a, v, o, outputs=packed.outputs, window=packed.window, impl=impl))
    got = np.asarray(run(x, packed.values, packed.offsets))
    assert got.shape == (m, n)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("m", [1, 5, 13, 30])
def test_native_kernel_equals_masked_dense(pattern, m):
    if native.kernel_target() is None:
        pytest.skip(native.unavailable_reason())
    _check(pattern, m, 128, 40, "kernel")


@pytest.mark.parametrize("pattern", ["balanced:4/16", "nm:1:8", "balanced:16/64"])
@pytest.mark.parametrize("m", [1, 9])
def test_xla_form_equals_masked_dense(pattern, m):
    _check(pattern, m, 64, 24, "xla")


@pytest.mark.parametrize("pattern", ["balanced:4/16", "nm:2:4", "balanced:16/64"])
@pytest.mark.parametrize("m", [1, 17])
def test_pallas_kernel_equals_masked_dense(pattern, m):
    """The GPU kernel, run in Pallas' interpret mode on CPU."""
    _check(pattern, m, 128, 40, "pallas")


def test_kernel_is_a_custom_call_and_batches_keep_their_shape():
    if native.kernel_target() is None:
        pytest.skip(native.unavailable_reason())
    packed = compress_magnitude(np.ones((32, 64), np.float32), parse_pattern("balanced:4/16"))
    fn = jax.jit(lambda a, v, o: sparse_matmul(a, v, o, outputs=32, window=16))
    x = np.ones((2, 3, 64), np.float32)
    assert "custom_call" in fn.lower(x, packed.values, packed.offsets).as_text()
    np.testing.assert_allclose(np.asarray(fn(x, packed.values, packed.offsets)), np.full((2, 3, 32), 16.0))


def test_the_build_is_cached_on_disk(monkeypatch):
    if native.kernel_target() is None:
        pytest.skip(native.unavailable_reason())
    cxx = native.compiler()
    assert native.library_path(cxx).is_file()

    def no_build(*args):
        raise AssertionError("rebuilt although the library is cached")

    monkeypatch.setattr(native, "build", no_build)
    native.kernel_target.cache_clear()
    try:
        assert native.kernel_target() == native.TARGET
    finally:
        native.kernel_target.cache_clear()


def test_without_a_compiler_the_xla_form_is_used(monkeypatch, tmp_path):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("AUTOFUSE_CACHE", str(tmp_path))
    native.kernel_target.cache_clear()
    try:
        assert native.kernel_target() is None and "no C++ compiler" in native.unavailable_reason()
        packed = compress_magnitude(np.ones((16, 32), np.float32), parse_pattern("nm:2:4"))
        fn = jax.jit(lambda a, v, o: sparse_matmul(a, v, o, outputs=16, window=16))
        assert "custom_call" not in fn.lower(np.ones((1, 32), np.float32), packed.values, packed.offsets).as_text()
        np.testing.assert_allclose(np.asarray(fn(np.ones((1, 32), np.float32), packed.values, packed.offsets)),
                                   np.full((1, 16), 16.0))
    finally:
        native.kernel_target.cache_clear()
