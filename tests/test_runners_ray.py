"""The Ray runner: a private local instance, and a real two-node cluster on this machine."""
from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import pytest

import runner_jobs as rj
from autofuse.runners.base import Job

ray = pytest.importorskip("ray")
from autofuse.runners.ray import MEASURE_RESOURCE, RayRunner  # noqa: E402

FAST = {"min_seconds": 0.05, "warmup": 1, "min_repeats": 5}


class TestLocalRay:
    @pytest.fixture(scope="class")
    def runner(self):
        with RayRunner(num_cpus=2, max_retries=1, **FAST) as runner:
            yield runner
        assert not ray.is_initialized()
        assert not os.path.exists(runner.cache_dir)  # removed from the node on close

    def test_records_every_outcome_in_order(self, runner, tiny_model_path):
        path = str(tiny_model_path)
        jobs = [
            rj.tanh_job("ok"),
            rj.tanh_job("wrong", scale=1.5),
            Job("raises", rj.build_raises),
            Job("fails-at-run", rj.build_fails_at_run),
            Job("exits", rj.build_exits),
            Job("tiny.onnx", functools.partial(rj.build_onnx, path), reference=rj.onnx_reference(path)),
            rj.tanh_job("ok-32", n=32),
        ]
        results = [f.result(timeout=300) for f in runner.submit(jobs)]
        assert [r.key for r in results] == [j.key for j in jobs]
        assert [r.error_kind for r in results] == [None, "mismatch", "compile", "runtime", "crash", None, None]
        assert "WorkerCrashedError" in results[4].error
        for r in (results[0], results[5], results[6]):
            assert 0 < r.median_s < 0.05 and r.repeats >= 5 and r.compile_s > 0
        assert results[1].max_rel_diff > 1e-3 and results[1].median_s is None
        # Every measurement rebuilt its program from the node's XLA cache, not by compiling again.
        assert runner.stats["measured"] == 5 and runner.stats["measure_cache_misses"] == 0
        assert any(p.is_file() for p in Path(runner.cache_dir).rglob("*"))

    def test_cancels_hung_compiles_and_measurements(self, runner):
        start = time.monotonic()
        hung_compile, hung_run, after = runner.submit([
            Job("sleeps", functools.partial(rj.build_sleeps, 600.0), timeout_s=3.0),
            Job("hangs-at-run", rj.build_hangs_at_run, timeout_s=3.0),
            rj.tanh_job("after"),
        ])
        for future in (hung_compile, hung_run):
            result = future.result(timeout=120)
            assert result.error_kind == "timeout" and "3 s" in result.error, result
        assert hung_run.result().compile_s > 0  # it compiled; its measurement hung
        assert after.result(timeout=120).ok
        assert time.monotonic() - start < 60

    def test_resolves_futures_as_jobs_finish(self, runner):
        # A node measures only when no compile runs on it, so the quick job to
        # finish first is one that needs no measurement.
        slow, quick = runner.submit([Job("slow", functools.partial(rj.build_sleeps, 4.0)), Job("quick", rj.build_raises)])
        assert quick.result(timeout=120).error_kind == "compile"
        assert not slow.done()
        assert slow.result(timeout=120).ok


# ---- a real cluster: `ray start --head` and a second node joining it ----

def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _node_ports() -> list[str]:
    names = ["node-manager-port", "object-manager-port", "metrics-export-port", "dashboard-agent-listen-port",
             "dashboard-agent-grpc-port", "runtime-env-agent-port"]
    return [f"--{name}={port}" for name, port in zip(names, _free_ports(len(names)))]


def _ray_cli() -> str:
    """This interpreter's own `ray` script (not a shim that may pick another Python)."""
    own = Path(sys.executable).with_name("ray")
    return str(own) if own.exists() else shutil.which("ray") or "ray"


# Execs its arguments with SIGTERM set as the parent-death signal (Linux), so a
# node whose test process is killed before teardown stops itself.
_DIE_WITH_PARENT = ("import ctypes, os, signal, sys; ctypes.CDLL(None).prctl(1, signal.SIGTERM); "
                    "os.execv(sys.argv[1], sys.argv[1:])")


def _ray_start(args: list[str], log: Path, env: dict) -> subprocess.Popen:
    """`ray start --block` in its own process group, so teardown can end exactly what it started."""
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-c", _DIE_WITH_PARENT, _ray_cli(), "start", "--block", *args],
                                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _wait_for(log: Path, text: str, process: subprocess.Popen, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in log.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"ray start did not come up:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.5)


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM lets `ray start --block` stop its node; SIGKILL the process group for anything left."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def _leftovers(marker: str) -> list[int]:
    """Pids of processes whose command line names this cluster's own temp folder."""
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if marker.encode() in (proc / "cmdline").read_bytes():
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


@pytest.fixture
def ray_cluster(tmp_path):
    """Head (2 CPUs, with the measure resource) and a second node (2 CPUs, without it).

    Token authentication on for every process, with the user's token
    (~/.ray/auth_token, created only if missing): the driver's `ray.init`
    turns it on when that file exists (and a driver that already ran a local
    Ray is in token mode for good), but a joining `ray start` needs
    RAY_AUTH_MODE=token to use it.
    """
    ray_cli = _ray_cli()
    subprocess.run([ray_cli, "get-auth-token", "--generate"], check=True, capture_output=True)
    temp_dir = tempfile.mkdtemp(prefix="afrc-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    port, client_port = _free_ports(2)
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_USAGE_STATS_ENABLED="0")
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=2", "--disable-usage-stats"]
    head = _ray_start([
        "--head", "--include-dashboard=false", f"--port={port}", f"--ray-client-server-port={client_port}", f"--temp-dir={temp_dir}",
        f"--resources={json.dumps({MEASURE_RESOURCE: 1})}", *common, *_node_ports(),
    ], tmp_path / "head.log", env)
    processes = [head]
    try:
        _wait_for(tmp_path / "head.log", "Ray runtime started", head)
        second = _ray_start([f"--address=127.0.0.1:{port}", *common, *_node_ports()], tmp_path / "node.log", env)
        processes.append(second)
        _wait_for(tmp_path / "node.log", "Ray runtime started", second)
        yield f"127.0.0.1:{port}"
    finally:
        for process in reversed(processes):
            _stop(process)
        for pid in _leftovers(temp_dir):
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _overlaps(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


@pytest.mark.slow  # about 45 s: two `ray start` nodes come up in ~25 s on 2 cores
def test_two_node_cluster_never_measures_beside_another_job(ray_cluster, tmp_path):
    # The driver is its own process, as `autofuse tune --address` would be: Ray
    # reads RAY_AUTH_MODE once per process, and this one may have run a local Ray.
    log, out = tmp_path / "phases.jsonl", tmp_path / "results.json"
    n_jobs = 8
    code = f"import runner_jobs; runner_jobs.drive_cluster({ray_cluster!r}, {str(log)!r}, {n_jobs}, {str(out)!r})"
    env = dict(os.environ, RAY_AUTH_MODE="token", PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), *sys.path]))
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=400, cwd=tmp_path)
    report = json.loads(out.read_text())
    assert report["nodes"] == 2
    assert any(MEASURE_RESOURCE in w for w in report["warnings"])  # the second node lacks it
    results = report["results"]
    assert [r["key"] for r in results] == [f"job{i}" for i in range(n_jobs)]
    assert all(r["error_kind"] is None for r in results), [r["error"] for r in results]
    assert report["stats"]["measure_cache_misses"] == 0

    records = [json.loads(line) for line in log.read_text().splitlines()]
    builds, runs = defaultdict(list), defaultdict(list)
    for r in records:
        (builds if r["phase"] == "build" else runs)[r["key"]].append(r)
    compiles, measurements = defaultdict(list), defaultdict(list)  # node -> [(key, (start, end))]
    for r in results:
        key = r["key"]
        compile_build, measure_build = sorted(builds[key], key=lambda b: b["start"])
        node = compile_build["node"]
        assert measure_build["node"] == node and {run["node"] for run in runs[key]} == {node}
        compiles[node].append((key, (compile_build["start"], compile_build["end"])))
        measurements[node].append((key, (measure_build["start"], max(run["end"] for run in runs[key]))))
    assert len(measurements) == 2, "the jobs ran on one node only"
    for node, windows in measurements.items():
        for key, window in windows:
            for other, span in windows + compiles[node]:
                assert other == key or not _overlaps(window, span), f"{key} measured while {other} ran on {node[:12]}"
