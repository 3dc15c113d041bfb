"""A runner on a Ray cluster: compiles in parallel, measures one at a time per node.

Each job runs in two Ray tasks on the same node:

1. **compile** (1 CPU): builds the job's program with JAX's persistent
   compilation cache pointed at a per-node folder, so the XLA executable lands
   on that node's disk; failures become "compile" records.
2. **measure** (all the node's CPUs and its one `autofuse_measure` unit):
   rebuilds the program (a cache hit, not a compile), runs it once, checks it
   against the reference and times it with the protocol of `runners.protocol`.

The driver places every task itself (strict node affinity): it gives a node no
new compile while a measurement waits for it, and starts a node's next
measurement only when the node is idle, so a compile never shares a node with a
timing and a measurement is never starved by a stream of compiles. The
`autofuse_measure` resource (one per node; `ray.init` here adds it, a user's
`ray start` needs `--resources='{"autofuse_measure": 1}'`) makes Ray itself
enforce the same rule against other drivers on the cluster; where a node lacks
it the runner warns and relies on its own per-node serialisation alone.

Both tasks are generators whose first item says "started", so the watchdog
counts a job's `timeout_s` from the moment each task really starts (not from
when it was queued) and cancels it with `ray.cancel(force=True)` past that; a
worker that dies is retried `max_retries` times by Ray, then recorded as a
"crash". Nothing a job raises crosses the worker boundary: the tasks return
`RunResult`s. Only this module imports ray.
"""
from __future__ import annotations

import concurrent.futures
import logging
import os
import queue
import shutil
import tempfile
import threading
import time
import uuid
import warnings
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Sequence

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from autofuse.errors import AutofuseError
from autofuse.runners.base import Job, RunResult, build_program, check_and_measure, code_paths, describe

MEASURE_RESOURCE = "autofuse_measure"
_STARTED = "started"
_CANCEL_GRACE_S = 10.0  # how long a force-cancelled task may take to report its end
_NODE_REFRESH_S = 5.0


# ---- worker side -------------------------------------------------------------

_cache_misses = [0]  # compiles in this worker process that missed the persistent cache


def _use_node_cache(cache_root: str) -> str:
    """Points JAX's persistent compilation cache at this node's folder (idempotent)."""
    import jax
    import jax.monitoring

    node_id = ray.get_runtime_context().get_node_id()
    path = os.path.join(cache_root, node_id)
    if jax.config.jax_compilation_cache_dir != path:
        os.makedirs(path, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", path)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
        jax.monitoring.register_event_listener(_count_cache_event)
    return node_id


def _count_cache_event(event: str, **kwargs: Any) -> None:
    if event == "/jax/compilation_cache/cache_misses":
        _cache_misses[0] += 1


@ray.remote
def _compile_task(job: Job, cache_root: str):
    """Yields "started", then a "compile" record or the compile seconds."""
    yield _STARTED
    _use_node_cache(cache_root)
    built = build_program(job)
    yield built if isinstance(built, RunResult) else built[1]


@ray.remote
def _measure_task(job: Job, compile_s: float, cache_root: str, settings: dict):
    """Yields "started", then (the record, how many compiles missed the cache)."""
    yield _STARTED
    _use_node_cache(cache_root)
    misses = _cache_misses[0]
    built = build_program(job)
    misses = _cache_misses[0] - misses
    if isinstance(built, RunResult):
        yield built, misses
        return
    yield check_and_measure(job, built[0], compile_s, **settings), misses


@ray.remote
def _remove_folder(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


# ---- driver side -------------------------------------------------------------

@dataclass
class _Node:
    node_id: str
    cpus: int
    has_resource: bool
    compiling: int = 0
    measuring: bool = False
    waiting: deque = field(default_factory=deque)  # _Task entries ready to measure


@dataclass
class _Task:
    """One job's progress: which Ray task runs it now, and since when."""

    job: Job
    future: concurrent.futures.Future
    timeout_s: float
    phase: str = "compile"
    node_id: str | None = None
    compile_s: float | None = None
    job_ref: Any = None  # the job in Ray's object store, shared by both phases
    ref: Any = None
    launched: float = 0.0
    started: float | None = None
    cancelled_at: float | None = None


class RayRunner:
    """Compiles on Ray workers in parallel and measures serialised per node.

    `address=None` starts a private local Ray instance (`num_cpus` CPUs, quiet,
    no dashboard, its own temp folder) and shuts it down on `close`;
    an address such as "127.0.0.1:6379" joins a cluster started with
    `ray start`. If Ray is already initialised in this process it is used as is
    (then the job builders' modules must be importable on the workers).
    `timeout_s` caps every job's own; `cache_dir` holds the per-node XLA caches
    (by default a fresh folder per runner, removed from every node on `close`);
    a task that has not started `start_timeout_s` after its launch (no worker
    could start, or other drivers hold the node) is cancelled as a "crash".
    """

    def __init__(
        self,
        *,
        address: str | None = None,
        num_cpus: int | None = None,
        min_seconds: float = 1.0,
        warmup: int = 3,
        min_repeats: int = 10,
        max_retries: int = 2,
        timeout_s: float | None = None,
        cache_dir: str | None = None,
        start_timeout_s: float = 300.0,
        poll_s: float = 0.05,
    ) -> None:
        self.settings = {"min_seconds": min_seconds, "warmup": warmup, "min_repeats": min_repeats}
        self.max_retries = max_retries
        self.timeout_s = timeout_s
        self.start_timeout_s = start_timeout_s
        self.poll_s = poll_s
        self._own_cache = cache_dir is None
        self.cache_dir = cache_dir or os.path.join(tempfile.gettempdir(), f"autofuse-xla-cache-{uuid.uuid4().hex[:12]}")
        self.stats = {"compiled": 0, "measured": 0, "measure_cache_misses": 0}
        self._temp_dir: str | None = None
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            self._init_ray(address, num_cpus)
        self._nodes: dict[str, _Node] = {}
        self._nodes_seen = 0.0
        self._refresh_nodes()
        if not self._nodes:
            if self._owns_ray:
                ray.shutdown()
            raise AutofuseError(f"the Ray cluster{' at ' + address if address else ''} has no live node with CPUs")
        self._incoming: queue.Queue = queue.Queue()
        self._queued: deque[_Task] = deque()
        self._running: list[_Task] = []
        self._closing = threading.Event()
        self._closed = False
        self._stopped: str | None = None
        self._thread = threading.Thread(target=self._pump, name="autofuse-ray-runner", daemon=True)
        self._thread.start()

    def _init_ray(self, address: str | None, num_cpus: int | None) -> None:
        python_path = os.pathsep.join(code_paths() + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
        common = {
            "include_dashboard": False,
            "logging_level": logging.WARNING,
            "log_to_driver": False,
            "runtime_env": {"env_vars": {"PYTHONPATH": python_path}} if python_path else None,
        }
        if address is None:
            # A short path: Ray's socket names must fit in 107 bytes.
            self._temp_dir = tempfile.mkdtemp(prefix="afray-", dir="/tmp" if os.path.isdir("/tmp") else None)
            ray.init(address="local", num_cpus=num_cpus or os.cpu_count() or 1,
                     resources={MEASURE_RESOURCE: 1}, _temp_dir=self._temp_dir, **common)
        else:
            ray.init(address=address, **common)

    def _refresh_nodes(self) -> None:
        """Learns which nodes are alive, their CPUs, and whether they hold the measure resource."""
        alive = {}
        for info in ray.nodes():
            cpus = int(info.get("Resources", {}).get("CPU", 0))
            if info.get("Alive") and cpus > 0:
                alive[info["NodeID"]] = (cpus, info["Resources"].get(MEASURE_RESOURCE, 0) >= 1)
        for node_id, (cpus, has_resource) in alive.items():
            if node_id not in self._nodes:
                self._nodes[node_id] = _Node(node_id, cpus, has_resource)
                if not has_resource:
                    warnings.warn(
                        f"Ray node {node_id[:12]} has no '{MEASURE_RESOURCE}' resource (start it with "
                        f"--resources='{{\"{MEASURE_RESOURCE}\": 1}}'); this runner still measures one job at a "
                        "time per node, but other drivers on the cluster may overlap its measurements",
                        RuntimeWarning, stacklevel=3,
                    )
        for node_id in [n for n in self._nodes if n not in alive]:
            node = self._nodes.pop(node_id)
            for task in node.waiting:
                self._finish(task, RunResult.failure(task.job.key, "crash", f"Ray node {node_id[:12]} died",
                                                     compile_s=task.compile_s))
        self._nodes_seen = time.monotonic()

    # ---- public API ----

    def submit(self, jobs: Sequence[Job]) -> list[concurrent.futures.Future[RunResult]]:
        """Queues the jobs; one future per job, in order, resolved as each finishes."""
        if self._closed:
            raise RuntimeError("RayRunner is closed")
        futures = []
        for job in jobs:
            future: concurrent.futures.Future[RunResult] = concurrent.futures.Future()
            timeout = job.timeout_s if self.timeout_s is None else min(job.timeout_s, self.timeout_s)
            if self._stopped:
                future.set_result(RunResult.failure(job.key, "crash", self._stopped))
            else:
                self._incoming.put(_Task(job, future, timeout))
            futures.append(future)
        return futures

    def close(self) -> None:
        """Waits for the submitted jobs, then shuts down Ray if this runner started it."""
        if self._closed:
            return
        self._closed = True
        self._closing.set()
        self._thread.join()
        if self._own_cache:
            self._remove_caches()
        if self._owns_ray:
            ray.shutdown()
        if self._temp_dir:
            shutil.rmtree(self._temp_dir, ignore_errors=True)

    def _remove_caches(self) -> None:
        """Removes this runner's XLA cache folder on every node it knows."""
        refs = [_remove_folder.options(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False))
                .remote(self.cache_dir) for n in self._nodes]
        ray.wait(refs, num_returns=len(refs), timeout=30)

    def __enter__(self) -> "RayRunner":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- the pump: one thread owns every Ray reference ----

    def _pump(self) -> None:
        try:
            while self._step():
                pass
        except Exception as exc:  # Ray itself failed: every job still open gets a record
            message = self._stopped = f"the Ray runner stopped: {describe(exc)}"
            self._drain_incoming()
            open_tasks = list(self._queued) + self._running + [t for n in self._nodes.values() for t in n.waiting]
            for task in open_tasks:
                self._finish(task, RunResult.failure(task.job.key, "crash", message, compile_s=task.compile_s))

    def _drain_incoming(self) -> None:
        while True:
            try:
                self._queued.append(self._incoming.get_nowait())
            except queue.Empty:
                return

    def _step(self) -> bool:
        """One round: take new jobs, launch what may start, read what finished; False when closed and idle."""
        self._drain_incoming()
        waiting = any(n.waiting for n in self._nodes.values())
        if self._closing.is_set() and not self._queued and not self._running and not waiting:
            return False
        if time.monotonic() - self._nodes_seen > _NODE_REFRESH_S:
            self._refresh_nodes()
        self._running += self._launch(self._queued)
        if not self._running:
            time.sleep(self.poll_s)
            return True
        ready, _ = ray.wait([t.ref for t in self._running], num_returns=len(self._running), timeout=self.poll_s)
        ready_ids = {id(r) for r in ready}
        still = []
        for task in self._running:
            if id(task.ref) in ready_ids and self._advance(task):
                continue
            if not self._watch(task):
                still.append(task)
        self._running = still
        return True

    def _launch(self, queued: deque[_Task]) -> list[_Task]:
        """Starts the measurements of idle nodes, then compiles on nodes no measurement waits for."""
        launched = []
        for node in self._nodes.values():
            if node.waiting and not node.measuring and node.compiling == 0:
                task = node.waiting.popleft()
                node.measuring = True
                resources = {MEASURE_RESOURCE: 1} if node.has_resource else {}
                task.phase, task.started = "measure", None
                self._start(task, _measure_task.options(
                    num_cpus=node.cpus, resources=resources, max_retries=self.max_retries,
                    scheduling_strategy=NodeAffinitySchedulingStrategy(node.node_id, soft=False),
                ), task.compile_s, self.cache_dir, self.settings)
                launched.append(task)
        while queued:
            free = [n for n in self._nodes.values() if not n.waiting and not n.measuring and n.compiling < n.cpus]
            if not free:
                break
            node = min(free, key=lambda n: n.compiling / n.cpus)
            task = queued.popleft()
            if not task.future.set_running_or_notify_cancel():
                continue
            task.node_id = node.node_id
            node.compiling += 1
            self._start(task, _compile_task.options(
                num_cpus=1, max_retries=self.max_retries,
                scheduling_strategy=NodeAffinitySchedulingStrategy(node.node_id, soft=False),
            ), self.cache_dir)
            launched.append(task)
        return [t for t in launched if not t.future.done()]

    def _start(self, task: _Task, remote: Any, *args: Any) -> None:
        """Runs `remote(job, *args)`; a job Ray cannot serialise becomes a "compile" record."""
        try:
            if task.job_ref is None:
                task.job_ref = ray.put(task.job)
            task.ref = remote.remote(task.job_ref, *args)
            task.launched = time.monotonic()
        except Exception as exc:
            self._release(task)
            self._finish(task, RunResult.failure(task.job.key, "compile", f"cannot send the job to Ray: {describe(exc)}",
                                                 compile_s=task.compile_s))

    def _advance(self, task: _Task) -> bool:
        """Reads the task's next item; True when the task is over."""
        try:
            item = ray.get(next(task.ref))
        except StopIteration:
            item = RunResult.failure(task.job.key, "crash", f"the {task.phase} task ended without a result")
        except ray.exceptions.TaskCancelledError:
            item = RunResult.failure(task.job.key, "timeout", f"no result within {task.timeout_s:g} s; cancelled",
                                     compile_s=task.compile_s)
        except Exception as exc:  # the worker or its node died, beyond max_retries
            item = RunResult.failure(task.job.key, "crash", describe(exc).split(" (at ")[0], compile_s=task.compile_s)
        if item == _STARTED:
            task.started = task.started or time.monotonic()
            return False
        if task.cancelled_at is not None:  # it answered after all, but past its time
            item = RunResult.failure(task.job.key, "timeout", f"no result within {task.timeout_s:g} s; cancelled",
                                     compile_s=task.compile_s)
        self._release(task)
        if task.phase == "compile" and not isinstance(item, RunResult):
            task.compile_s = float(item)
            self.stats["compiled"] += 1
            node = self._nodes.get(task.node_id)
            if node is None:
                self._finish(task, RunResult.failure(task.job.key, "crash", "its Ray node died", compile_s=task.compile_s))
            else:
                node.waiting.append(task)
            return True
        if task.phase == "measure" and isinstance(item, tuple):
            item, misses = item
            self.stats["measured"] += 1
            self.stats["measure_cache_misses"] += misses
        self._finish(task, item)
        return True

    def _watch(self, task: _Task) -> bool:
        """Cancels a task past its time; True once a cancelled task is given up on."""
        now = time.monotonic()
        if task.cancelled_at is None:
            if task.started is None and now - task.launched > self.start_timeout_s:
                self._release(task)
                ray.cancel(task.ref, force=True)
                self._finish(task, RunResult.failure(
                    task.job.key, "crash", f"the {task.phase} task did not start within {self.start_timeout_s:g} s "
                    f"on Ray node {(task.node_id or '?')[:12]}", compile_s=task.compile_s))
                return True
            if task.started is not None and now - task.started > task.timeout_s:
                task.cancelled_at = now
                ray.cancel(task.ref, force=True)
            return False
        if now - task.cancelled_at > _CANCEL_GRACE_S:
            self._release(task)
            self._finish(task, RunResult.failure(task.job.key, "timeout", f"no result within {task.timeout_s:g} s; cancelled",
                                                 compile_s=task.compile_s))
            return True
        return False

    def _release(self, task: _Task) -> None:
        node = self._nodes.get(task.node_id)
        if node is not None:
            if task.phase == "compile":
                node.compiling -= 1
            else:
                node.measuring = False

    def _finish(self, task: _Task, result: RunResult) -> None:
        task.job_ref = None
        if not task.future.done():
            task.future.set_result(result)
