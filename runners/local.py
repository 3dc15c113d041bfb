"""A runner on this machine: one persistent worker subprocess, one job at a time.

The worker (`python -m autofuse.runners.local`) receives pickled jobs over a
pipe and answers with pickled `RunResult`s; its stdout and stderr go to a log
file, so nothing a job prints can corrupt the channel. A worker that dies
(segfault, `os._exit`, the OOM killer) becomes a "crash" record, one that runs
past the job's time limit is killed and becomes a "timeout" record; either
way a fresh worker serves the next job. The worker is a plain subprocess, not
a multiprocessing child, so the driver's `__main__` is never re-imported.
"""
from __future__ import annotations

import concurrent.futures
import os
import pickle
import queue
import signal
import subprocess
import sys
import tempfile
import threading
from multiprocessing.connection import Connection
from typing import Sequence

from autofuse.runners.base import Job, RunResult, code_paths, describe, run_job

_STOP = None


class _Worker:
    """The subprocess and the two pipe ends that talk to it."""

    def __init__(self, start_timeout_s: float) -> None:
        to_worker_r, to_worker_w = os.pipe()
        from_worker_r, from_worker_w = os.pipe()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(code_paths() + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        self.log = tempfile.TemporaryFile()  # unnamed: nothing is left behind, however the driver ends
        self.process = subprocess.Popen(
            [sys.executable, "-m", "autofuse.runners.local", str(to_worker_r), str(from_worker_w)],
            pass_fds=(to_worker_r, from_worker_w), stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log, env=env,
        )
        os.close(to_worker_r)
        os.close(from_worker_w)
        self.send_conn = Connection(to_worker_w, readable=False)
        self.recv_conn = Connection(from_worker_r, writable=False)
        if not self.recv_conn.poll(start_timeout_s):
            self.stop()
            raise RuntimeError(f"the worker did not start within {start_timeout_s:g} s")
        try:
            self.recv_conn.recv()
        except EOFError:
            reason = self.death()
            self.stop()
            raise RuntimeError(reason) from None

    def death(self) -> str:
        """Why the worker is gone: its exit status and the last thing it printed."""
        code = self.process.wait()
        if code < 0:
            try:
                how = f"killed by {signal.Signals(-code).name}"
            except ValueError:
                how = f"killed by signal {-code}"
        else:
            how = f"exited with status {code}"
        tail = _log_tail(self.log.fileno())
        return f"worker {how}" + (f"; last output: {tail}" if tail else "")

    def stop(self) -> None:
        """Closes the pipes (the worker exits on EOF); kills it if it lingers."""
        for conn in (self.send_conn, self.recv_conn):
            conn.close()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()

    def kill(self) -> None:
        self.process.kill()
        self.stop()


def _log_tail(fd: int, limit: int = 300) -> str:
    """The most telling line at the end of a worker's log (a fatal error if there is one).

    Read with pread, which leaves the offset the worker shares untouched.
    """
    try:
        size = os.fstat(fd).st_size
        text = os.pread(fd, 8192, max(0, size - 8192)).decode(errors="replace")
    except OSError:
        return ""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    fatal = [ln for ln in lines if ln.startswith(("Fatal Python error", "MemoryError"))]
    line = (fatal or lines or [""])[-1]
    return line[:limit]


class LocalRunner:
    """Runs jobs one at a time in a persistent worker subprocess.

    `timeout_s` caps every job's own `timeout_s` (None: the job's own applies);
    `min_seconds`, `warmup` and `min_repeats` are the measurement protocol's.
    Futures resolve in submission order, as jobs finish.
    """

    def __init__(
        self,
        *,
        timeout_s: float | None = None,
        min_seconds: float = 1.0,
        warmup: int = 3,
        min_repeats: int = 10,
        start_timeout_s: float = 120.0,
    ) -> None:
        self.timeout_s = timeout_s
        self.settings = {"min_seconds": min_seconds, "warmup": warmup, "min_repeats": min_repeats}
        self.start_timeout_s = start_timeout_s
        self._queue: queue.Queue = queue.Queue()
        self._worker: _Worker | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name="autofuse-local-runner", daemon=True)
        self._thread.start()

    def submit(self, jobs: Sequence[Job]) -> list[concurrent.futures.Future[RunResult]]:
        """Queues the jobs; one future per job, in order."""
        if self._closed:
            raise RuntimeError("LocalRunner is closed")
        futures = []
        for job in jobs:
            future: concurrent.futures.Future[RunResult] = concurrent.futures.Future()
            self._queue.put((job, future))
            futures.append(future)
        return futures

    def close(self, *, cancel_pending: bool = False) -> None:
        """Finishes the queued jobs (or cancels those not started) and stops the worker."""
        if self._closed:
            return
        self._closed = True
        if cancel_pending:
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is not _STOP:
                    item[1].cancel()
        self._queue.put(_STOP)
        self._thread.join()

    def __enter__(self) -> "LocalRunner":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _serve(self) -> None:
        try:
            while (item := self._queue.get()) is not _STOP:
                job, future = item
                if future.set_running_or_notify_cancel():
                    future.set_result(self._run(job))
        finally:
            if self._worker is not None:
                self._worker.stop()
                self._worker = None

    def _run(self, job: Job) -> RunResult:
        key = job.key
        try:
            payload = pickle.dumps((key, pickle.dumps(job), self.settings))
        except Exception as exc:
            return RunResult.failure(key, "compile", f"the job cannot be sent to the worker: {describe(exc)}")
        if self._worker is None:
            try:
                self._worker = _Worker(self.start_timeout_s)
            except (OSError, RuntimeError) as exc:
                self._worker = None
                return RunResult.failure(key, "crash", f"could not start a worker: {exc}")
        worker = self._worker
        timeout = job.timeout_s if self.timeout_s is None else min(job.timeout_s, self.timeout_s)
        try:
            worker.send_conn.send_bytes(payload)
            if worker.recv_conn.poll(timeout):
                return worker.recv_conn.recv()
        except (EOFError, OSError):
            self._worker = None
            reason = worker.death()
            worker.stop()
            return RunResult.failure(key, "crash", reason)
        self._worker = None
        worker.kill()
        return RunResult.failure(key, "timeout", f"no result within {timeout:g} s; the worker was killed")


def _die_with_parent() -> None:
    """Linux: the kernel kills this worker when the driver's thread that started it ends."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _serve_worker(read_fd: int, write_fd: int) -> None:
    """The worker's loop: a job in, its record out, until the driver closes the pipe."""
    import faulthandler

    faulthandler.enable()
    _die_with_parent()
    recv_conn = Connection(read_fd, writable=False)
    send_conn = Connection(write_fd, readable=False)
    send_conn.send(("ready", os.getpid()))
    while True:
        try:
            payload = recv_conn.recv_bytes()
        except EOFError:
            return
        key, job_bytes, settings = pickle.loads(payload)
        try:
            job = pickle.loads(job_bytes)
        except Exception as exc:
            send_conn.send(RunResult.failure(key, "compile", f"the worker cannot load the job: {describe(exc)}"))
            continue
        send_conn.send(run_job(job, **settings))


if __name__ == "__main__":
    _serve_worker(int(sys.argv[1]), int(sys.argv[2]))
