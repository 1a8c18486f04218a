"""Job coordinators and training supervisors that drive Ray from the service process.

``RayBackend`` owns one thread per training run in progress and a queue of
attribution jobs. A ``JobCoordinator`` looks every test sample up in the cache
and splits the misses into shards. It hands the shards to replay workers (Ray
actors, one GPU each when the cluster has GPUs) and tracks progress and
cancellation. It marks the job succeeded only after every score vector reads
back from Redis.
Every wait on Ray has a timeout, and any failure marks the job failed with the
reason, so no job stays running forever.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from service.keys import JobStatus, RunStatus, score_arguments
from service.runs import run_folder
from service.settings import Settings
from service.store import Store

from . import metrics
from .cluster import cluster_has_gpus, ray_health, stop_ray
from .replay import ReplayWorker
from .training import train_run

logger = logging.getLogger(__name__)

POLL_SECONDS = 0.2
SHUTDOWN_MESSAGE = "the service shut down before this finished; submit it again"


class JobCancelled(Exception):
    """The job was cancelled or the service is shutting down."""


def shard_length(missing: int, max_shard: int, workers: int) -> int:
    """Split ``missing`` samples evenly over at least ``workers`` shards of at most ``max_shard``.

    Larger shards let a worker carry more adjoints per reverse pass, which is far
    cheaper per sample than many small passes, so work is spread evenly instead of
    in fixed small pieces.
    """
    shards = max(min(workers, missing), math.ceil(missing / max_shard))
    return max(1, math.ceil(missing / shards))


def describe_error(error: BaseException) -> str:
    """Return a one-line reason for a failure, unwrapping Ray's task and actor errors."""
    cause = getattr(error, "cause", None)
    if isinstance(error, (RayTaskError, RayActorError)) and isinstance(cause, BaseException):
        return describe_error(cause)
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[-1] if lines else 'no message'}"


@dataclass
class _Shard:
    shard_id: int
    test_indices: list[int]
    worker: object = None
    deadline: float = 0.0


@dataclass
class JobCoordinator:
    """Runs one attribution job to a final status; see the module docstring."""

    job_id: str
    settings: Settings
    store: Store
    redis_url: str
    stopping: threading.Event
    workers: list = field(default_factory=list)

    def run(self) -> None:
        started = time.perf_counter()
        try:
            self._run(started)
        except JobCancelled:
            if self.store.job_status(self.job_id) != JobStatus.CANCELLED:
                self._fail(SHUTDOWN_MESSAGE)
            logger.info("job %s stopped (%s) after %.2f s", self.job_id,
                        self.store.job_status(self.job_id), time.perf_counter() - started)
        except Exception as error:  # noqa: BLE001 - every failure must reach the job record
            logger.exception("job %s failed after %.2f s", self.job_id,
                             time.perf_counter() - started)
            self._fail(describe_error(error))
        finally:
            self._kill_workers()

    def _run(self, started: float) -> None:
        job = self.store.get_job(self.job_id)
        running = self.store.transition_job(self.job_id, (JobStatus.QUEUED,), JobStatus.RUNNING,
                                            started_at=time.time())
        if job is None or not running:
            raise JobCancelled()
        run = self.store.get_run(job["run_id"])
        if run is None or run["status"] != RunStatus.READY.value:
            raise RuntimeError(f"training run {job['run_id']} is not ready")
        logger.info("job %s started: %d test samples, measurement %s", self.job_id,
                    job["total"], job["measurement"])

        indices = job["test_indices"]
        arguments = [score_arguments(run["fingerprint"], i, job["measurement"],
                                     job["engine_version"]) for i in indices]
        missing = [indices[q] for q in self.store.missing_scores(arguments)]
        cached = len(indices) - len(missing)
        self.store.set_job_fields(self.job_id, cached=cached, done=cached)
        metrics.record_cache_hits(cached, job["measurement"])

        if missing:
            folder = run_folder(self.settings.runs_dir, job["run_id"])
            self._replay(missing, folder, run["fingerprint"], job["measurement"])
        self._verify(arguments)
        finished = self.store.transition_job(
            self.job_id, (JobStatus.RUNNING,), JobStatus.SUCCEEDED,
            finished_at=time.time(), done=len(indices))
        if not finished:
            raise JobCancelled()
        logger.info("job %s succeeded in %.2f s: %d cached, %d replayed", self.job_id,
                    time.perf_counter() - started, cached, len(missing))

    def _replay(self, missing: list[int], folder: Path, fingerprint: str,
                measurement: str) -> None:
        size = shard_length(len(missing), self.settings.shard_size, self.settings.replay_workers)
        pending = [_Shard(s, missing[start : start + size])
                   for s, start in enumerate(range(0, len(missing), size))]
        self._start_workers(min(self.settings.replay_workers, len(pending)), folder,
                            fingerprint, measurement)
        in_flight: dict[ray.ObjectRef, _Shard] = {}
        idle = list(self.workers)
        while pending or in_flight:
            while idle and pending:
                shard = pending.pop(0)
                shard.worker = idle.pop()
                shard.deadline = time.monotonic() + self.settings.shard_timeout_s
                name = f"replay job {self.job_id} shard {shard.shard_id}"
                ref = shard.worker.run_shard.options(name=name).remote(shard.shard_id,
                                                                      shard.test_indices)
                in_flight[ref] = shard
            done, _ = ray.wait(list(in_flight), num_returns=1, timeout=POLL_SECONDS)
            for ref in done:
                shard = in_flight.pop(ref)
                result = ray.get(ref, timeout=self.settings.ray_call_timeout_s)
                logger.info("job %s shard %d done: %d test samples in %.2f s", self.job_id,
                            shard.shard_id, result["computed"], result["seconds"])
                idle.append(shard.worker)
            self._check_running()
            self._check_deadlines(in_flight.values())

    def _start_workers(self, count: int, folder: Path, fingerprint: str,
                       measurement: str) -> None:
        resources = {"num_gpus": 1} if cluster_has_gpus() else {"num_cpus": 1}
        for k in range(count):
            worker = ReplayWorker.options(name=f"replay-{self.job_id}-{k}", **resources).remote(
                job_id=self.job_id, run_folder=str(folder), fingerprint=fingerprint,
                measurement=measurement, batch_size=self.settings.replay_batch_size,
                redis_url=self.redis_url, score_ttl_s=self.settings.score_ttl_s,
            )
            self.workers.append(worker)

    def _check_running(self) -> None:
        if self.stopping.is_set() or self.store.job_status(self.job_id) != JobStatus.RUNNING:
            raise JobCancelled()

    def _check_deadlines(self, shards) -> None:
        now = time.monotonic()
        for shard in shards:
            if now > shard.deadline:
                raise TimeoutError(
                    f"shard {shard.shard_id} did not finish within "
                    f"MAGIC_SHARD_TIMEOUT_S={self.settings.shard_timeout_s:g} s"
                )

    def _verify(self, arguments: list[dict]) -> None:
        """Read every score vector back; raise if one is missing or mismatched."""
        missing = [item["test_index"] for item in arguments
                   if self.store.get_scores(item) is None]
        if missing:
            raise RuntimeError(
                f"score vectors of test samples {missing[:10]} are missing after replay; "
                "Redis may have evicted them (check its maxmemory policy)"
            )

    def _fail(self, reason: str) -> None:
        self.store.transition_job(self.job_id, (JobStatus.QUEUED, JobStatus.RUNNING),
                                  JobStatus.FAILED, error=reason, finished_at=time.time())

    def _kill_workers(self) -> None:
        for worker in self.workers:
            ray.kill(worker, no_restart=True)
        self.workers.clear()


class RayBackend:
    """Trains runs and runs attribution jobs on Ray on behalf of one service process.

    Jobs run one after another (``max_running_jobs`` at a time) so that the
    replay workers of one job are not starved of CPUs or GPUs by the next.
    """

    def __init__(self, settings: Settings, store: Store, redis_url: str,
                 max_running_jobs: int = 1) -> None:
        self.settings = settings
        self.store = store
        self.redis_url = redis_url
        self.stopping = threading.Event()
        self.owns_ray = False
        self._jobs: queue.Queue[Optional[str]] = queue.Queue()
        self._evaluations: queue.Queue[Optional[str]] = queue.Queue()
        self._threads: list[threading.Thread] = []
        for k in range(max_running_jobs):
            self._spawn(self._job_loop, name=f"magic-jobs-{k}")
        self._spawn(self._evaluation_loop, name="magic-evaluations")

    # ------------------------------------------------------------- training
    def submit_training(self, run_id: str, spec: dict, fingerprint: str) -> None:
        """Train the run as a Ray task in the background; the run record tracks the outcome."""
        self._spawn(self._train, run_id, spec, fingerprint, name=f"magic-train-{run_id}")

    def _train(self, run_id: str, spec: dict, fingerprint: str) -> None:
        started = time.perf_counter()
        folder = run_folder(self.settings.runs_dir, run_id)
        folder.parent.mkdir(parents=True, exist_ok=True)
        ref = train_run.options(name=f"train run {run_id}").remote(
            spec, str(folder.resolve()), fingerprint, probe=self.settings.smoothness_probe)
        deadline = time.monotonic() + self.settings.train_timeout_s
        try:
            while not ray.wait([ref], timeout=POLL_SECONDS)[0]:
                if self.stopping.is_set():
                    raise JobCancelled()
                if time.monotonic() > deadline:
                    raise TimeoutError(f"training did not finish within MAGIC_TRAIN_TIMEOUT_S="
                                       f"{self.settings.train_timeout_s:g} s")
            result = ray.get(ref, timeout=self.settings.ray_call_timeout_s)
        except JobCancelled:
            ray.cancel(ref, force=True)
            self.store.finish_run(run_id, RunStatus.FAILED, error=SHUTDOWN_MESSAGE)
        except Exception as error:  # noqa: BLE001 - the run record must say why
            logger.exception("training run %s failed", run_id)
            ray.cancel(ref, force=True)
            self.store.finish_run(run_id, RunStatus.FAILED, error=describe_error(error))
        else:
            self.store.finish_run(run_id, RunStatus.READY, fingerprint=result["fingerprint"],
                                  metrics=result["metrics"], smoothness=result["smoothness"],
                                  error="")
            logger.info("training run %s ready in %.2f s: test accuracy %.3f", run_id,
                        time.perf_counter() - started, result["metrics"]["test_accuracy"])

    # ------------------------------------------------------------------ jobs
    def submit_job(self, job_id: str) -> None:
        self._jobs.put(job_id)

    def _job_loop(self) -> None:
        while True:
            job_id = self._jobs.get()
            if job_id is None:
                return
            if self.stopping.is_set():
                JobCoordinator(job_id, self.settings, self.store, self.redis_url,
                               self.stopping)._fail(SHUTDOWN_MESSAGE)
                continue
            JobCoordinator(job_id, self.settings, self.store, self.redis_url,
                           self.stopping).run()

    # ----------------------------------------------------------- evaluations
    def submit_evaluation(self, evaluation_id: str) -> None:
        self._evaluations.put(evaluation_id)

    def _evaluation_loop(self) -> None:
        from .evaluation import EvaluationCoordinator

        while True:
            evaluation_id = self._evaluations.get()
            if evaluation_id is None:
                return
            coordinator = EvaluationCoordinator(evaluation_id, self.settings, self.store,
                                                self.stopping)
            if self.stopping.is_set():
                coordinator._fail(SHUTDOWN_MESSAGE)
                continue
            coordinator.run()

    def retrain(self, folder: Path, removed: list[int], measurement: str):
        """Retrain the run in ``folder`` without ``removed`` and return (n_test,) measurements.

        Blocks up to MAGIC_TRAIN_TIMEOUT_S; raises TimeoutError after that.
        """
        from .evaluation import retrain_task

        ref = retrain_task.options(name=f"retrain {folder.name}").remote(
            str(folder.resolve()), removed, measurement)
        try:
            return ray.get(ref, timeout=self.settings.train_timeout_s)
        except GetTimeoutError:
            ray.cancel(ref, force=True)
            raise TimeoutError(f"retraining did not finish within MAGIC_TRAIN_TIMEOUT_S="
                               f"{self.settings.train_timeout_s:g} s") from None

    # ------------------------------------------------------------- lifecycle
    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop all coordinators and training supervisors; their records become failed."""
        self.stopping.set()
        while True:
            try:
                job_id = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job_id is not None:
                self.store.transition_job(job_id, (JobStatus.QUEUED,), JobStatus.FAILED,
                                          error=SHUTDOWN_MESSAGE, finished_at=time.time())
        while True:
            try:
                evaluation_id = self._evaluations.get_nowait()
            except queue.Empty:
                break
            if evaluation_id is not None:
                self.store.transition_evaluation(evaluation_id, (JobStatus.QUEUED,),
                                                 JobStatus.FAILED, error=SHUTDOWN_MESSAGE,
                                                 finished_at=time.time())
        for _ in range(sum(t.name.startswith("magic-jobs") for t in self._threads)):
            self._jobs.put(None)
        self._evaluations.put(None)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        if self.owns_ray:
            stop_ray()

    def health(self) -> dict:
        return ray_health()

    def _spawn(self, target, *args, name: str) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()


def start_backend(settings: Settings, store: Store, redis_url: str) -> "RayBackend":
    """Connect to Ray (starting a local one if needed) and return a backend that uses it."""
    from .cluster import start_ray

    backend = RayBackend(settings, store, redis_url)
    backend.owns_ray = start_ray(settings)
    return backend
