"""Pruning models: balanced masks per layer, the least-squares correction, SparseMatMul rewriting."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import autofuse
from autofuse.errors import AutofuseError
from autofuse.sparsity import is_balanced, parse_pattern, prune_model, to_sparse_ops
from autofuse.sparsity.calib import run_batched
from autofuse.sparsity.patterns import bank_mask
from autofuse.sparsity.prune import gram, least_squares, obs_mask, reconstruction_error
from conftest import make_model


def _correlated_inputs(n: int, k: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mixing = rng.standard_normal((k, k)) / np.sqrt(k) + np.eye(k)
    return (rng.standard_normal((n, k)) @ mixing).astype(np.float32)


@pytest.mark.parametrize("pattern", ["balanced:8/16", "balanced:4/16", "nm:2:4"])
def test_correction_lowers_the_reconstruction_error(pattern):
    p = parse_pattern(pattern)
    x = _correlated_inputs(512, 64)
    rows = np.random.default_rng(1).standard_normal((32, 64)).astype(np.float32)
    h = gram(x, 64)
    magnitude = bank_mask(np.abs(rows), p)
    plain = reconstruction_error(rows * magnitude, rows, h)
    refit_same_mask = reconstruction_error(least_squares(rows, magnitude, h), rows, h)
    mask = obs_mask(rows, h, p)
    corrected = least_squares(rows, mask, h)
    assert is_balanced(mask, p) and np.all(corrected[~mask] == 0)
    assert refit_same_mask < plain and reconstruction_error(corrected, rows, h) < plain
    # the Gram-matrix error is the real output error
    direct = np.linalg.norm(x @ (corrected - rows).T) / np.linalg.norm(x @ rows.T)
    assert reconstruction_error(corrected, rows, h) == pytest.approx(direct, rel=1e-3)


def _mlp_path(tmp_path, k: int = 32, hidden: int = 48, out: int = 20):
    rng = np.random.default_rng(0)
    w0 = numpy_helper.from_array(rng.standard_normal((k, hidden)).astype(np.float32), "w0")
    w1 = numpy_helper.from_array(rng.standard_normal((out, hidden)).astype(np.float32), "w1")
    b1 = numpy_helper.from_array(rng.standard_normal((out,)).astype(np.float32), "b1")
    w2 = numpy_helper.from_array(rng.standard_normal((out, 12)).astype(np.float32), "w2")
    model = make_model(
        [helper.make_node("MatMul", ["x", "w0"], ["h"], name="mm"),
         helper.make_node("Relu", ["h"], ["r"], name="relu"),
         helper.make_node("Gemm", ["r", "w1", "b1"], ["g"], name="gemm", transB=1, alpha=0.5, beta=2.0),
         helper.make_node("MatMul", ["g", "w2"], ["y"], name="narrow")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 12])],
        [w0, w1, b1, w2],
    )
    path = tmp_path / "mlp.onnx"
    onnx.save(model, path)
    return path


def test_prune_model_masks_every_fitting_layer_and_says_why_not_the_others(tmp_path):
    model = autofuse.import_onnx(_mlp_path(tmp_path), shapes={"x": (4, 32)})
    p = parse_pattern("balanced:4/16")
    result = prune_model(model, p)
    assert set(result.masks) == {"mm", "gemm"}
    assert "reduction length 20 is not a multiple of the bank size 16" in result.skipped["narrow"]
    w0 = result.model.weights["w0"]  # MatMul: banks run down the columns of W (K, N)
    assert is_balanced(w0.T != 0, p) and np.count_nonzero(w0) == w0.size // 4
    w1 = result.model.weights["w1"]  # Gemm transB=1: W is (N, K), banks along its rows
    assert is_balanced(w1 != 0, p)
    np.testing.assert_array_equal(result.model.weights["w2"], model.weights["w2"])


def test_sparse_ops_compute_what_the_pruned_dense_model_computes(tmp_path):
    model = autofuse.import_onnx(_mlp_path(tmp_path), shapes={"x": (4, 32)})
    result = prune_model(model, parse_pattern("balanced:8/16"))
    sparse = to_sparse_ops(result)
    ops = [(n.op_type, n.domain) for n in sparse.model.graph.nodes]
    assert ops == [("SparseMatMul", "autofuse"), ("Relu", ""), ("SparseMatMul", "autofuse"), ("MatMul", "")]
    assert not {"w0", "w1"} & set(sparse.model.weights)
    x = {"x": np.random.default_rng(3).standard_normal((10, 32)).astype(np.float32)}
    np.testing.assert_allclose(run_batched(sparse.model, x)[0], run_batched(result.model, x)[0], rtol=1e-4, atol=1e-4)


def test_correction_on_calibration_data_lowers_the_model_error(tmp_path):
    model = autofuse.import_onnx(_mlp_path(tmp_path), shapes={"x": (8, 32)})
    basis = np.random.default_rng(9).standard_normal((8, 32))  # inputs near an 8-dim subspace

    def inputs(n, seed):
        rng = np.random.default_rng(seed)
        return {"x": (rng.standard_normal((n, 8)) @ basis + 0.05 * rng.standard_normal((n, 32))).astype(np.float32)}

    calib, held_out = inputs(256, 0), inputs(64, 5)
    dense = run_batched(model, held_out)[0]

    def error(result):
        return np.linalg.norm(run_batched(result.model, held_out)[0] - dense) / np.linalg.norm(dense)

    plain = prune_model(model, parse_pattern("balanced:4/16"), calib=calib)
    corrected = prune_model(model, parse_pattern("balanced:4/16"), calib=calib, correct=True)
    assert all(r.corrected and r.error_final < r.error_magnitude for r in corrected.reports)
    assert error(corrected) < 0.5 * error(plain)


def test_per_layer_patterns_and_clear_errors(tmp_path):
    model = autofuse.import_onnx(_mlp_path(tmp_path), shapes={"x": (4, 32)})
    result = prune_model(model, {"gemm": parse_pattern("nm:1:4")})
    assert set(result.masks) == {"gemm"}
    np.testing.assert_array_equal(result.model.weights["w0"], model.weights["w0"])
    with pytest.raises(AutofuseError, match="'relu': no such MatMul/Gemm/Conv node"):
        prune_model(model, {"relu": parse_pattern("nm:1:4")})
    with pytest.raises(AutofuseError, match="needs calibration inputs"):
        prune_model(model, parse_pattern("nm:1:4"), correct=True)


def test_conv_weights_are_pruned_per_output_channel(tmp_path):
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 4, 2, 2)).astype(np.float32), "w")
    path = tmp_path / "conv.onnx"
    onnx.save(make_model([helper.make_node("Conv", ["x", "w"], ["y"], name="conv")],
                         [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 5, 5])],
                         [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 4, 4])], [w]), path)
    model = autofuse.import_onnx(path)
    result = prune_model(model, parse_pattern("balanced:4/16"))
    assert is_balanced(result.model.weights["w"].reshape(8, 16) != 0, parse_pattern("balanced:4/16"))
    sparse = to_sparse_ops(result)
    assert sparse.dense == {"conv": "Conv layers keep masked dense weights"}
