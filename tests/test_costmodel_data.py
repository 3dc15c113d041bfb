"""Cost-model data: collecting records into the database, training frames, leave-one-model-out
evaluation, the curves PNG, and the `dataset` / `costmodel` commands."""
from __future__ import annotations

import sys

import numpy as np
import onnx
import pandas as pd
import pytest
from conftest import make_model
from onnx import TensorProto, helper, numpy_helper
from test_costmodel import TARGET, synthetic

from autofuse.cli import main
from autofuse.costmodel.evaluate import leave_one_model_out, summary_table
from autofuse.costmodel.gnn import GNNConfig, GNNModel
from autofuse.costmodel.plot import plot_curves
from autofuse.costmodel.train import TrainConfig
from autofuse.database import open_database
from autofuse.datasets.records import RecordsError, collect, sample_candidates, samples_of, training_frame
from autofuse.search.space import Space

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def conv_model_path(tmp_path_factory):
    """x (1x4x10x10) -> Conv 3x3 (8 channels) -> Relu: a task with algorithm choices."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 4, 3, 3)).astype(np.float32), "w")
    model = make_model(
        [helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 10, 10])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 10, 10])],
        [w],
    )
    path = tmp_path_factory.mktemp("models") / "conv.onnx"
    onnx.save(model, path)
    return path


@pytest.fixture(scope="module")
def collected(conv_model_path, tmp_path_factory):
    path = tmp_path_factory.mktemp("db") / "records.db"
    with open_database(path) as db:
        added = collect([str(conv_model_path)], db, max_candidates=3, min_seconds=0.01, log=lambda _: None)
    return path, added


def test_sample_candidates_keeps_the_default_first_and_caps():
    space = Space((("node:0/algorithm", ("default", "a", "b")), ("edge:0->1/fuse", ("fuse", "split"))))
    picked = sample_candidates(space, max_candidates=4, seed=1)
    assert len(picked) == 4 and picked[0] == space.default()
    assert len({tuple(sorted(c.items())) for c in picked}) == 4
    assert picked == sample_candidates(space, max_candidates=4, seed=1)
    assert len(sample_candidates(space, max_candidates=100)) == 6


def test_collect_measures_checks_and_resumes(collected, conv_model_path):
    path, added = collected
    assert added >= 2
    with open_database(path) as db:
        records = db.records()
        assert len(records) == added
        assert all(r.ok and r.median_s > 0 and r.max_rel_diff < 1e-3 for r in records)
        assert records[0].candidate == {k: v[0] for k, v in _space_of(db).items()}  # the default came first
        frame = training_frame(db)
        assert collect([str(conv_model_path)], db, max_candidates=3, min_seconds=0.01, log=lambda _: None) == 0
    assert frame["models"].map(len).min() == 1
    samples, latencies, groups = samples_of(frame)
    assert len(samples) == added and len(set(groups)) == 1
    assert "ConvNHWC" in {n["op"] for n in samples[0].description["nodes"]}  # cut after the layout rewrite
    assert np.all(latencies > 0)


def _space_of(db) -> dict:
    """The decisions seen in the records, choices in order of first appearance."""
    seen: dict = {}
    for r in db.records():
        for k, v in r.candidate.items():
            seen.setdefault(k, [])
            if v not in seen[k]:
                seen[k].append(v)
    return seen


def test_training_frame_refuses_an_empty_database(tmp_path):
    with open_database(tmp_path / "empty.db") as db, pytest.raises(RecordsError, match="no successful"):
        training_frame(db)


def synthetic_frame() -> pd.DataFrame:
    """Two 'models' with their own conv-chain tasks, as `training_frame` returns them."""
    rows = []
    for model, tasks in (("m1", [(8, 8), (16, 16), (32, 8)]), ("m2", [(24, 12), (12, 20), (48, 10)])):
        samples, latencies, groups = synthetic(tasks, seed=len(rows))
        for s, latency in zip(samples, latencies):
            rows.append({"workload_key": s.workload_key, "target_key": "t", "candidate": s.candidate,
                         "description": s.description, "target": TARGET, "models": [model], "median_s": latency})
    return pd.DataFrame(rows)


def test_leave_one_model_out_beats_random(tmp_path):
    results = leave_one_model_out(synthetic_frame(), model_config=GNNConfig(hidden=16, layers=2),
                                  train_config=TrainConfig(steps=200, groups_per_batch=3, per_group=8),
                                  random_orders=5)
    assert [f.model for f in results] == ["m1", "m2"]
    for fold in results:
        assert set(fold.reports) == {"gnn", "analytic", "random", "oracle"}
        assert fold.reports["oracle"].spearman == pytest.approx(1.0)
        assert fold.to_reach["oracle"] <= fold.to_reach["gnn"]
        assert fold.reports["gnn"].spearman > 0.8
        assert fold.to_reach["gnn"] <= fold.to_reach["random"]
        counts, values = fold.curves["gnn"]
        assert counts[-1] == fold.reports["gnn"].samples and np.all(np.diff(values) <= 0)
    table = summary_table(results)
    assert "mean" in table and "gnn" in table
    png = plot_curves(tmp_path / "curves.png", [(f.model, f.curves) for f in results])
    assert png.read_bytes()[:8] == PNG_SIGNATURE


def test_curves_png_without_matplotlib(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now fails
    x = np.arange(1, 6)
    png = plot_curves(tmp_path / "raw.png", [("m", {"gnn": (x, 1.0 / x), "random": (x, 2.0 / x)})])
    data = png.read_bytes()
    assert data[:8] == PNG_SIGNATURE and b"IHDR" in data and data.endswith(b"IEND\xaeB`\x82")


def test_commands_collect_and_train(collected, conv_model_path, tmp_path, capsys):
    db_path, added = collected
    assert main(["dataset", "collect", str(conv_model_path), "--db", str(db_path), "--max-candidates", "3",
                 "--measure-seconds", "0.01"]) == 0
    assert "0 records added" in capsys.readouterr().out
    out = tmp_path / "model.npz"
    assert main(["costmodel", "train", "--db", str(db_path), "-o", str(out), "--steps", "5", "--hidden", "8",
                 "--layers", "1"]) == 0
    assert f"trained on {added} records" in capsys.readouterr().out
    assert GNNModel.load(out).config == GNNConfig(hidden=8, layers=1)


def test_commands_name_a_missing_database(tmp_path, capsys):
    assert main(["costmodel", "eval", "--db", str(tmp_path / "absent.db")]) == 2
    assert "absent.db" in capsys.readouterr().err
