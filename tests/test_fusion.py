"""DNNFusion's table, the planner, and plan lowering."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from autofuse.executable import Executable
from autofuse.frontend import import_model, read_model_bytes
from autofuse.fusion.extended import extend
from autofuse.fusion.lower import compile_plan, kernel_count, op_by_op_plan
from autofuse.fusion.planner import plan_fusion
from autofuse.fusion.table import FUSION_TABLE, Verdict
from autofuse.ops.registry import Mapping
from autofuse.settle import settle
from conftest import make_model

# One representative op per mapping type, each taking and giving a 4x8 float tensor.
REPRESENTATIVE = {
    Mapping.ONE_TO_ONE: ("Relu", [], {}),
    Mapping.REORGANIZE: ("Reshape", [np.array([4, 8], np.int64)], {}),
    Mapping.SHUFFLE: ("Transpose", [], {"perm": [0, 1]}),
    Mapping.ONE_TO_MANY: ("Expand", [np.array([4, 8], np.int64)], {}),
    Mapping.MANY_TO_MANY: ("Softmax", [], {"axis": -1}),
}


def _chain(first: Mapping, second: Mapping):
    nodes, inits = [], []
    value = "x"
    for k, kind in enumerate((first, second)):
        op, consts, attrs = REPRESENTATIVE[kind]
        names = [value]
        for j, c in enumerate(consts):
            inits.append(numpy_helper.from_array(c, f"c{k}{j}"))
            names.append(f"c{k}{j}")
        value = f"v{k}"
        nodes.append(helper.make_node(op, names, [value], name=f"n{k}", **attrs))
    proto = make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8])],
        [helper.make_tensor_value_info(value, TensorProto.FLOAT, [4, 8])],
        inits,
    )
    proto = read_model_bytes(proto.SerializeToString(), source="chain")
    return settle(import_model(proto, source="chain"))


def test_table_is_complete_and_red_where_dnnfusion_says():
    assert set(FUSION_TABLE) == set(itertools.product(Mapping, Mapping))
    reds = {k for k, cell in FUSION_TABLE.items() if cell.verdict is Verdict.RED}
    assert reds == {(Mapping.ONE_TO_MANY, Mapping.MANY_TO_MANY), (Mapping.MANY_TO_MANY, Mapping.MANY_TO_MANY)}


@pytest.mark.parametrize("first,second", list(itertools.product(Mapping, Mapping)),
                         ids=lambda m: m.name)
def test_planner_obeys_each_cell(first, second):
    model = _chain(first, second)
    eg = extend(model.graph)
    assert [i.mapping for i in eg.infos] == [first, second]
    cell = FUSION_TABLE[(first, second)]
    plan = plan_fusion(eg)
    if cell.verdict is Verdict.RED:
        assert len(plan.groups) == 2 and not plan.decisions
    elif cell.verdict is Verdict.GREEN:
        assert plan.groups == ((0, 1),) and not plan.decisions
        assert plan.group_types == (cell.fused.name,)
    else:
        assert plan.groups == ((0, 1),)
        (decision,) = plan.decisions
        assert decision.key == "n0->n1" and decision.fuse
        split = plan_fusion(eg, {"n0->n1": False})
        assert len(split.groups) == 2 and not split.decisions[0].fuse


def test_plan_lowering_keeps_outputs_and_counts_kernels():
    # Relu -> Exp -> Softmax -> Relu: op by op needs more kernels than the plan.
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="relu1"),
        helper.make_node("Exp", ["a"], ["b"], name="exp"),
        helper.make_node("Softmax", ["b"], ["c"], name="softmax", axis=-1),
        helper.make_node("Relu", ["c"], ["y"], name="relu2"),
    ]
    proto = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 16])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, 16])])
    model = settle(import_model(read_model_bytes(proto.SerializeToString()), source="t"))
    x = {"x": np.random.default_rng(0).normal(size=(8, 16)).astype(np.float32)}
    reference = Executable(model)(x)[0]
    plan = plan_fusion(extend(model.graph))
    fused = compile_plan(model, plan)
    separate = compile_plan(model, op_by_op_plan(model))
    np.testing.assert_allclose(fused(x)[0], reference, rtol=1e-6)
    np.testing.assert_allclose(separate(x)[0], reference, rtol=1e-6)
    assert kernel_count(separate.optimized_hlo()) > kernel_count(fused.optimized_hlo()) >= 1


def test_extended_graph_marks_removable_results_and_properties():
    nodes = [
        helper.make_node("Mul", ["x", "x"], ["a"], name="mul"),
        helper.make_node("Relu", ["a"], ["b"], name="relu"),
        helper.make_node("Add", ["a", "b"], ["y"], name="add"),
    ]
    proto = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    model = settle(import_model(read_model_bytes(proto.SerializeToString()), source="t"))
    infos = {i.node.name: i for i in extend(model.graph).infos}
    assert not infos["mul"].removable  # read by Relu and Add
    assert infos["relu"].removable
    assert not infos["add"].removable  # a graph output
    assert {"associative", "commutative", "distributive"} <= infos["mul"].properties
    assert infos["relu"].properties == frozenset()
    assert infos["mul"].flops == 6 and infos["mul"].bytes == 3 * 6 * 4


@pytest.mark.parametrize("name", ["zoo:resnet50", "zoo:bert_base"])
def test_dnnfusion_plan_matches_unfused_outputs_on_zoo(name):
    from autofuse.api import example_inputs, import_onnx
    from autofuse.errors import ModelLoadError

    try:
        model = import_onnx(name)
    except ModelLoadError as error:
        pytest.skip(str(error))
    inputs = example_inputs(model, seed=0)
    plan = plan_fusion(extend(model.graph))
    assert len(plan.groups) < len(model.graph.nodes)
    covered = sorted(i for g in plan.groups for i in g)
    assert covered == list(range(len(model.graph.nodes)))
    expected = Executable(model)(inputs)
    for got, want in zip(compile_plan(model, plan)(inputs), expected):
        scale = float(np.max(np.abs(want))) or 1.0
        assert float(np.max(np.abs(got - want))) <= 1e-5 * scale
