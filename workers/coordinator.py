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
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from attribution.spec import TrainingSpec
from service.keys import JobStatus, RunStatus, score_arguments
from service import storage
from service.runs import run_fingerprint
from service.settings import Settings
from service.store import Store

from . import metrics
from .cluster import cluster_has_gpus, ray_health, stop_ray, training_resources
from .pool import WorkerPool
from .training import train_run

logger = logging.getLogger(__name__)

POLL_SECONDS = 0.2
SHUTDOWN_MESSAGE = "the service shut down before this finished; submit it again"
ORPHANED_EVALUATION_MESSAGE = ("the service process running this evaluation stopped; "
                               "submit it again (retrained subsets already done are reused)")
REQUEUED_MESSAGE = ("the service process running this job stopped; it resumes when a service "
                    "process is running")


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
    attempts: int = 0


@dataclass
class JobCoordinator:
    """Runs one attribution job to a final status; see the module docstring."""

    job_id: str
    settings: Settings
    store: Store
    pool: WorkerPool
    stopping: threading.Event

    def run(self) -> None:
        started = time.perf_counter()
        try:
            self._run(started)
        except JobCancelled:
            if self.stopping.is_set():
                self._requeue()
            logger.info("job %s stopped (%s) after %.2f s", self.job_id,
                        self.store.job_status(self.job_id), time.perf_counter() - started)
        except Exception as error:  # noqa: BLE001 - every failure must reach the job record
            logger.exception("job %s failed after %.2f s", self.job_id,
                             time.perf_counter() - started)
            metrics.record_job_failed()
            self._fail(describe_error(error))

    def _run(self, started: float) -> None:
        job = self.store.get_job(self.job_id)
        running = self.store.transition_job(self.job_id, (JobStatus.QUEUED,), JobStatus.RUNNING,
                                            started_at=time.time(), error="")
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
        # A resumed job keeps the samples an earlier process replayed for it as
        # replayed, not as cache hits.
        replayed = job["replayed"]
        cached = max(0, len(indices) - len(missing) - replayed)
        self.store.set_job_fields(self.job_id, cached=cached, done=len(indices) - len(missing),
                                  replayed=replayed)
        metrics.record_cache_hits(cached, job["measurement"])

        for attempt in range(2):
            if missing:
                folder = storage.run_location(self.settings, job["run_id"])
                self._replay(missing, job["run_id"], folder, run["fingerprint"],
                             job["measurement"])
            # A Redis restart can lose the last writes before its append-only file
            # was synced; such samples are computed once more.
            missing = self._unreadable(arguments)
            if not missing:
                break
            logger.warning("job %s: %d score vectors unreadable after replay; computing "
                           "them again", self.job_id, len(missing))
        if missing:
            raise RuntimeError(
                f"score vectors of test samples {missing[:10]} are missing after replay; "
                "Redis may have evicted them (check its maxmemory policy)"
            )
        finished = self.store.transition_job(
            self.job_id, (JobStatus.RUNNING,), JobStatus.SUCCEEDED,
            finished_at=time.time(), done=len(indices))
        if not finished:
            raise JobCancelled()
        logger.info("job %s succeeded in %.2f s: %d cached, %d replayed", self.job_id,
                    time.perf_counter() - started, cached, len(indices) - cached)

    def _replay(self, missing: list[int], run_id: str, folder: Path, fingerprint: str,
                measurement: str) -> None:
        size = shard_length(len(missing), self.settings.shard_size, self.settings.replay_workers)
        pending = deque(_Shard(s, missing[start : start + size])
                        for s, start in enumerate(range(0, len(missing), size)))
        count = min(self.settings.replay_workers, len(pending))
        with self.pool.workers(run_id, folder, fingerprint, count) as workers:
            in_flight: dict[ray.ObjectRef, _Shard] = {}
            idle = list(workers)
            while pending or in_flight:
                while idle and pending:
                    shard = pending.popleft()
                    shard.worker = idle.pop()
                    shard.deadline = time.monotonic() + self.settings.shard_timeout_s
                    name = f"replay job {self.job_id} shard {shard.shard_id}"
                    ref = shard.worker.run_shard.options(name=name).remote(
                        self.job_id, shard.shard_id, shard.test_indices, measurement)
                    in_flight[ref] = shard
                done, _ = ray.wait(list(in_flight), num_returns=1, timeout=POLL_SECONDS)
                for ref in done:
                    shard = in_flight.pop(ref)
                    try:
                        result = ray.get(ref, timeout=self.settings.ray_call_timeout_s)
                    except RayActorError as error:
                        idle.append(self._retry(shard, run_id, error))
                        pending.appendleft(shard)
                        continue
                    logger.info("job %s shard %d done: %d test samples in %.2f s",
                                self.job_id, shard.shard_id, result["computed"],
                                result["seconds"])
                    idle.append(shard.worker)
                self._check_running()
                self._check_deadlines(in_flight.values())

    def _retry(self, shard: _Shard, run_id: str, error: RayActorError):
        """Return a fresh worker for a shard whose worker died, or raise past the retry limit."""
        shard.attempts += 1
        metrics.record_worker_lost()
        if shard.attempts > self.settings.shard_retries:
            raise RuntimeError(
                f"shard {shard.shard_id} lost its replay worker {shard.attempts} times "
                f"(MAGIC_SHARD_RETRIES={self.settings.shard_retries}); last cause: "
                f"{describe_error(error)}"
            )
        logger.warning("job %s shard %d: replay worker died (%s); retrying on a new worker",
                       self.job_id, shard.shard_id, describe_error(error))
        return self.pool.replace(shard.worker, run_id)

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

    def _unreadable(self, arguments: list[dict]) -> list[int]:
        """Return the test indices whose score vector does not read back from Redis."""
        return [item["test_index"] for item in arguments
                if self.store.get_scores(item) is None]

    def _fail(self, reason: str) -> None:
        self.store.transition_job(self.job_id, (JobStatus.QUEUED, JobStatus.RUNNING),
                                  JobStatus.FAILED, error=reason, finished_at=time.time())

    def _requeue(self) -> None:
        """Put a job this process stops holding back in the queue for the next process."""
        self.store.transition_job(self.job_id, (JobStatus.RUNNING,), JobStatus.QUEUED,
                                  error=REQUEUED_MESSAGE)


class RayBackend:
    """Trains runs and runs attribution jobs on Ray on behalf of one service process.

    Jobs run one after another so that the replay workers of one job are not
    starved of CPUs or GPUs by the next, and so that the warm worker pool
    serves one job at a time.

    The process holds a lease in Redis on every job, evaluation and training
    run it has taken, renewed every third of ``MAGIC_JOB_LEASE_S``. A sweep at
    start and then once per lease period takes over the records whose lease
    lapsed, because the process that held them stopped. Jobs are resumed
    (their cached samples are not computed again), runs are trained again,
    and evaluations are marked failed. On shutdown the process puts its jobs
    back in the queue and drops its leases, so the next process resumes them
    at once.
    """

    def __init__(self, settings: Settings, store: Store, redis_url: str) -> None:
        self.settings = settings
        self.store = store
        self.redis_url = redis_url
        self.token = uuid.uuid4().hex
        self.stopping = threading.Event()
        self.owns_ray = False
        self.pool = WorkerPool(settings, redis_url)
        self._jobs: queue.Queue[Optional[str]] = queue.Queue()
        self._evaluations: queue.Queue[Optional[str]] = queue.Queue()
        self._leased: dict[tuple[str, str], float] = {}
        self._lease_lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        """Start the job, evaluation and lease threads; call once Ray is connected."""
        self._spawn(self._job_loop, name="magic-jobs")
        self._spawn(self._evaluation_loop, name="magic-evaluations")
        self._spawn(self._lease_loop, name="magic-leases")

    # ------------------------------------------------------------- training
    def submit_training(self, run_id: str, spec: dict, fingerprint: str) -> None:
        """Train the run as a Ray task in the background; the run record tracks the outcome."""
        if self._claim("run", run_id):
            self._spawn(self._train, run_id, spec, fingerprint, name=f"magic-train-{run_id}")

    def _train(self, run_id: str, spec: dict, fingerprint: str) -> None:
        started = time.perf_counter()
        self.pool.stop_idle(now=True)
        ref = train_run.options(name=f"train run {run_id}",
                                **training_resources(self.settings)).remote(
            spec, storage.run_location(self.settings, run_id), fingerprint,
            probe=self.settings.smoothness_probe)
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
            # Left as training: the next service process trains it again.
            ray.cancel(ref, force=True)
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
        finally:
            self._release("run", run_id)

    # ------------------------------------------------------------------ jobs
    def submit_job(self, job_id: str) -> None:
        if self._claim("job", job_id):
            self._jobs.put(job_id)
            metrics.record_queue_depth(self._jobs.qsize())

    def _job_loop(self) -> None:
        while True:
            job_id = self._jobs.get()
            if job_id is None:
                return
            metrics.record_queue_depth(self._jobs.qsize())
            try:
                if not self.stopping.is_set():
                    JobCoordinator(job_id, self.settings, self.store, self.pool,
                                   self.stopping).run()
            finally:
                self._release("job", job_id)

    # ----------------------------------------------------------- evaluations
    def submit_evaluation(self, evaluation_id: str) -> None:
        if self._claim("evaluation", evaluation_id):
            self._evaluations.put(evaluation_id)

    def _evaluation_loop(self) -> None:
        from .evaluation import EvaluationCoordinator

        while True:
            evaluation_id = self._evaluations.get()
            if evaluation_id is None:
                return
            coordinator = EvaluationCoordinator(evaluation_id, self.settings, self.store,
                                                self.stopping)
            try:
                if self.stopping.is_set():
                    coordinator._fail(SHUTDOWN_MESSAGE)
                    continue
                self.pool.stop_idle(now=True)
                coordinator.run()
            finally:
                self._release("evaluation", evaluation_id)

    def retrain(self, folder: str, removed: list[int], measurement: str):
        """Retrain the run at ``folder`` (a path or URL) without ``removed``.

        Returns the (n_test,) measurements of the retrained model.

        Blocks up to MAGIC_TRAIN_TIMEOUT_S; raises TimeoutError after that.
        """
        from .evaluation import retrain_task

        self.pool.stop_idle(now=True)
        ref = retrain_task.options(name=f"retrain {folder.rstrip('/').rsplit('/', 1)[-1]}",
                                   **training_resources(self.settings)).remote(
            folder, removed, measurement)
        try:
            return ray.get(ref, timeout=self.settings.train_timeout_s)
        except GetTimeoutError:
            ray.cancel(ref, force=True)
            raise TimeoutError(f"retraining did not finish within MAGIC_TRAIN_TIMEOUT_S="
                               f"{self.settings.train_timeout_s:g} s") from None

    # ---------------------------------------------------------------- leases
    def _claim(self, kind: str, record_id: str) -> bool:
        """Take the lease of a record; False if another live process holds it."""
        with self._lease_lock:
            if (kind, record_id) in self._leased:
                return False
            if not self.store.claim(kind, record_id, self.token, self.settings.job_lease_s):
                return False
            self._leased[(kind, record_id)] = time.monotonic()
            return True

    def _release(self, kind: str, record_id: str) -> None:
        with self._lease_lock:
            self._leased.pop((kind, record_id), None)
        try:
            self.store.release(kind, record_id, self.token)
        except Exception:  # noqa: BLE001 - an unreleased lease lapses by itself
            logger.warning("could not release the lease of %s %s", kind, record_id,
                           exc_info=True)

    def _lease_loop(self) -> None:
        period = self.settings.job_lease_s / 3
        next_sweep = 0.0
        while not self.stopping.wait(0 if next_sweep == 0.0 else period):
            try:
                self._renew_leases()
                if time.monotonic() >= next_sweep:
                    self.sweep()
                    next_sweep = time.monotonic() + self.settings.job_lease_s
                self.pool.stop_idle()
            except Exception:  # noqa: BLE001 - Redis may be restarting; try again next period
                logger.warning("lease upkeep failed; retrying in %.0f s", period, exc_info=True)

    def _renew_leases(self) -> None:
        with self._lease_lock:
            leased = list(self._leased)
        for kind, record_id in leased:
            if not self.store.renew(kind, record_id, self.token, self.settings.job_lease_s):
                # Lapsed, for example while Redis restarted: take it again if free.
                if not self.store.claim(kind, record_id, self.token, self.settings.job_lease_s):
                    logger.warning("lost the lease of %s %s to another process", kind,
                                   record_id)

    def sweep(self) -> list[str]:
        """Take over jobs, evaluations and training runs whose holder stopped; return them."""
        adopted = []
        for job_id in self.store.active_job_ids():
            if self.stopping.is_set() or not self._claim("job", job_id):
                continue
            self.store.transition_job(job_id, (JobStatus.RUNNING,), JobStatus.QUEUED,
                                      error=REQUEUED_MESSAGE)
            if self.store.job_status(job_id) != JobStatus.QUEUED:
                self._release("job", job_id)
                continue
            logger.info("resuming job %s left by a stopped service process", job_id)
            self._jobs.put(job_id)
            adopted.append(f"job {job_id}")
        for evaluation_id in self.store.active_evaluation_ids():
            # Evaluations are not resumed: the one whose process stopped fails.
            if self.stopping.is_set() or not self._claim("evaluation", evaluation_id):
                continue
            self.store.transition_evaluation(
                evaluation_id, (JobStatus.QUEUED, JobStatus.RUNNING), JobStatus.FAILED,
                error=ORPHANED_EVALUATION_MESSAGE, finished_at=time.time())
            self._release("evaluation", evaluation_id)
            logger.warning("evaluation %s failed: the service process running it stopped",
                           evaluation_id)
            adopted.append(f"evaluation {evaluation_id}")
        for run_id in self.store.training_run_ids():
            record = self.store.get_run(run_id)
            if self.stopping.is_set() or record is None or not record.get("spec"):
                continue
            if not self._claim("run", run_id):
                continue
            logger.info("training run %s again: the service process training it stopped",
                        run_id)
            fingerprint = run_fingerprint(TrainingSpec.from_dict(record["spec"]))
            self._spawn(self._train, run_id, record["spec"], fingerprint,
                        name=f"magic-train-{run_id}")
            adopted.append(f"run {run_id}")
        return adopted

    # ------------------------------------------------------------- lifecycle
    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop all threads; leased jobs go back to the queue and their leases are dropped."""
        self.stopping.set()
        while True:
            try:
                job_id = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job_id is not None:
                self._release("job", job_id)
        while True:
            try:
                evaluation_id = self._evaluations.get_nowait()
            except queue.Empty:
                break
            if evaluation_id is not None:
                self.store.transition_evaluation(evaluation_id, (JobStatus.QUEUED,),
                                                 JobStatus.FAILED, error=SHUTDOWN_MESSAGE,
                                                 finished_at=time.time())
        self._jobs.put(None)
        self._evaluations.put(None)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        if ray.is_initialized():
            self.pool.shutdown()
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
    backend.start()
    return backend
