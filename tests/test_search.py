"""The search: tasks cut from a model, their decision spaces, applying choices, proposals, scheduling."""
from __future__ import annotations

import random

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from autofuse.executable import Executable
from autofuse.frontend import import_model
from autofuse.rewrite.layout import CONV1X1_TO_MATMUL
from autofuse.search.evolution import EvolutionConfig, propose
from autofuse.search.scheduler import TaskState, next_task
from autofuse.search.space import (Choices, apply_choices, candidate_key, model_choices, task_choices,
                                   task_space)
from autofuse.search.task import extract_tasks, random_inputs
from autofuse.settle import settle
from conftest import make_model

RULES = {CONV1X1_TO_MATMUL.name: CONV1X1_TO_MATMUL}


def _block(prefix: str, x: str, rng) -> tuple[list, list]:
    """Conv 1x1 -> Add(bias) -> Relu, with its own weights."""
    w = numpy_helper.from_array(rng.standard_normal((8, 8, 1, 1)).astype(np.float32), f"{prefix}w")
    b = numpy_helper.from_array(rng.standard_normal((1, 8, 1, 1)).astype(np.float32), f"{prefix}b")
    nodes = [helper.make_node("Conv", [x, f"{prefix}w"], [f"{prefix}c"]),
             helper.make_node("Add", [f"{prefix}c", f"{prefix}b"], [f"{prefix}a"]),
             helper.make_node("Relu", [f"{prefix}a"], [f"{prefix}y"])]
    return nodes, [w, b]


def _two_blocks():
    rng = np.random.default_rng(0)
    n1, w1 = _block("p", "x", rng)
    n2, w2 = _block("q", "py", rng)
    proto = make_model(n1 + n2, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 6, 6])],
                       [helper.make_tensor_value_info("qy", TensorProto.FLOAT, None)], w1 + w2)
    return settle(import_model(proto, source="two"))


def test_identical_blocks_make_one_task_with_two_occurrences():
    model = _two_blocks()
    tasks = extract_tasks(model)
    assert len(tasks) == 1
    task = tasks[0]
    assert task.weight == 2
    assert [n.op_type for n in task.nodes] == ["Conv", "Add", "Relu"]
    assert task.model.graph.inputs == ("x0",)
    assert sorted(task.model.weights) == ["w0", "w1"]
    assert task.occurrences[0].node_outputs == ("pc", "pa", "py")
    described = task.describe()
    assert [n["op"] for n in described["nodes"]] == ["Conv", "Add", "Relu"]
    assert described["edges"] == [[0, 1], [1, 2]] and described["nodes"][0]["flops"] > 0


def test_space_lists_applicable_rules_and_yellow_edges():
    task = extract_tasks(_two_blocks())[0]
    space = task_space(task, RULES)
    assert dict(space.decisions) == {"node:0/algorithm": ("default", "conv1x1_to_matmul"),
                                     "edge:0->1/fuse": ("fuse", "split")}
    assert space.size() == 4 and len(space.all_candidates()) == 4
    assert space.canonical({"node:0/algorithm": "bogus"}) == space.default()


def test_choices_apply_to_the_task_and_every_occurrence_with_equal_outputs():
    model = _two_blocks()
    task = extract_tasks(model)[0]
    candidate = {"node:0/algorithm": "conv1x1_to_matmul", "edge:0->1/fuse": "split"}
    sub, barriers = apply_choices(task.model, task_choices(task, candidate), RULES)
    assert "MatMul" in [n.op_type for n in sub.graph.nodes] and len(barriers) == 1
    whole, barriers = apply_choices(model, model_choices([(task, candidate)]), RULES)
    assert [n.op_type for n in whole.graph.nodes].count("Conv") == 0
    assert set(barriers) <= {o for n in whole.graph.nodes for o in n.outputs} and len(barriers) == 2
    x = random_inputs(model)
    expected = Executable(model).compile()(x)[0]
    got = Executable(whole, barriers=barriers).compile()(x)[0]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    untouched, none = apply_choices(model, Choices(), RULES)
    assert untouched is model and none == frozenset()


def test_propose_starts_with_the_default_and_never_repeats():
    task = extract_tasks(_two_blocks())[0]
    space = task_space(task, RULES)
    rng = random.Random(0)
    first = propose(space, {}, 2, lambda pool: [0.0] * len(pool), rng)
    assert first[0] == space.default() and len(first) == 2
    measured = {candidate_key(c): (c, 1.0) for c in first}
    rest = propose(space, measured, 8, lambda pool: [0.0] * len(pool), rng)
    assert len(rest) == 2 and not any(candidate_key(c) in measured for c in rest)
    measured.update({candidate_key(c): (c, 1.0) for c in rest})
    assert propose(space, measured, 8, lambda pool: [0.0] * len(pool), rng) == []


def test_propose_follows_the_ranking_without_exploration():
    task = extract_tasks(_two_blocks())[0]
    space = task_space(task, RULES)
    measured = {candidate_key(space.default()): (space.default(), 1.0)}
    favourite = {"node:0/algorithm": "conv1x1_to_matmul", "edge:0->1/fuse": "split"}
    rank = lambda pool: [0.0 if c == favourite else 1.0 for c in pool]  # noqa: E731
    picked = propose(space, measured, 1, rank, random.Random(0), EvolutionConfig(epsilon=0.0))
    assert picked == [favourite]


def test_evolution_explores_large_spaces_by_mutation():
    task = extract_tasks(_two_blocks())[0]
    space = task_space(task, RULES)
    big = type(space)(space.decisions * 1 + tuple((f"edge:{i}->9/fuse", ("fuse", "split")) for i in range(10)))
    measured = {candidate_key(big.default()): (big.default(), 1.0)}
    picked = propose(big, measured, 5, lambda pool: list(range(len(pool))), random.Random(1),
                     EvolutionConfig(enumerate_below=4))
    assert len(picked) == 5 and all(candidate_key(c) not in measured for c in picked)


def test_scheduler_gives_every_task_a_round_then_follows_the_latency():
    task = extract_tasks(_two_blocks())[0]
    a, b = TaskState(task), TaskState(task)
    assert next_task([a, b]) is a
    a.rounds = 1
    assert next_task([a, b]) is b
    b.rounds = 1
    a.measured = {"k": ({}, 2.0)}
    b.measured = {"k": ({}, 1.0)}
    assert next_task([a, b]) is a
    a.exhausted = True
    assert next_task([a, b]) is b
    b.exhausted = True
    assert next_task([a, b]) is None


def test_programs_time_with_cold_weights():
    """Each run of a measured program reads another copy of the weights; the outputs do not change."""
    from autofuse.search.measure import COLD_BYTES, MAX_WEIGHT_COPIES, CompiledProgram, weight_copies

    assert weight_copies(0) == 1 and weight_copies(COLD_BYTES * 2) == 1
    assert weight_copies(COLD_BYTES // 4) == 4 and weight_copies(1) == MAX_WEIGHT_COPIES
    model = _two_blocks()
    program = CompiledProgram(Executable(model), random_inputs(model, 0), copies=3)
    assert program.copies == 3
    seen = []
    original = program.executable.run_device
    program.executable.run_device = lambda inputs, weights=None: seen.append(id(weights)) or original(inputs, weights)
    outputs = [program()[0] for _ in range(4)]
    assert len(set(seen[:3])) == 3 and seen[3] == seen[0]
    for out in outputs[1:]:
        np.testing.assert_array_equal(out, outputs[0])
