"""The OpenBLAS matmul kernel: equals the XLA dot, falls back without the kernel, survives jax.export."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from jax import export

from autofuse import blas, native
from autofuse.errors import AutofuseError


@pytest.fixture
def kernel():
    if blas.kernel_target() is None:
        pytest.skip(blas.unavailable_reason())
    return blas.kernel_target()


def _operands(lead, k, n, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((*lead, k)).astype(np.float32), rng.standard_normal((k, n)).astype(np.float32),
            rng.standard_normal(n).astype(np.float32))


def _reference(x, w, b, relu):
    y = x.astype(np.float64) @ w.astype(np.float64) + (0.0 if b is None else b)
    return np.maximum(y, 0) if relu else y


@pytest.mark.parametrize("lead, k, n", [((5,), 7, 3), ((2, 3), 16, 9), ((2, 1, 4), 33, 65), ((), 12, 5),
                                        ((0,), 4, 3), ((130,), 260, 70)])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("relu", [False, True])
def test_kernel_equals_the_dot(kernel, lead, k, n, bias, relu):
    x, w, b = _operands(lead, k, n)
    b = b if bias else None
    run = jax.jit(lambda x, w, *b: blas.blas_matmul(x, w, *b, relu=relu, impl="kernel"))
    got = np.asarray(run(x, w, *(() if b is None else (b,))))
    assert got.shape == (*lead, n)
    np.testing.assert_allclose(got, _reference(x, w, b, relu), rtol=1e-4, atol=1e-4 * np.sqrt(k))


@pytest.mark.parametrize("split", [False, True])
@pytest.mark.parametrize("m, n", [(64, 80), (8, 300), (301, 7), (700, 650)])
def test_split_and_whole_agree(kernel, split, m, n):
    x, w, b = _operands((m,), 512, n, seed=3)
    run = jax.jit(lambda x, w, b: blas.blas_matmul(x, w, b, relu=True, split=split, impl="kernel"))
    np.testing.assert_allclose(np.asarray(run(x, w, b)), _reference(x, w, b, True), rtol=1e-4, atol=1e-3)


def test_kernel_is_one_custom_call(kernel):
    x, w, b = _operands((4, 6), 8, 5)
    hlo = jax.jit(lambda x, w, b: blas.blas_matmul(x, w, b, relu=True)).lower(x, w, b).as_text()
    assert hlo.count(f"custom_call @{kernel}") == 1


def test_fallback_without_the_kernel(monkeypatch):
    monkeypatch.setattr(blas, "_binding", lambda: (None, "no C++ compiler found (test)"))
    x, w, b = _operands((3, 4), 10, 6)
    run = jax.jit(lambda x, w, b: blas.blas_matmul(x, w, b, relu=True))
    assert "custom_call" not in run.lower(x, w, b).as_text()
    np.testing.assert_allclose(np.asarray(run(x, w, b)), _reference(x, w, b, True), rtol=1e-5, atol=1e-5)
    with pytest.raises(AutofuseError, match="no C.. compiler found"):
        blas.blas_matmul(x, w, impl="kernel")


def test_other_dtypes_use_the_dot(kernel):
    x, w, _ = _operands((3,), 4, 2)
    run = jax.jit(lambda x, w: blas.blas_matmul(x, w))
    assert "custom_call" not in run.lower(x.astype(np.float64), w.astype(np.float64)).as_text()


def test_mismatched_operands_are_a_clear_error():
    with pytest.raises(AutofuseError, match=r"x \(2, 3\) and w \(4, 5\) do not multiply"):
        blas.blas_matmul(np.zeros((2, 3), np.float32), np.zeros((4, 5), np.float32))


def test_openblas_is_the_one_numpy_uses_and_runs_one_thread(kernel):
    import ctypes

    found = blas.find_openblas()
    assert "openblas" in found.path.lower() and "sgemm" in found.sgemm
    library = ctypes.CDLL(found.path)
    get_threads = getattr(library, blas._symbol(library, "openblas_get_num_threads")[0])
    assert get_threads() == 1


def _exported(target: str):
    x, w, b = _operands((2, 3), 8, 5)
    f = jax.jit(lambda x, w, b: blas.blas_matmul(x, w, b, relu=True))
    with pytest.raises(ValueError, match="custom calls whose targets have no compatibility guarantees"):
        export.export(f, platforms=("cpu",))(x, w, b)
    checks = [export.DisabledSafetyCheck.custom_call(target)]
    return export.export(f, platforms=("cpu",), disabled_checks=checks)(x, w, b), (x, w, b)


def test_export_round_trip_in_process(kernel):
    exported, (x, w, b) = _exported(kernel)
    restored = export.deserialize(exported.serialize())
    np.testing.assert_allclose(np.asarray(restored.call(x, w, b)), _reference(x, w, b, True), rtol=1e-4, atol=1e-4)


def test_export_round_trip_in_a_fresh_process(kernel, tmp_path):
    exported, operands = _exported(kernel)
    (tmp_path / "f.bin").write_bytes(bytes(exported.serialize()))
    np.savez(tmp_path / "in.npz", *operands)
    script = textwrap.dedent(f"""
        import numpy as np
        from jax import export
        from autofuse import blas
        assert blas.kernel_target() is not None   # registers the FFI target before compiling
        f = export.deserialize(bytearray(open({str(tmp_path / 'f.bin')!r}, 'rb').read()))
        args = np.load({str(tmp_path / 'in.npz')!r})
        np.save({str(tmp_path / 'out.npy')!r}, np.asarray(f.call(*[args[k] for k in sorted(args.files)])))
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), _reference(*operands, True), rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- the native build helper

def test_native_build_is_cached_under_autofuse_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOFUSE_CACHE", str(tmp_path / "cache"))
    if native.compiler() is None:
        pytest.skip("no C++ compiler")
    source = tmp_path / "seven.cc"
    source.write_text('extern "C" int Seven() { return 7; }\n')
    library = native.load(source)
    assert library.Seven() == 7
    built = list((tmp_path / "cache" / "kernels").iterdir())
    assert [p.name for p in built] == [native.library_path(source, native.compiler()).name]
    assert native.load(source) is library


def test_native_reports_why_it_is_unavailable(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOFUSE_CACHE", str(tmp_path / "cache"))
    broken = tmp_path / "broken.cc"
    broken.write_text("this is not C++\n")
    if native.compiler() is not None:
        with pytest.raises(native.NativeUnavailable, match="broken.cc: .* failed"):
            native.load(broken)
        assert not list((tmp_path / "cache" / "kernels").iterdir())  # no half-written library left
    monkeypatch.setenv("CXX", "no-such-compiler")
    with pytest.raises(native.NativeUnavailable, match="no C\\+\\+ compiler found"):
        native.load(broken)
    with pytest.raises(native.NativeUnavailable, match="no such kernel source"):
        native.load("missing.cc")
