"""Replay workers: Ray actors that compute and cache score vectors shard by shard."""

from __future__ import annotations

import logging
import os
import time

import ray

from service import storage
from service.keys import JobStatus, score_arguments
from service.store import Store

from . import metrics

logger = logging.getLogger(__name__)


@ray.remote(max_restarts=0, max_task_retries=0)
class ReplayWorker:
    """Loads one training run once and replays it for shards of test samples.

    A worker stays warm between jobs on the same run (see ``workers.pool``), so
    the job id and the measurement come with each shard. Each finished test
    sample's score vector, shape (n_train,), goes to Redis at once, so progress
    is visible and a crash loses at most one batch.
    """

    def __init__(self, run_folder: str, fingerprint: str, batch_size: int, redis_url: str,
                 score_ttl_s: int, redis_retry_s: float = 30.0) -> None:
        import attribution
        import torch

        self.batch_size = batch_size
        self.engine_version = attribution.__version__
        # Ray sets CUDA_VISIBLE_DEVICES to the GPU it granted, so "cuda" is that GPU.
        device = "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"
        local_folder = storage.local_run_folder(run_folder, fingerprint)
        self.run = attribution.TrainingRun.load(local_folder, device=device)
        if self.run.fingerprint != fingerprint:
            raise attribution.DataError(
                f"run folder {run_folder} contains fingerprint {self.run.fingerprint[:16]}, "
                f"expected {fingerprint[:16]}; train the run again"
            )
        self.store = Store.from_url(redis_url, score_ttl_s=score_ttl_s, retry_s=redis_retry_s)

    def ready(self) -> dict:
        """Return the worker's process id, GPU ids and compute device once the run is loaded."""
        return {"pid": os.getpid(), "gpu_ids": ray.get_gpu_ids(), "device": str(self.run.device)}

    def run_shard(self, job_id: str, shard_id: int, test_indices: list[int],
                  measurement: str) -> dict:
        """Replay the uncached ``test_indices`` in batches and cache each score vector.

        Samples already in the cache, for example from an earlier attempt at this
        shard whose worker died, are skipped. Stops before the next batch when
        the job is no longer running. Returns the shard id, the number of samples
        computed and the seconds spent.
        """
        import attribution

        started = time.perf_counter()
        computed = 0
        for start in range(0, len(test_indices), self.batch_size):
            if self.store.job_status(job_id) != JobStatus.RUNNING:
                break
            arguments = [score_arguments(self.run.fingerprint, test_index, measurement,
                                         self.engine_version)
                         for test_index in test_indices[start : start + self.batch_size]]
            arguments = [arguments[q] for q in self.store.missing_scores(arguments)]
            if not arguments:
                continue
            batch = [item["test_index"] for item in arguments]
            batch_started = time.perf_counter()
            # scores: (len(batch), n_train), one vmapped reverse pass for the batch
            scores = attribution.attribute(self.run, batch, measurement=measurement,
                                           batch_size=len(batch))
            for q, item in enumerate(arguments):
                self.store.put_scores(item, scores[q].detach().cpu().numpy())
            self.store.add_job_progress(job_id, done=len(batch), replayed=len(batch))
            computed += len(batch)
            metrics.record_samples_done(len(batch), measurement)
            metrics.record_replay_seconds(time.perf_counter() - batch_started, measurement)
            metrics.record_batch_timing(len(batch), time.perf_counter() - batch_started,
                                        self.run.num_steps, measurement)

        seconds = time.perf_counter() - started
        logger.info("job %s shard %d: %d test samples in %.2f s", job_id, shard_id,
                    computed, seconds)
        return {"shard_id": shard_id, "computed": computed, "seconds": seconds}

    def close(self) -> None:
        self.store.close()
