"""A fake compute backend and record helpers for tests of the app without Ray."""

from __future__ import annotations

import numpy as np

from service import runs
from service.keys import JobStatus, RunStatus, score_arguments

TINY = {"n_train": 200, "n_test": 50, "epochs": 2, "hidden": [16]}


class FakeBackend:
    """Records what the routes submit; trains and computes nothing."""

    def __init__(self):
        self.trainings = []
        self.jobs = []
        self.evaluations = []

    def submit_training(self, run_id, spec, fingerprint):
        self.trainings.append((run_id, fingerprint))

    def submit_job(self, job_id):
        self.jobs.append(job_id)

    def submit_evaluation(self, evaluation_id):
        self.evaluations.append(evaluation_id)

    def retrain(self, folder, removed, measurement):
        raise TimeoutError("the fake backend cannot retrain")

    def health(self):
        return {"ok": True, "cpus": 2.0}

    def shutdown(self, timeout=30.0):
        pass


def mark_ready(store, runs_dir, run_id, fingerprint):
    """Give a training run a labels file and status ready, without checkpoints."""
    folder = runs.run_folder(runs_dir, run_id)
    folder.mkdir(parents=True, exist_ok=True)
    runs.write_labels(folder, y_train=np.arange(200) % 10, y_test=np.arange(50) % 10)
    store.finish_run(run_id, RunStatus.READY, fingerprint=fingerprint,
                     metrics={"test_accuracy": 0.5})


def finish_job(store, job_id, scores):
    """Store ``scores`` (k, n_train) for the job's test samples and mark it succeeded."""
    job = store.get_job(job_id)
    run = store.get_run(job["run_id"])
    for q, index in enumerate(job["test_indices"]):
        store.put_scores(score_arguments(run["fingerprint"], index, job["measurement"],
                                         job["engine_version"]), scores[q])
    store.transition_job(job_id, (JobStatus.QUEUED,), JobStatus.SUCCEEDED, finished_at=1e10,
                         done=job["total"])
