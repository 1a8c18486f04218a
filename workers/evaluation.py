"""Evaluation jobs: LDS of several methods, with retraining as parallel Ray tasks.

An ``EvaluationCoordinator`` draws the random subsets of each drop fraction
and reads the retrained measurements already stored for the run. It retrains
the missing subsets as Ray tasks, a few in flight at a time, and then computes
each method's scores as one Ray task per method. A method that fails
is recorded with its message and the others still complete. LDS is computed
by the same code as ``magic-attr lds`` (``attribution.lds.MethodComparison``).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import ray

from service import storage
from service.keys import JobStatus, RunStatus, retrained_arguments, score_arguments
from service.settings import Settings
from service.store import Store

from .cluster import training_resources

logger = logging.getLogger(__name__)

POLL_SECONDS = 0.2


class EvaluationCancelled(Exception):
    """The evaluation was cancelled or the service is shutting down."""


@ray.remote(num_cpus=1, max_retries=0)
def retrain_task(folder: str, removed: list[int], measurement: str) -> np.ndarray:
    """Retrain the run in ``folder`` without ``removed``; return (n_test,) measurements."""
    import attribution
    from attribution.lds import retrain_without

    run = attribution.TrainingRun.load(storage.local_run_folder(folder))
    return retrain_without(run, removed, measurement)


@ray.remote(num_cpus=1, max_retries=0)
def method_task(folder: str, test_indices: list[int], method: str, measurement: str,
                options: dict) -> dict:
    """Return ``{"scores": (k, n_train) array, "seconds"}`` or ``{"error": message}``."""
    import attribution
    from attribution.baselines import method_scores

    started = time.perf_counter()
    run = attribution.TrainingRun.load(storage.local_run_folder(folder))
    try:
        scores = method_scores(run, test_indices, method, measurement=measurement, **options)
    except attribution.AttributionError as error:
        return {"error": str(error)}
    return {"scores": scores.numpy(), "seconds": time.perf_counter() - started}


def removed_sha(removed: np.ndarray) -> str:
    return hashlib.sha256(np.asarray(removed, dtype=np.int64).tobytes()).hexdigest()[:16]


@dataclass
class EvaluationCoordinator:
    """Runs one evaluation job to a final status; see the module docstring."""

    evaluation_id: str
    settings: Settings
    store: Store
    stopping: threading.Event
    refs: list = field(default_factory=list)

    def run(self) -> None:
        started = time.perf_counter()
        try:
            self._run(started)
        except EvaluationCancelled:
            if self.store.evaluation_status(self.evaluation_id) != JobStatus.CANCELLED:
                self._fail("the service shut down before this finished; submit it again")
            logger.info("evaluation %s stopped after %.2f s", self.evaluation_id,
                        time.perf_counter() - started)
        except Exception as error:  # noqa: BLE001 - every failure must reach the record
            from .coordinator import describe_error

            logger.exception("evaluation %s failed after %.2f s", self.evaluation_id,
                             time.perf_counter() - started)
            self._fail(describe_error(error))
        finally:
            for ref in self.refs:
                ray.cancel(ref, force=True)

    def _run(self, started: float) -> None:
        import attribution
        from attribution.lds import MethodComparison, draw_subsets, measure_all

        record = self.store.get_evaluation(self.evaluation_id)
        moving = self.store.transition_evaluation(self.evaluation_id, (JobStatus.QUEUED,),
                                                  JobStatus.RUNNING, started_at=time.time())
        if record is None or not moving:
            raise EvaluationCancelled()
        run_record = self.store.get_run(record["run_id"])
        if run_record is None or run_record["status"] != RunStatus.READY.value:
            raise RuntimeError(f"training run {record['run_id']} is not ready")
        folder = storage.run_location(self.settings, record["run_id"])
        logger.info("evaluation %s started: run %s, methods %s, %d subsets per fraction",
                    self.evaluation_id, record["run_id"], record["methods"],
                    record["num_subsets"])

        run = attribution.TrainingRun.load(
            storage.local_run_folder(folder, run_record["fingerprint"]))
        indices = record["test_indices"]
        subsets = {p: draw_subsets(run.n_train, p, record["num_subsets"], record["seed"])
                   for p in record["fractions"]}
        rows = self._retrained_rows(folder, run_record["fingerprint"], record, subsets)
        result = MethodComparison(
            test_indices=indices, fractions=list(subsets), num_subsets=record["num_subsets"],
            seed=record["seed"], measurement=record["measurement"],
            base=measure_all(run, record["measurement"])[indices], subsets=subsets,
            actual={p: np.stack(rows[p])[:, indices] for p in subsets})
        self._score_methods(folder, run_record["fingerprint"], record, result)

        payload = result.to_dict()
        payload.update(evaluation_id=self.evaluation_id, run_id=record["run_id"],
                       changes={m: {str(p): result.changes(m, p) for p in result.fractions}
                                for m in result.lds})
        self.store.put_evaluation_result(self.evaluation_id, payload)
        if not self.store.transition_evaluation(self.evaluation_id, (JobStatus.RUNNING,),
                                                JobStatus.SUCCEEDED, finished_at=time.time()):
            raise EvaluationCancelled()
        logger.info("evaluation %s succeeded in %.2f s: LDS %s, failed %s", self.evaluation_id,
                    time.perf_counter() - started, payload["lds"], list(result.failed))

    def _retrained_rows(self, folder: str, fingerprint: str, record: dict,
                        subsets: dict[float, np.ndarray]) -> dict[float, list]:
        """Return the (n_test,) retrained rows per fraction, retraining only the missing ones."""
        rows: dict[float, list] = {p: [None] * len(draw) for p, draw in subsets.items()}
        pending = []
        for p, draw in subsets.items():
            for j, removed in enumerate(draw):
                arguments = retrained_arguments(fingerprint, record["measurement"], p,
                                                record["seed"], j, removed_sha(removed))
                stored = self.store.get_retrained(arguments)
                if stored is None:
                    pending.append((p, j, removed, arguments))
                else:
                    rows[p][j] = stored
        reused = sum(len(draw) for draw in subsets.values()) - len(pending)
        self.store.add_evaluation_progress(self.evaluation_id, done=reused, reused=reused)

        in_flight: dict = {}
        limit = max(1, self.settings.evaluation_parallelism)
        while pending or in_flight:
            while pending and len(in_flight) < limit:
                p, j, removed, arguments = pending.pop(0)
                ref = retrain_task.options(
                    name=f"retrain evaluation {self.evaluation_id} {p:g} #{j}",
                    **training_resources(self.settings),
                ).remote(str(folder), removed.tolist(), record["measurement"])
                self.refs.append(ref)
                in_flight[ref] = (p, j, arguments, time.monotonic() + self.settings.train_timeout_s)
            done, _ = ray.wait(list(in_flight), num_returns=1, timeout=POLL_SECONDS)
            for ref in done:
                p, j, arguments, _ = in_flight.pop(ref)
                rows[p][j] = ray.get(ref, timeout=self.settings.ray_call_timeout_s)
                self.store.put_retrained(arguments, rows[p][j])
                self.store.add_evaluation_progress(self.evaluation_id, done=1, retrained=1)
            self._check_running()
            self._check_deadlines(in_flight.values())
        return rows

    def _score_methods(self, folder: str, fingerprint: str, record: dict, result) -> None:
        options = record.get("options") or {}
        refs = {}
        for method in record["methods"]:
            cached = self._cached_magic(fingerprint, record) if method == "magic" else None
            if cached is not None:
                result.add_scores(method, cached, seconds=0.0)
                self.store.add_evaluation_progress(self.evaluation_id, done=1)
                continue
            ref = method_task.options(name=f"{method} evaluation {self.evaluation_id}").remote(
                str(folder), record["test_indices"], method, record["measurement"],
                options.get(method, {}))
            self.refs.append(ref)
            refs[ref] = (method, time.monotonic() + self.settings.shard_timeout_s)
        while refs:
            done, _ = ray.wait(list(refs), num_returns=1, timeout=POLL_SECONDS)
            for ref in done:
                method, _ = refs.pop(ref)
                self._add_method(method, ref, fingerprint, record, result)
                self.store.add_evaluation_progress(self.evaluation_id, done=1)
            self._check_running()
            self._check_deadlines(refs.values())

    def _add_method(self, method: str, ref, fingerprint: str, record: dict, result) -> None:
        from .coordinator import describe_error

        try:
            outcome = ray.get(ref, timeout=self.settings.ray_call_timeout_s)
        except Exception as error:  # noqa: BLE001 - a crashed method fails alone
            logger.exception("evaluation %s: %s crashed", self.evaluation_id, method)
            outcome = {"error": f"{method} failed: {describe_error(error)}"}
        if "error" in outcome:
            result.failed[method] = outcome["error"]
            logger.warning("evaluation %s: %s", self.evaluation_id, outcome["error"])
            return
        if method == "magic":
            engine_version = self._engine_version()
            for q, index in enumerate(record["test_indices"]):
                self.store.put_scores(score_arguments(fingerprint, index, record["measurement"],
                                                      engine_version), outcome["scores"][q])
        result.add_scores(method, outcome["scores"], seconds=outcome["seconds"])

    def _cached_magic(self, fingerprint: str, record: dict) -> Optional[np.ndarray]:
        """Return MAGIC's (k, n_train) scores from the score cache, or None if any is missing."""
        engine_version = self._engine_version()
        vectors = []
        for index in record["test_indices"]:
            vector = self.store.get_scores(score_arguments(fingerprint, index,
                                                           record["measurement"], engine_version))
            if vector is None:
                return None
            vectors.append(vector.astype(np.float64))
        return np.stack(vectors)

    @staticmethod
    def _engine_version() -> str:
        import attribution

        return attribution.__version__

    def _check_running(self) -> None:
        if self.stopping.is_set() or \
                self.store.evaluation_status(self.evaluation_id) != JobStatus.RUNNING:
            raise EvaluationCancelled()

    def _check_deadlines(self, entries) -> None:
        now = time.monotonic()
        for entry in entries:
            if now > entry[-1]:
                raise TimeoutError("a retraining or method task of the evaluation did not "
                                   "finish within its time limit (MAGIC_TRAIN_TIMEOUT_S or "
                                   "MAGIC_SHARD_TIMEOUT_S)")

    def _fail(self, reason: str) -> None:
        self.store.transition_evaluation(self.evaluation_id,
                                         (JobStatus.QUEUED, JobStatus.RUNNING),
                                         JobStatus.FAILED, error=reason,
                                         finished_at=time.time())
