"""`autofuse tune` end to end on a tiny conv net: real compiles, real timing, the database,
resume without re-measuring, a SIGKILL mid-run, reuse across models, the artifact."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from autofuse.artifact import load_artifact
from autofuse.cli import main
from autofuse.costmodel.base import AnalyticModel
from autofuse.database import open_database
from autofuse.runners.local import LocalRunner
from autofuse.tuning import tune
from conftest import make_model


def conv_net(path, blocks: int, channels: int = 16, seed: int = 0):
    """`blocks` identical residual blocks (3x3 conv, ReLU, 1x1 conv, add, ReLU), random weights."""
    rng = np.random.default_rng(seed)
    nodes, weights, x = [], [], "x"
    for b in range(blocks):
        w3 = rng.standard_normal((channels, channels, 3, 3)).astype(np.float32) * 0.1
        w1 = rng.standard_normal((channels, channels, 1, 1)).astype(np.float32) * 0.1
        bias = rng.standard_normal((channels,)).astype(np.float32)
        weights += [numpy_helper.from_array(w3, f"w3_{b}"), numpy_helper.from_array(w1, f"w1_{b}"),
                    numpy_helper.from_array(bias, f"b_{b}")]
        nodes += [
            helper.make_node("Conv", [x, f"w3_{b}", f"b_{b}"], [f"c3_{b}"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", [f"c3_{b}"], [f"r_{b}"]),
            helper.make_node("Conv", [f"r_{b}", f"w1_{b}"], [f"c1_{b}"]),
            helper.make_node("Add", [f"c1_{b}", x], [f"s_{b}"]),
            helper.make_node("Relu", [f"s_{b}"], ["y" if b == blocks - 1 else f"y_{b}"]),
        ]
        x = f"y_{b}"
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, 12, 12])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels, 12, 12])], weights)
    onnx.save(model, path)
    return path


def measured_pairs(db_path) -> Counter:
    db = open_database(db_path)
    try:
        return Counter((r.workload_key, r.candidate_key) for r in db.records() if r.source == "measured")
    finally:
        db.close()


def _tune(model, db, trials, **kw):
    # One pipeline: on a model this small, which pipeline wins is timing noise, and the
    # tasks (hence the records a later run can reuse) depend on it.
    with LocalRunner(min_seconds=0.05) as runner:
        return tune(model, db=db, runner=runner, trials=trials, cost_model=AnalyticModel(),
                    compare_seconds=0.2, pipelines=[("folding",)], **kw)


def test_tune_commits_every_measurement_and_resumes_without_remeasuring(tmp_path):
    model = conv_net(tmp_path / "net.onnx", blocks=2)
    db = tmp_path / "tune.db"
    first = _tune(model, db, trials=8)
    assert 3 <= first.measurements <= 8  # the spaces of this tiny net may run out first
    assert sum(measured_pairs(db).values()) == first.measurements
    assert first.max_rel_diff is not None and first.max_rel_diff < 1e-3
    assert {"autofuse tuned", "XLA default", "onnxruntime"} <= set(first.median_ms)
    assert first.tasks and all(t.occurrences == 2 for t in first.tasks)

    second = _tune(model, db, trials=4)
    assert second.reused == first.measurements - 1  # every task record (the pipeline record is reused too)
    pairs = measured_pairs(db)
    assert max(pairs.values()) == 1, "a candidate was measured twice"
    assert sum(pairs.values()) == first.measurements + second.measurements


def test_a_model_sharing_workloads_takes_the_records_instead_of_measuring(tmp_path):
    db = tmp_path / "tune.db"
    _tune(conv_net(tmp_path / "two.onnx", blocks=2), db, trials=10)
    bigger = _tune(conv_net(tmp_path / "three.onnx", blocks=3, seed=1), db, trials=3)
    block = next(t for t in bigger.tasks if t.occurrences == 3)
    assert block.reused > 0 and block.best_ms is not None


def test_artifact_from_tune_reproduces_the_tuned_outputs(tmp_path):
    model = conv_net(tmp_path / "net.onnx", blocks=1)
    out = tmp_path / "net.afz"
    code = main(["tune", str(model), "--db", str(tmp_path / "t.db"), "--trials", "3", "--runner", "local",
                 "--measure-seconds", "0.05", "-o", str(out)])
    assert code == 0 and out.exists()
    tuned = load_artifact(out)
    x = np.random.default_rng(0).standard_normal((1, 16, 12, 12)).astype(np.float32)
    from autofuse.runners.onnxruntime import reference_session, run_session

    expected = run_session(reference_session(model), {"x": x})[0]
    np.testing.assert_allclose(tuned(x)[0], expected, rtol=1e-3, atol=1e-4)
    assert main(["compile", str(model), "--db", str(tmp_path / "t.db"), "-o", str(tmp_path / "c.afz")]) == 0
    np.testing.assert_allclose(load_artifact(tmp_path / "c.afz")(x)[0], expected, rtol=1e-3, atol=1e-4)


def test_sigkill_mid_run_loses_at_most_the_in_flight_measurement(tmp_path):
    model = conv_net(tmp_path / "net.onnx", blocks=2)
    db = tmp_path / "kill.db"
    cmd = [sys.executable, "-m", "autofuse.cli", "tune", str(model), "--db", str(db), "--trials", "200",
           "--runner", "local", "--measure-seconds", "0.3"]
    child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if db.exists() and sum(measured_pairs(db).values()) >= 5:
                break
            time.sleep(0.2)
        else:
            pytest.fail("the tuner committed nothing within 120 s")
    finally:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
    before = measured_pairs(db)
    assert sum(before.values()) >= 5
    resumed = _tune(model, db, trials=2)
    after = measured_pairs(db)
    assert max(after.values()) == 1, "the resumed run re-measured a committed candidate"
    assert resumed.reused >= sum(before.values()) - 5
