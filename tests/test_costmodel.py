"""Cost model: features, the analytic and random baselines, metrics, the GNN, training, save/load."""
from __future__ import annotations

import fnmatch
import itertools
import json
import math
import tomllib
import warnings
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from autofuse.costmodel import gnn
from autofuse.costmodel.base import AnalyticModel, RandomModel, Sample, default_cost_model
from autofuse.costmodel.features import (EDGE_FEATURES, GLOBAL_FEATURES, NODE_FEATURES, batch, featurize)
from autofuse.costmodel.gnn import CostModelFileError, GNNConfig, GNNModel
from autofuse.costmodel.metrics import (best_so_far_curve, kendall, measurements_to_reach, ranking_report,
                                        spearman, top_k_recall)
from autofuse.costmodel.train import TrainConfig, make_dataset, train

TARGET = {"kind": "cpu", "device": "test cpu", "isa": "avx2,avx512f", "jax_version": "0", "jaxlib_version": "0",
          "xla_flags": ""}


def conv_chain(channels: int, size: int) -> dict:
    """A Conv -> Relu -> Add task description, as search.task.describe_graph writes it."""
    shape = [1, channels, size, size]
    elems = channels * size * size
    conv_flops = 2.0 * elems * channels * 9
    return {
        "nodes": [
            {"op": "Conv", "domain": "", "mapping": "many_to_many", "in_shapes": [shape, [channels, channels, 3, 3]],
             "out_shape": shape, "dtype": "float32", "flops": conv_flops, "bytes": 8.0 * elems,
             "attrs": {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "strides": [1, 1]}},
            {"op": "Relu", "domain": "", "mapping": "one_to_one", "in_shapes": [shape], "out_shape": shape,
             "dtype": "float32", "flops": float(elems), "bytes": 8.0 * elems, "attrs": {}},
            {"op": "Add", "domain": "", "mapping": "one_to_one", "in_shapes": [shape, shape], "out_shape": shape,
             "dtype": "float32", "flops": float(elems), "bytes": 12.0 * elems, "attrs": {}},
        ],
        "edges": [[0, 1], [1, 2]],
        "inputs": [shape, shape],
        "outputs": [shape],
    }


def synthetic(tasks: list[tuple[int, int]], seed: int = 0) -> tuple[list[Sample], np.ndarray, list[str]]:
    """Candidates of conv-chain tasks with a known latency law: Winograd x0.6, each split edge x1.3."""
    rng = np.random.default_rng(seed)
    samples, latencies, groups = [], [], []
    for channels, size in tasks:
        description = conv_chain(channels, size)
        key = f"conv{channels}x{size}"
        base_s = description["nodes"][0]["flops"] / 5e10
        choices = (("default", "winograd_f2x2_3x3"), ("fuse", "split"), ("fuse", "split"))
        for algorithm, e01, e12 in itertools.product(*choices):
            candidate = {"node:0/algorithm": algorithm, "edge:0->1/fuse": e01, "edge:1->2/fuse": e12}
            factor = (0.6 if algorithm != "default" else 1.0) * 1.3 ** [e01, e12].count("split")
            samples.append(Sample(key, description, candidate, TARGET))
            latencies.append(base_s * factor * math.exp(rng.normal(0, 0.02)))
            groups.append(key)
    return samples, np.array(latencies), groups


def sample(candidate: dict, description: dict | None = None) -> Sample:
    return Sample("w", description or conv_chain(16, 8), candidate, TARGET)


# features

def test_features_have_fixed_widths_and_ignore_unknown_keys():
    g = featurize(sample({"node:0/algorithm": "brand_new_rule", "node:99/algorithm": "x", "edge:5->6/fuse": "split",
                          "edge:nonsense": 1, "global/threads": 2, "not a key at all": [1, 2]}))
    assert g.nodes.shape == (3, NODE_FEATURES)
    assert g.edges.shape == (2, EDGE_FEATURES)
    assert g.globals.shape == (GLOBAL_FEATURES,)
    assert g.senders.tolist() == [0, 1] and g.receivers.tolist() == [1, 2]
    assert np.all(np.isfinite(g.nodes)) and np.all(np.isfinite(g.globals))
    as_tuple = featurize(Sample("w", conv_chain(16, 8), {}, {**TARGET, "isa": ("avx2", "avx512f")}))
    assert np.array_equal(as_tuple.globals, featurize(sample({})).globals)  # Target.isa is a tuple


def test_decisions_change_the_features_they_belong_to():
    fused = featurize(sample({"edge:0->1/fuse": "fuse"}))
    split = featurize(sample({"edge:0->1/fuse": "split"}))
    assert not np.array_equal(fused.edges[0], split.edges[0])
    assert np.array_equal(fused.edges[1], split.edges[1])
    winograd = featurize(sample({"node:0/algorithm": "winograd_f2x2_3x3"}))
    default = featurize(sample({}))
    assert not np.array_equal(winograd.nodes[0], default.nodes[0])
    assert np.array_equal(winograd.nodes[1], default.nodes[1])
    assert not np.array_equal(featurize(sample({"global/layout": "nhwc"})).globals, default.globals)


def test_every_algorithm_choice_has_its_own_features():
    from autofuse.search.space import choice_rules

    names = ["default", *sorted(choice_rules())]
    rows = {name: featurize(sample({"node:0/algorithm": name})).nodes[0].tobytes() for name in names}
    # (on a Conv node; on a ConvNHWC, winograd_3x3 reads as the tile it picks: the test below)
    assert len(set(rows.values())) == len(names)  # hashed names used to collide (conv_packed, matmul_weight_nk)
    unknown = featurize(sample({"node:0/algorithm": "brand_new_packed"})).nodes[0]
    packed = featurize(sample({"node:0/algorithm": "conv_packed"})).nodes[0]
    assert np.count_nonzero(unknown != packed) == 2  # 'conv' vs an unknown word; 'packed' shared


def conv_nhwc(size: int, cin: int, cout: int) -> dict:
    """A one-node ConvNHWC 3x3 task description."""
    return {"nodes": [{"op": "ConvNHWC", "domain": "", "mapping": "many_to_many", "dtype": "float32",
                       "in_shapes": [[1, size, size, cin], [3, 3, cin, cout]], "out_shape": [1, size, size, cout],
                       "flops": 2.0 * size * size * 9 * cin * cout, "bytes": 4.0 * size * size * (cin + cout),
                       "attrs": {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "strides": [1, 1]}}],
            "edges": [], "inputs": [[1, size, size, cin]], "outputs": [[1, size, size, cout]]}


def test_winograd_3x3_reads_as_the_tile_it_picks():
    def node(size: int, algorithm: str) -> bytes:
        return featurize(sample({"node:0/algorithm": algorithm}, conv_nhwc(size, 32, 32))).nodes[0].tobytes()

    # 28x28 has 49 F(4x4) tiles, over F4_MIN_TILES; 14x14 has 16, under it (the rule's own choice).
    assert node(28, "winograd_3x3") == node(28, "winograd_f4x4_3x3") != node(28, "winograd_f2x2_3x3")
    assert node(14, "winograd_3x3") == node(14, "winograd_f2x2_3x3") != node(14, "winograd_f4x4_3x3")


def test_node_work_names_the_products_each_algorithm_runs():
    from autofuse.costmodel.work import node_work

    conv = conv_nhwc(28, 64, 96)["nodes"][0]
    direct = node_work(conv, "default")
    assert (direct.products, direct.m, direct.k, direct.n, direct.scratch_bytes) == (1, 784, 576, 96, 0.0)
    assert node_work(conv, "conv_packed") == direct  # patches gathered while packing: no scratch
    assert node_work(conv, "nhwc_conv_im2col").scratch_bytes == 2 * 4 * 784 * 576
    f4 = node_work(conv, "winograd_f4x4_3x3")
    assert (f4.products, f4.m, f4.k, f4.n, f4.tile) == (36, 49, 64, 96, 4)
    assert f4.weight_bytes == pytest.approx(direct.weight_bytes * 36 / 9)
    assert node_work(conv, "conv_winograd_packed").tile == 2
    assert 2 * f4.products * f4.m * f4.k * f4.n < conv["flops"] / 3  # F(4x4): about 4x fewer multiplies
    depthwise = dict(conv, in_shapes=[[1, 28, 28, 64], [3, 3, 1, 64]], out_shape=[1, 28, 28, 64],
                     attrs={"group": 64})
    assert node_work(depthwise, "depthwise_conv_nhwc")[:4] == (64, 784, 9, 1)
    matmul = {"op": "MatMul", "in_shapes": [[1, 12, 128, 64], [1, 12, 64, 128]], "out_shape": [1, 12, 128, 128]}
    assert node_work(matmul, "default")[:4] == (12, 128, 64, 128)
    gemm = {"op": "Gemm", "in_shapes": [[128, 768], [3072, 768], [3072]], "out_shape": [128, 3072],
            "attrs": {"transB": 1}}
    assert node_work(gemm, "gemm_packed")[:4] == (1, 128, 768, 3072)
    assert node_work({"op": "Relu", "in_shapes": [[4]], "out_shape": [4]}, "default") is None


def test_batch_pads_to_powers_of_two_with_a_padding_graph():
    graphs = [featurize(sample({})), featurize(sample({}, {"nodes": [], "edges": []})), featurize(sample({}))]
    b = batch(graphs)
    n, e, g = len(b.nodes), len(b.senders), len(b.graph_mask)
    assert all(x & (x - 1) == 0 for x in (n, e, g))
    assert b.graph_mask.tolist()[:3] == [True, True, True] and not b.graph_mask[3:].any()
    assert b.node_graph.tolist()[:6] == [0, 0, 0, 2, 2, 2] and set(b.node_graph[6:].tolist()) == {g - 1}
    assert b.senders.tolist()[:4] == [0, 1, 3, 4] and set(b.senders[4:].tolist()) == {n - 1}
    assert len(batch(graphs * 3).nodes) == len(batch(graphs * 3 + graphs[:1]).nodes)  # 27 and 30 nodes: one shape


# baselines

def test_analytic_model_prefers_fusion_and_winograd():
    model = AnalyticModel()
    scores = model.predict([sample({}), sample({"edge:0->1/fuse": "split", "edge:1->2/fuse": "split"}),
                            sample({"node:0/algorithm": "winograd_f2x2_3x3"})])
    assert scores[1] > scores[0] > scores[2]
    model.update([sample({})], [1.0])  # a no-op, but part of the interface
    assert np.array_equal(model.predict([sample({})]), scores[:1])


def test_random_model_is_seeded():
    samples = [sample({})] * 5
    assert np.array_equal(RandomModel(3).predict(samples), RandomModel(3).predict(samples))
    assert not np.array_equal(RandomModel(3).predict(samples), RandomModel(4).predict(samples))


# metrics

def test_rank_correlations_match_scipy_with_ties():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 5, 30).astype(float)
    y = x + rng.integers(0, 3, 30)
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic)
    assert kendall(x, y) == pytest.approx(stats.kendalltau(x, y).statistic)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_top_k_recall_and_report_are_per_task():
    latencies = [1.0, 2.0, 3.0, 5.0, 4.0, 6.0]
    groups = ["a", "a", "a", "b", "b", "b"]
    good = [0.0, 1.0, 2.0, 1.0, 0.0, 2.0]
    bad = [2.0, 1.0, 0.0, 0.0, 2.0, 1.0]
    assert top_k_recall(good, latencies, groups, 1) == 1.0
    assert top_k_recall(bad, latencies, groups, 1) == 0.0
    assert top_k_recall(bad, latencies, groups, 3) == 1.0
    report = ranking_report(good, latencies, groups)
    assert (report.tasks, report.spearman, report.top1) == (2, pytest.approx(1.0), 1.0)
    assert ranking_report(bad, latencies, groups).spearman < 0


def test_best_so_far_curve_goes_round_robin():
    latencies = [np.array([4.0, 1.0, 3.0]), np.array([10.0, 5.0])]
    counts, values = best_so_far_curve([np.array([0, 2, 1]), np.array([0, 1])], latencies, [1.0, 2.0])
    assert counts.tolist() == [2, 4, 5]
    assert values.tolist() == [24.0, 13.0, 11.0]
    assert measurements_to_reach(counts, values, 0.05) == 5
    assert measurements_to_reach(counts, values, 0.2) == 4


# the GNN

SMALL = GNNConfig(hidden=16, layers=2)


@pytest.fixture(scope="module")
def trained() -> GNNModel:
    samples, latencies, groups = synthetic([(c, s) for c in (8, 16, 32) for s in (8, 16, 28)])
    return train(make_dataset(samples, latencies, groups), model_config=SMALL,
                 config=TrainConfig(steps=300, groups_per_batch=4, per_group=8, learning_rate=3e-3))


def test_gnn_learns_the_ranking_of_unseen_tasks(trained):
    samples, latencies, groups = synthetic([(24, 12), (48, 20), (12, 40)], seed=1)
    report = ranking_report(trained.predict(samples), latencies, groups)
    assert report.spearman > 0.9, report
    assert report.top1 == 1.0, report
    random_report = ranking_report(RandomModel(0).predict(samples), latencies, groups)
    assert random_report.spearman < report.spearman


def test_save_load_round_trip_and_versions(trained, tmp_path):
    samples, _, _ = synthetic([(24, 12)])
    path = trained.save(tmp_path / "model")
    assert path.suffix == ".npz" and path.with_suffix(".json").is_file()
    loaded = GNNModel.load(path)
    assert np.allclose(loaded.predict(samples), trained.predict(samples), atol=1e-5)
    meta = json.loads(path.with_suffix(".json").read_text())
    path.with_suffix(".json").write_text(json.dumps({**meta, "feature_version": 999}))
    with pytest.raises(CostModelFileError, match="feature_version 999"):
        GNNModel.load(path)
    with pytest.raises(CostModelFileError, match="missing"):
        GNNModel.load(tmp_path / "missing.npz")


def test_update_fine_tunes_within_its_budget(trained):
    samples, latencies, _ = synthetic([(20, 10)])
    model = GNNModel(trained.params, trained.config, y_mean=trained.y_mean, y_std=trained.y_std)
    before = model.predict(samples)
    # Invert the law on this task: the model must move towards the new measurements.
    model.update(samples, latencies[::-1].copy(), time_budget_s=30.0)
    after = model.predict(samples)
    assert spearman(after, latencies[::-1]) > spearman(before, latencies[::-1])


def test_default_cost_model_falls_back_to_analytic(monkeypatch, tmp_path):
    monkeypatch.setattr(gnn, "pretrained_path", lambda: tmp_path / "absent.npz")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = default_cost_model()
    assert isinstance(model, AnalyticModel)
    assert any("analytic" in str(w.message) for w in caught)


def test_default_cost_model_is_the_shipped_gnn():
    path = gnn.pretrained_path()
    assert isinstance(default_cost_model(), GNNModel)
    assert path.stat().st_size + path.with_suffix(".json").stat().st_size < 1_000_000
    config = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["autofuse.costmodel"]
    shipped = path.relative_to(path.parents[1])
    assert all(any(fnmatch.fnmatch(str(f), p) for p in patterns) for f in (shipped, shipped.with_suffix(".json")))

