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
from autofuse.costmodel.base import RandomModel
from autofuse.costmodel.evaluate import leave_one_model_out, summary_table
from autofuse.costmodel.gnn import GNNConfig, GNNModel
from autofuse.costmodel.plot import plot_curves
from autofuse.costmodel.train import TrainConfig
from autofuse.database import open_database
from autofuse.datasets.records import (RecordsError, aggregate_repeats, canonical_hlo, collect, sample_candidates,
                                      samples_of, training_frame)
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


FUSED = """HloModule jit_a, entry_computation_layout={(f32[1,4,8]{2,1,0})->f32[8,4]{1,0}}

FileLocations
1 {file_name_id=1 function_name_id=1 line=13 end_line=13 column=8 end_column=58}

%fused_computation.1 (param_0.4: f32[4,8]) -> f32[8,4] {
  %param_0.4 = f32[4,8]{1,0} parameter(0)
  %bitcast.5 = f32[1,4,8]{2,1,0} bitcast(%param_0.4), metadata={op_name="jit(_function)/dot" stack_frame_id=9}
  ROOT %transpose.0 = f32[1,8,4]{2,1,0} transpose(%bitcast.5), dimensions={0,2,1}
}

ENTRY %main.1 (x.1: f32[1,4,8]) -> f32[8,4] {
  %x.1 = f32[1,4,8]{2,1,0} parameter(0), metadata={op_name="inputs[\'x\']"}
  %exp.3 = f32[1,4,8]{2,1,0} exponential(%x.1), metadata={op_name="jit(_function)/exp" stack_frame_id=3}
  %bitcast = f32[4,8]{1,0} bitcast(%exp.3)
  ROOT %fusion = f32[8,4]{1,0} fusion(%bitcast), kind=kLoop, calls=%fused_computation.1
}
"""

# The same kernels behind a barrier, other names, other metadata and stack frames.
SPLIT = """HloModule jit_b, entry_computation_layout={(f32[1,4,8]{2,1,0})->f32[8,4]{1,0}}

FileLocations
1 {file_name_id=1 function_name_id=1 line=99 end_line=99 column=8 end_column=58}
2 {file_name_id=1 function_name_id=1 line=14 end_line=14 column=8 end_column=58}

%fused_computation.7 (param_0.3: f32[1,4,8]) -> f32[8,4] {
  %param_0.3 = f32[1,4,8]{2,1,0} parameter(0)
  ROOT %transpose.2 = f32[1,8,4]{2,1,0} transpose(%param_0.3), dimensions={0,2,1}, metadata={op_name="t"}
}

ENTRY %main.9 (x.2: f32[1,4,8]) -> f32[8,4] {
  %x.2 = f32[1,4,8]{2,1,0} parameter(0)
  %exp.1 = f32[1,4,8]{2,1,0} exponential(%x.2), metadata={op_name="jit(_function)/exp" stack_frame_id=2}
  %optimization_barrier.1 = f32[1,4,8]{2,1,0} opt-barrier(%exp.1)
  ROOT %fusion.3 = f32[8,4]{1,0} fusion(%optimization_barrier.1), kind=kLoop, calls=%fused_computation.7
}
"""


def test_canonical_hlo_equates_programs_that_run_the_same_kernels():
    assert canonical_hlo(FUSED) == canonical_hlo(SPLIT)
    assert "exponential(v0)" in canonical_hlo(FUSED)
    # Any change to the work done is a different program.
    assert canonical_hlo(FUSED.replace("exponential", "tanh")) != canonical_hlo(FUSED)
    assert canonical_hlo(FUSED.replace("dimensions={0,2,1}", "dimensions={0,1,2}")) != canonical_hlo(FUSED)
    assert canonical_hlo(FUSED.replace("kind=kLoop", "kind=kInput")) != canonical_hlo(FUSED)
    # A line it cannot parse is kept as it is, never dropped.
    odd = FUSED.replace("  ROOT %fusion =", "  weird line\n  ROOT %fusion =")
    assert canonical_hlo(odd) != canonical_hlo(FUSED) and "weird line" in canonical_hlo(odd)


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


def test_aggregate_repeats_labels_each_program_once():
    # Database 1 timed a and b apart; database 2 knew them for one program (one median for both).
    rows = [("a", 1.0), ("b", 1.1), ("c", 2.0), ("a", 1.2), ("b", 1.2), ("c", 2.2), ("a", 5.0)]
    frame = pd.DataFrame({"workload_key": ["w"] * 6 + ["other"], "target_key": "t",
                          "candidate_key": [c for c, _ in rows], "median_s": [m for _, m in rows],
                          "models": [["m1"]] * 3 + [["m2"]] * 3 + [["m3"]]})
    out = aggregate_repeats(frame).set_index(["workload_key", "candidate_key"])
    program_ab = np.exp(np.mean(np.log([1.0, 1.1, 1.2])))  # three timings, the shared one counted once
    assert out.loc[("w", "a"), "median_s"] == pytest.approx(program_ab)
    assert out.loc[("w", "b"), "median_s"] == out.loc[("w", "a"), "median_s"]
    assert out.loc[("w", "c"), "median_s"] == pytest.approx(np.sqrt(2.0 * 2.2))
    assert out.loc[("other", "a"), "median_s"] == pytest.approx(5.0)  # another task: apart
    assert list(out["repeats_measured"]) == [3, 3, 2, 1]
    assert list(out["models"]) == [["m1", "m2"]] * 3 + [["m3"]]  # what either database knew


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
    assert "mean" in table and "over tasks" in table and "gnn" in table
    png = plot_curves(tmp_path / "curves.png", [(f.model, f.curves) for f in results])
    assert png.read_bytes()[:8] == PNG_SIGNATURE


def test_leave_one_model_out_holds_out_zoo_models_and_their_workloads(monkeypatch):
    import autofuse.costmodel.evaluate as evaluate

    frame = synthetic_frame()
    shared = frame[frame["workload_key"] == "conv8x8"].assign(models=[["synth:cnn-0"]] * 8)  # another database's copy
    frame = pd.concat([frame, shared, shared.assign(workload_key="conv5x5")], ignore_index=True)
    trained_on = {}

    def fake_train(data, **_):
        trained_on[len(trained_on)] = len(data.graphs)
        return RandomModel(0)

    monkeypatch.setattr(evaluate, "train", fake_train)
    results = leave_one_model_out(frame, random_orders=2)
    assert [f.model for f in results] == ["m1", "m2"]  # synthetic models are training data only
    # m1's fold: m2's 3 tasks and the synthetic conv5x5, not m1's conv8x8 from the synthetic copy.
    assert trained_on == {0: 8 * 4, 1: 8 * 3 + 8 * 2}


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
