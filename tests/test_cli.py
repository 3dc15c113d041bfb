"""The command line: runs, benchmarks and one-line errors."""
from __future__ import annotations

import json

import numpy as np
import pytest

from autofuse.cli import main


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for command in ("run", "bench", "analyze", "conformance", "zoo"):
        assert command in out


def test_run_with_inputs_and_output(tmp_path, tiny_model_path, capsys):
    x = np.array([[1, 1, 1, 1]], np.float32)
    np.savez(tmp_path / "x.npz", x=x)
    assert main(["run", str(tiny_model_path), "--inputs", str(tmp_path / "x.npz"),
                 "--output", str(tmp_path / "y.npz")]) == 0
    with np.load(tmp_path / "y.npz") as out:
        np.testing.assert_array_equal(out["y"], [[0, 0, 1, 2]])
    assert "compiled in" in capsys.readouterr().out


def test_run_reports_a_truncated_file_in_one_line(tmp_path, tiny_model_path, capsys):
    bad = tmp_path / "cut.onnx"
    bad.write_bytes(tiny_model_path.read_bytes()[:40])
    assert main(["run", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("autofuse: error:") and "cut.onnx" in err and "\n" not in err


def test_run_reports_missing_inputs(tmp_path, tiny_model_path, capsys):
    np.savez(tmp_path / "wrong.npz", z=np.zeros(3))
    assert main(["run", str(tiny_model_path), "--inputs", str(tmp_path / "wrong.npz")]) == 2
    assert "'x'" in capsys.readouterr().err


def test_bad_shape_flag_names_the_flag(tiny_model_path):
    with pytest.raises(SystemExit, match="--shape"):
        main(["run", str(tiny_model_path), "--shape", "x=1xfour"])


def test_bench_against_onnxruntime(tiny_model_path, capsys):
    assert main(["bench", str(tiny_model_path), "--seconds", "0.2", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert set(row["median_ms"]) == {"autofuse (XLA default)", "onnxruntime"}
    assert all(v > 0 for v in row["median_ms"].values())
    assert row["ratio_to_ort"]["autofuse (XLA default)"] > 0
    assert row["max_rel_diff"]["autofuse (XLA default)"] < 1e-6


def test_bench_with_plans_counts_kernels(tiny_model_path, capsys):
    assert main(["bench", str(tiny_model_path), "--seconds", "0.2", "--plans"]) == 0
    out = capsys.readouterr().out
    assert "DNNFusion plan" in out and "op by op" in out and "onnxruntime" in out


def test_unknown_zoo_name_lists_the_known_ones(capsys):
    assert main(["run", "zoo:nope"]) == 2
    assert "zoo:resnet50" in capsys.readouterr().err


def test_analyze_json(tiny_model_path, capsys):
    assert main(["analyze", str(tiny_model_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["onnx_ops"] == 2 and report["compute_ops"] == 2
    assert report["ops_per_mapping"] == {"ONE_TO_MANY": 1, "ONE_TO_ONE": 1}
    assert report["groups"] == [["Add:Add_0", "Relu:Relu_1"]]
    assert report["kernels_op_by_op"] >= report["kernels_plan"] >= 1
    assert report["fusion_rate"] == 2.0


def test_bench_with_rewrites_adds_a_contender(tiny_model_path, capsys):
    assert main(["bench", str(tiny_model_path), "--seconds", "0.2", "--rewrite", "folding,layout", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["max_rel_diff"]["rewritten (folding+layout)"] < 1e-6


def test_unknown_rewrite_family_is_named(tiny_model_path, capsys):
    assert main(["run", str(tiny_model_path), "--rewrite", "magic"]) == 2
    assert "magic" in capsys.readouterr().err
