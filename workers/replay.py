"""Replay workers: Ray actors that compute and cache score vectors shard by shard."""

from __future__ import annotations

import logging
import os
import time

import ray

from service.keys import JobStatus, score_arguments
from service.store import Store

from . import metrics

logger = logging.getLogger(__name__)


@ray.remote(max_restarts=0, max_task_retries=0)
class ReplayWorker:
    """Loads one training run once and replays it for shards of one job's test samples.

    Each finished test sample's score vector, shape (n_train,), goes to Redis
    at once, so progress is visible and a crash loses at most one batch.
    """

    def __init__(self, job_id: str, run_folder: str, fingerprint: str, measurement: str,
                 batch_size: int, redis_url: str, score_ttl_s: int) -> None:
        import attribution

        self.job_id = job_id
        self.measurement = measurement
        self.batch_size = batch_size
        self.engine_version = attribution.__version__
        import torch

        # Ray sets CUDA_VISIBLE_DEVICES to the GPU it granted, so "cuda" is that GPU.
        device = "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"
        self.run = attribution.TrainingRun.load(run_folder, device=device)
        if self.run.fingerprint != fingerprint:
            raise attribution.DataError(
                f"run folder {run_folder} contains fingerprint {self.run.fingerprint[:16]}, "
                f"expected {fingerprint[:16]}; train the run again"
            )
        self.store = Store.from_url(redis_url, score_ttl_s=score_ttl_s)

    def ready(self) -> dict:
        """Return the worker's process id, GPU ids and compute device once the run is loaded."""
        return {"pid": os.getpid(), "gpu_ids": ray.get_gpu_ids(), "device": str(self.run.device)}

    def run_shard(self, shard_id: int, test_indices: list[int]) -> dict:
        """Replay ``test_indices`` in batches of ``batch_size`` and cache each score vector.

        Stops before the next batch when the job is no longer running. Returns
        the shard id, the number of samples computed and the seconds spent.
        """
        import attribution

        started = time.perf_counter()
        computed = 0
        for start in range(0, len(test_indices), self.batch_size):
            if self.store.job_status(self.job_id) != JobStatus.RUNNING:
                break
            batch = test_indices[start : start + self.batch_size]
            batch_started = time.perf_counter()
            # scores: (len(batch), n_train), one vmapped reverse pass for the batch
            scores = attribution.attribute(self.run, batch, measurement=self.measurement,
                                           batch_size=len(batch))
            for q, test_index in enumerate(batch):
                arguments = score_arguments(self.run.fingerprint, test_index,
                                            self.measurement, self.engine_version)
                self.store.put_scores(arguments, scores[q].detach().cpu().numpy())
            self.store.add_job_progress(self.job_id, done=len(batch), replayed=len(batch))
            computed += len(batch)
            metrics.record_samples_done(len(batch), self.measurement)
            metrics.record_replay_seconds(time.perf_counter() - batch_started, self.measurement)

        seconds = time.perf_counter() - started
        logger.info("job %s shard %d: %d test samples in %.2f s", self.job_id, shard_id,
                    computed, seconds)
        return {"shard_id": shard_id, "computed": computed, "seconds": seconds}

    def close(self) -> None:
        self.store.close()
