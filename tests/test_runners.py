"""The runner protocol in process, and the local subprocess runner."""
from __future__ import annotations

import functools
import os
import time
from pathlib import Path

import numpy as np
import pytest

import runner_jobs as rj
from autofuse.runners.base import Job, RunResult, check_outputs, max_rel_diff, run_job
from autofuse.runners.local import LocalRunner

FAST = {"min_seconds": 0.05, "warmup": 1, "min_repeats": 5}


# ---- in process ----

def test_run_job_times_a_correct_program():
    result = run_job(rj.tanh_job("tanh64"), **FAST)
    assert result.ok, result.error
    assert result.key == "tanh64"
    assert 0 < result.median_s < 0.05  # a 64x64 matmul and tanh
    assert 0 <= result.iqr_s < result.median_s * 10
    assert result.repeats >= 5
    assert result.compile_s is not None and result.compile_s > 0
    assert result.max_rel_diff is not None and result.max_rel_diff <= 1e-3


def test_run_job_records_a_mismatch_without_timing_it():
    result = run_job(rj.tanh_job("wrong", scale=1.5), **FAST)
    assert result.error_kind == "mismatch" and not result.ok
    assert result.max_rel_diff > 1e-3
    assert result.median_s is None and result.repeats == 0
    assert "max relative difference" in result.error


def test_run_job_records_build_and_run_exceptions():
    compile_fail = run_job(Job("c", rj.build_raises), **FAST)
    assert compile_fail.error_kind == "compile"
    assert compile_fail.error.startswith("ValueError: no lowering for this candidate")
    assert "\n" not in compile_fail.error
    run_fail = run_job(Job("r", rj.build_fails_at_run), **FAST)
    assert run_fail.error_kind == "runtime" and "FloatingPointError" in run_fail.error


def test_max_rel_diff_agrees_with_allclose():
    rng = np.random.default_rng(0)
    for trial in range(200):
        ref = rng.standard_normal(20) * 10.0 ** rng.integers(-6, 3)
        out = ref + rng.standard_normal(20) * 10.0 ** rng.integers(-8, 0)
        rtol, atol = 1e-3, 1e-4
        assert (max_rel_diff([out], [ref], rtol, atol) <= rtol) == np.allclose(out, ref, rtol=rtol, atol=atol), trial


def test_check_outputs_nan_shape_and_count():
    job = Job("k", rj.build_raises, reference=(np.array([1.0, np.nan]),))
    assert check_outputs(job, [np.array([1.0, np.nan])])[1] is None
    assert check_outputs(job, [np.array([1.0, 2.0])])[1] is not None
    assert "shape" in check_outputs(job, [np.zeros(3)])[1]
    assert "2 outputs" in check_outputs(job, [np.zeros(2), np.zeros(2)])[1]
    assert check_outputs(Job("k", rj.build_raises), [np.zeros(2)]) == (None, None)


def test_failure_rejects_unknown_kinds():
    with pytest.raises(ValueError, match="unknown error kind"):
        RunResult.failure("k", "oops", "message")


# ---- the subprocess runner ----

def local_workers() -> list[int]:
    """Pids of this process's children that run the local runner's worker (Linux /proc)."""
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (proc / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == os.getpid() and b"autofuse.runners.local" in cmdline:
            pids.append(int(proc.name))
    return pids


@pytest.fixture(scope="module")
def local_runner():
    with LocalRunner(**FAST) as runner:
        yield runner


def test_local_runner_records_every_outcome_in_order(local_runner):
    jobs = [
        rj.tanh_job("ok"),
        rj.tanh_job("wrong", scale=1.5),
        Job("raises", rj.build_raises),
        Job("exits", rj.build_exits),
        rj.tanh_job("after-exit"),
        Job("segfaults", rj.build_segfaults),
        rj.tanh_job("after-segfault", n=32),
    ]
    results = [f.result(timeout=300) for f in local_runner.submit(jobs)]
    assert [r.key for r in results] == [j.key for j in jobs]
    assert [r.error_kind for r in results] == [None, "mismatch", "compile", "crash", None, "crash", None]
    assert "exited with status 7" in results[3].error
    assert "SIGSEGV" in results[5].error and "Segmentation fault" in results[5].error
    assert results[4].median_s > 0 and results[6].median_s > 0


def test_local_runner_kills_a_job_past_its_timeout(local_runner):
    start = time.monotonic()
    hung, after = local_runner.submit([
        Job("sleeps", functools.partial(rj.build_sleeps, 60.0), timeout_s=2.0),
        rj.tanh_job("after-timeout"),
    ])
    result = hung.result(timeout=120)
    assert result.error_kind == "timeout" and "2 s" in result.error
    assert time.monotonic() - start < 30
    assert after.result(timeout=120).ok


def test_local_runner_resolves_futures_as_jobs_finish(local_runner):
    first, second = local_runner.submit([
        rj.tanh_job("quick"),
        Job("slow", functools.partial(rj.build_sleeps, 3.0), reference=None),
    ])
    assert first.result(timeout=120).ok
    assert not second.done()
    assert second.result(timeout=120).ok


def test_local_runner_records_a_job_it_cannot_send(local_runner):
    (future,) = local_runner.submit([Job("lambda", lambda: rj.build_tanh(8))])
    result = future.result(timeout=60)
    assert result.error_kind == "compile" and "cannot be sent" in result.error


def test_local_runner_runs_a_real_onnx_model(local_runner, tiny_model_path):
    path = str(tiny_model_path)
    job = Job("tiny.onnx", functools.partial(rj.build_onnx, path), reference=rj.onnx_reference(path))
    result = local_runner.submit([job])[0].result(timeout=120)
    assert result.ok, result.error
    assert result.max_rel_diff <= 1e-6
    assert 0 < result.median_s < 0.01 and result.compile_s > 0


def test_local_runner_cap_and_close_leave_no_worker():
    others = set(local_workers())  # the module's shared runner
    runner = LocalRunner(timeout_s=1.0, **FAST)
    result = runner.submit([Job("sleeps", functools.partial(rj.build_sleeps, 60.0))])[0].result(timeout=120)
    assert result.error_kind == "timeout" and "1 s" in result.error
    assert runner.submit([rj.tanh_job("ok")])[0].result(timeout=120).ok
    assert len(set(local_workers()) - others) == 1
    runner.close()
    assert set(local_workers()) - others == set()
    with pytest.raises(RuntimeError, match="closed"):
        runner.submit([rj.tanh_job("late")])


def test_local_runner_close_can_cancel_jobs_not_started():
    runner = LocalRunner(**FAST)
    running, *queued = runner.submit([Job("sleeps", functools.partial(rj.build_sleeps, 2.0))]
                                     + [rj.tanh_job(f"queued{i}") for i in range(3)])
    while not running.running():
        time.sleep(0.01)
    runner.close(cancel_pending=True)
    assert running.result().ok
    assert all(f.cancelled() for f in queued)


def test_compare_rotates_which_contender_goes_first():
    from autofuse.runners.protocol import compare

    calls: list[str] = []
    contenders = {name: functools.partial(calls.append, name) for name in "abc"}
    timings = compare(contenders, rounds=3, warmup=0, min_repeats=1, min_seconds=0.0, settle_runs=0)
    assert calls == list("abc" "bca" "cab")
    assert all(len(t.samples) == 3 for t in timings.values())
