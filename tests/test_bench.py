"""`autofuse bench --families`: every rewrite family alone, all together, onnxruntime, in one run."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from autofuse.api import rule_families
from autofuse.bench import ALL, LOWERING_FAMILIES, ORT, XLA, family_pipelines, first
from autofuse.cli import main
from conftest import make_model


@pytest.fixture
def conv_net_path(tmp_path):
    """x (1x4x6x6) -> Conv 3x3 -> BatchNorm -> Relu -> flatten -> MatMul (144 -> 10)."""
    rng = np.random.default_rng(0)
    c = 4
    tensors = {"w": rng.standard_normal((c, c, 3, 3)), "s": rng.random(c) + 0.5, "b": rng.standard_normal(c),
               "m": rng.standard_normal(c), "v": rng.random(c) + 0.5, "fc": rng.standard_normal((c * 36, 10))}
    initializers = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in tensors.items()]
    initializers.append(numpy_helper.from_array(np.array([1, -1], np.int64), "flat"))
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["n"]),
             helper.make_node("Relu", ["n"], ["r"]),
             helper.make_node("Reshape", ["r", "flat"], ["f"]),
             helper.make_node("MatMul", ["f", "fc"], ["y"])]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, 6, 6])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], initializers)
    path = tmp_path / "conv_net.onnx"
    onnx.save(model, path)
    return path


def test_family_pipelines_time_each_family_alone_then_all_then_each_lowering_first():
    families = rule_families()
    variants = family_pipelines(families)
    assert list(variants)[:len(families)] == list(families)
    assert all(variants[f] == [families[f]] for f in families)
    assert variants[ALL] == list(families.values())
    lowering = [f for f in families if f in LOWERING_FAMILIES]
    assert len(lowering) > 1 and first(lowering[0]) not in variants
    for family in lowering[1:]:
        order = [next(f for f in families if families[f] is s) for s in variants[first(family)]]
        assert sorted(order) == sorted(families)
        assert [f for f in order if f in LOWERING_FAMILIES][0] == family
        assert [f for f in order if f not in LOWERING_FAMILIES] == [f for f in families if f not in LOWERING_FAMILIES]
    assert list(family_pipelines({"folding": families["folding"], "algorithm": families["algorithm"]})) == [
        "folding", "algorithm", ALL]


def test_bench_families_prints_every_family_with_ratios(conv_net_path, capsys):
    assert main(["bench", str(conv_net_path), "--families", "--seconds", "0.05"]) == 0
    rows = {}
    for line in capsys.readouterr().out.splitlines():
        for name in [XLA, *rule_families(), ALL, first("blas"), ORT]:
            if f" {name} " in line and name not in rows:
                rows[name] = line
    assert set(rows) == {XLA, *rule_families(), ALL, first("blas"), ORT}
    # algebraic finds nothing to do here: the same model as XLA's default, not timed twice.
    assert f"same model as {XLA}" in rows["algebraic"]
    for name in (XLA, "folding", "layout", ALL, ORT):
        vs_xla, vs_ort = rows[name].split(" ms ")[1].split()[1:3]
        assert float(vs_xla) > 0 and float(vs_ort) > 0
    assert rows[ORT].split(" ms ")[1].split()[2] == "1.00"


def test_bench_families_json_has_work_removed_ratios_and_agreement(conv_net_path, capsys):
    assert main(["bench", str(conv_net_path), "--families", "--seconds", "0.05", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    rewrites = row["rewrites"]
    folding = rewrites["folding"]
    assert folding["fired"] == {"fold_batchnorm_into_conv": 1}
    assert folding["flops_after"] < folding["flops_before"] and folding["nodes_after"] == folding["nodes_before"] - 1
    assert rewrites["algebraic"]["same_as"] == XLA and "algebraic" not in row["median_ms"]
    assert rewrites["blas"]["fired"].get("matmul_blas") == 1
    assert "matmul_blas" not in rewrites[ALL]["fired"], "algorithm's matmul_weight_nk takes the MatMul first"
    assert rewrites[first("blas")]["fired"].get("matmul_blas") == 1
    for name in (XLA, "folding", ALL, first("blas")):
        assert row["ratio_to_ort"][name] > 0 and row["ratio_to_xla"][name] > 0
        assert row["max_rel_diff"][name] < 1e-4
    assert row["ratio_to_xla"][XLA] == 1.0


def test_bench_families_restricts_to_the_named_families(conv_net_path, capsys):
    assert main(["bench", str(conv_net_path), "--families", "--rewrite", "folding", "--seconds", "0.05",
                 "--compare", "none", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert list(row["rewrites"]) == ["folding"] and set(row["median_ms"]) == {XLA, "folding"}


def test_bench_families_names_an_unknown_family(conv_net_path, capsys):
    assert main(["bench", str(conv_net_path), "--families", "--rewrite", "magic"]) == 2
    assert "magic" in capsys.readouterr().err
