"""`autofuse sparsify`: a pruned ONNX file that onnxruntime runs and that matches autofuse's sparse run."""
from __future__ import annotations

import numpy as np
import onnx

import autofuse
from autofuse.cli import main
from autofuse.datasets.digits import digits_model, digits_split
from autofuse.runners.onnxruntime import reference_session, run_session
from autofuse.sparsity import parse_pattern, prune_model, to_sparse_ops
from autofuse.sparsity.calib import run_batched


def test_sparsify_writes_an_onnx_file_onnxruntime_runs_and_matches(tmp_path, capsys):
    split = digits_split()
    np.savez(tmp_path / "calib.npz", x=split.x_train[:256])
    out = tmp_path / "sparse.onnx"
    assert main(["sparsify", str(digits_model()), "--pattern", "balanced:4/16", "--calib", str(tmp_path / "calib.npz"),
                 "--correct", "--shape", "x=64x64", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "3 layers pruned to balanced:4/16 (75.0% sparse) with least-squares correction" in printed
    onnx.checker.check_model(str(out))
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(out)).graph.initializer}
    for name in ("fc0.weight", "fc1.weight", "fc2.weight"):  # a kept weight may be refit to zero
        rows = weights[name].T
        assert np.all((rows.reshape(len(rows), -1, 16) != 0).sum(-1) <= 4)
    x = split.x_test[:64]
    ours = to_sparse_ops(prune_model(autofuse.import_onnx(digits_model(), shapes={"x": (64, 64)}),
                                     parse_pattern("balanced:4/16"), calib={"x": split.x_train[:256]},
                                     correct=True)).model
    expected = run_batched(ours, {"x": x})[0]
    np.testing.assert_allclose(run_session(reference_session(str(out)), {"x": x})[0], expected, rtol=1e-4, atol=1e-4)


def test_sparsify_errors_are_one_line(tmp_path, capsys):
    model = str(digits_model())
    assert main(["sparsify", model, "--pattern", "balanced:4", "-o", str(tmp_path / "a.onnx")]) == 2
    assert "--pattern 'balanced:4': expected balanced:K/B" in capsys.readouterr().err
    assert main(["sparsify", model, "--pattern", "nm:2:4", "--correct", "--shape", "x=1x64", "-o", str(tmp_path / "a.onnx")]) == 2
    assert "--correct needs calibration inputs" in capsys.readouterr().err
    np.savez(tmp_path / "wrong.npz", y=np.zeros((2, 64), np.float32))
    assert main(["sparsify", model, "--pattern", "nm:2:4", "--calib", str(tmp_path / "wrong.npz"), "--shape", "x=1x64",
                 "-o", str(tmp_path / "a.onnx")]) == 2
    assert "no array for model input(s) ['x']" in capsys.readouterr().err
