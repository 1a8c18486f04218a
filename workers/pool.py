"""Replay workers kept warm between jobs on the same training run.

Starting a replay worker costs a process, the torch import and loading the run,
several seconds that a short job cannot hide. The pool keeps the workers of the
last run it served and hands them to the next job on that run. It keeps the
workers of one run at a time, and a job on another run stops them first, so
idle workers never hold the CPUs or GPUs a new job needs. Training and
evaluation in the same process also stop idle workers before they submit
their tasks. Workers left idle
for ``MAGIC_WORKER_IDLE_S`` seconds are stopped, which bounds how long they
hold resources that another service process on the same cluster waits for.

The pool serves one job at a time; ``RayBackend`` runs jobs one after another.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
from pathlib import Path
from typing import Iterator

import ray
from ray.exceptions import GetTimeoutError

from service.settings import Settings

from .cluster import replay_worker_resources
from .replay import ReplayWorker

logger = logging.getLogger(__name__)


class WorkerStartError(RuntimeError):
    """Replay workers failed to start or to load their run."""


class WorkerPool:
    """Warm replay workers for the training run of the last job; see the module docstring."""

    def __init__(self, settings: Settings, redis_url: str) -> None:
        self.settings = settings
        self.redis_url = redis_url
        self._lock = threading.Lock()
        self._run: tuple[str, str] | None = None
        self._workers: list = []
        self._last_used = time.monotonic()
        self._serial = itertools.count()
        self._pids: dict = {}

    @contextlib.contextmanager
    def workers(self, run_id: str, folder: Path, fingerprint: str, count: int) -> Iterator[list]:
        """Yield ``count`` ready workers for the run, starting only the missing ones.

        Raises WorkerStartError naming the cause when a worker fails to start or
        to load the run within ``MAGIC_WORKER_START_TIMEOUT_S``. On an exception in
        the body the pool's workers are stopped, since one may be stuck mid-shard.
        """
        with self._lock:
            run = (str(folder), fingerprint)
            if self._run != run:
                self._stop_all()
                self._run = run
            self._start(run_id, count - len(self._workers))
            try:
                yield self._workers[:count]
            except BaseException:
                self._stop_all()
                raise
            finally:
                self._last_used = time.monotonic()
                if self.settings.worker_idle_s == 0:
                    self._stop_all()

    def replace(self, worker, run_id: str):
        """Stop ``worker`` (its process died or hangs) and return a ready replacement.

        Call only inside ``workers()``, whose lock the caller then holds.
        """
        if worker in self._workers:
            self._workers.remove(worker)
        self._pids.pop(worker, None)
        ray.kill(worker, no_restart=True)
        self._start(run_id, 1)
        return self._workers[-1]

    def stop_idle(self, now: bool = False) -> bool:
        """Stop the workers if no job uses them and they have been idle for
        ``MAGIC_WORKER_IDLE_S`` (or at once with ``now``); return True if stopped.

        Training and retraining tasks call this with ``now`` first, so that idle
        workers do not hold the CPUs or GPUs those tasks need.
        """
        if not self._lock.acquire(blocking=False):
            return False
        try:
            idle = time.monotonic() - self._last_used
            if self._workers and (now or idle >= self.settings.worker_idle_s):
                logger.info("stopping %d replay workers idle for %.0f s", len(self._workers), idle)
                self._stop_all()
                return True
            return False
        finally:
            self._lock.release()

    def shutdown(self) -> None:
        with self._lock:
            self._stop_all()

    @property
    def size(self) -> int:
        return len(self._workers)

    def worker_pids(self) -> list[int]:
        """Return the process ids of the warm workers, for operators and fault tests."""
        return [self._pids[worker] for worker in list(self._workers) if worker in self._pids]

    def _start(self, run_id: str, count: int) -> None:
        if count <= 0:
            return
        folder, fingerprint = self._run
        resources = replay_worker_resources(self.settings)
        started = []
        for _ in range(count):
            name = f"replay-{run_id}-{next(self._serial)}"
            started.append(ReplayWorker.options(name=name, **resources).remote(
                run_folder=folder, fingerprint=fingerprint,
                batch_size=self.settings.replay_batch_size, redis_url=self.redis_url,
                score_ttl_s=self.settings.score_ttl_s,
                redis_retry_s=self.settings.redis_retry_s,
            ))
        try:
            pids = ray.get([worker.ready.remote() for worker in started],
                           timeout=self.settings.worker_start_timeout_s)
        except GetTimeoutError:
            self._kill(started)
            raise WorkerStartError(
                f"{count} replay workers did not start and load run {run_id} within "
                f"MAGIC_WORKER_START_TIMEOUT_S={self.settings.worker_start_timeout_s:g} s; "
                "check that the cluster has free CPUs or GPUs"
            ) from None
        except Exception as error:
            from .coordinator import describe_error

            self._kill(started)
            raise WorkerStartError(
                f"a replay worker failed to start on run {run_id}: {describe_error(error)}"
            ) from None
        self._workers.extend(started)
        for worker, info in zip(started, pids):
            self._pids[worker] = info["pid"]
        logger.info("started %d replay workers for run %s: pids %s", count, run_id,
                    [info["pid"] for info in pids])

    def _stop_all(self) -> None:
        self._kill(self._workers)
        self._workers = []
        self._pids = {}
        self._run = None

    @staticmethod
    def _kill(workers: list) -> None:
        for worker in workers:
            try:
                ray.kill(worker, no_restart=True)
            except Exception:  # noqa: BLE001 - a dead worker needs no stopping
                logger.debug("replay worker already gone", exc_info=True)
