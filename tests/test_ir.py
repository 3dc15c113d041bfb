"""The IR is immutable and its structural key ignores names and weight values."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from autofuse.ir import Const, Graph, Node, TensorType, topological_order


def _graph(names=("x", "h", "y"), shape=(1, 4), const=(1.0,)):
    x, h, y = names
    return Graph(
        nodes=(Node("Mul", (x, "c"), (h,)), Node("Relu", (h,), (y,))),
        inputs=(x,),
        outputs=(y,),
        types=((x, TensorType("float32", shape)), (h, TensorType("float32", shape)), (y, TensorType("float32", shape))),
        constants=(("c", Const(np.array(const, np.float32))),),
    )


def test_key_ignores_value_names():
    assert _graph().structural_key() == _graph(names=("a", "b", "out")).structural_key()


def test_key_sees_shapes_and_small_constants():
    assert _graph().structural_key() != _graph(shape=(2, 4)).structural_key()
    assert _graph().structural_key() != _graph(const=(2.0,)).structural_key()


def test_key_ignores_weight_values():
    def with_weight():
        return Graph(
            nodes=(Node("MatMul", ("x", "w"), ("y",)),),
            inputs=("x",), outputs=("y",),
            types=(("w", TensorType("float32", (128, 128))),),
            weights=("w",),
        )
    assert with_weight().structural_key() == with_weight().structural_key()


def test_graph_and_nodes_are_frozen():
    graph = _graph()
    with pytest.raises(dataclasses.FrozenInstanceError):
        graph.nodes = ()
    with pytest.raises(dataclasses.FrozenInstanceError):
        graph.nodes[0].op_type = "Add"


def test_const_hashes_by_value():
    assert hash(Const(np.arange(3))) == hash(Const(np.arange(3)))
    assert Const(np.arange(3)) != Const(np.arange(3).astype(np.int32))


def test_topological_order_sorts_and_detects_cycles():
    a, b = Node("Relu", ("h",), ("y",)), Node("Relu", ("x",), ("h",))
    assert topological_order([a, b], {"x"}) == (b, a)
    with pytest.raises(ValueError, match="cycle"):
        topological_order([Node("Relu", ("y",), ("h",)), Node("Relu", ("h",), ("y",))], set())
