"""FLOP and byte accounting of rewrites: per rule, per family, per model."""
from __future__ import annotations

import numpy as np
from onnx import helper

from autofuse.cli import main
from autofuse.rewrite.accounting import account, cost
from autofuse.rewrite.folding import FOLDING
from autofuse.rewrite.layout import LAYOUT
from test_rewrite_engine import rng_array, tiny


def _conv_bn():
    c = 8
    weights = {"w": rng_array(c, c, 3, 3), "s": rng_array(c) ** 2 + 0.5, "b": rng_array(c, seed=1),
               "m": rng_array(c, seed=2), "v": rng_array(c, seed=3) ** 2 + 1.0}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["n"]),
             helper.make_node("Relu", ["n"], ["y"])]
    return tiny(nodes, {"x": [1, c, 10, 10]}, ["y"], weights)


def test_cost_counts_conv_multiply_adds_twice():
    model = _conv_bn()
    conv = 2.0 * 8 * 10 * 10 * 8 * 3 * 3
    assert cost(model).flops >= conv
    assert cost(model).nodes == 3


def test_folding_removes_the_batchnorm_work_and_bytes_per_rule_family_and_model():
    model = _conv_bn()
    lines = account(model, {"folding": FOLDING, "layout": LAYOUT})
    rule = next(a for a in lines if a.name == "folding/fold_batchnorm_into_conv")
    assert rule.scope == "rule" and rule.fires == 1
    assert rule.flops_removed > 0 and rule.bytes_removed > 0 and rule.after.nodes == 2
    family = next(a for a in lines if a.scope == "family" and a.name == "folding")
    assert family.after.flops == rule.after.flops
    whole = lines[-1]
    assert whole.scope == "model" and whole.before.flops == cost(model).flops
    assert whole.fires == sum(a.fires for a in lines if a.scope == "family")


def test_rewrites_command_prints_a_line_per_rule(tmp_path, capsys):
    import onnx
    from conftest import make_model
    from onnx import TensorProto, numpy_helper

    w = numpy_helper.from_array(np.ones((4, 4, 1, 1), np.float32), "w")
    proto = make_model([helper.make_node("Conv", ["x", "w"], ["y"])],
                       [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 5, 5])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 5, 5])], [w])
    onnx.save(proto, tmp_path / "m.onnx")
    assert main(["rewrites", str(tmp_path / "m.onnx"), "--rewrite", "folding,layout"]) == 0
    out = capsys.readouterr().out
    assert "layout/conv1x1_to_matmul" in out and "model" in out
