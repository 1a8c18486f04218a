"""Redis key names and status values shared by the service, the workers and the client.

This module imports only the standard library, so the client SDK can use the
status values without the server stack installed.

Layout (all keys start with ``PREFIX``):

- ``run:{run_id}``: hash, the record of one training run.
- ``job:{job_id}``: hash, the record of one attribution job.
- ``jobs:active``: set of job ids that are queued or running.
- ``metrics``: hash, counters of jobs and samples since the Redis database was
  created, which ``GET /metrics`` exports.
- ``lease:{kind}:{id}``: string, the token of the service process that holds a
  queued or running job or a training run; it expires unless renewed.
- ``dedupe:{sha}``: string, the id of the queued or running job with the same
  inputs, so a repeated submission joins it instead of computing twice.
- ``scores:{cache_key}``: hash, one test sample's score vector with its arguments.
- ``evaluation:{evaluation_id}``: hash, the record of one evaluation job;
  ``evaluation:{evaluation_id}:result``: string, its result as JSON.
- ``evaluations:active``: set of evaluation ids that are queued or running.
- ``retrained:{cache_key}``: hash, the measurements of every test sample after
  retraining one run without one random subset, with the arguments that drew it.
"""

from __future__ import annotations

import enum
import hashlib
import json

PREFIX = "magic:"
RUN_PREFIX = PREFIX + "run:"
JOB_PREFIX = PREFIX + "job:"
SCORES_PREFIX = PREFIX + "scores:"
ACTIVE_JOBS = PREFIX + "jobs:active"
METRICS = PREFIX + "metrics"
EVALUATION_PREFIX = PREFIX + "evaluation:"
ACTIVE_EVALUATIONS = PREFIX + "evaluations:active"
RETRAINED_PREFIX = PREFIX + "retrained:"
LEASE_PREFIX = PREFIX + "lease:"
DEDUPE_PREFIX = PREFIX + "dedupe:"

MEASUREMENTS = ("loss", "margin", "logit")


class RunStatus(str, enum.Enum):
    """Life cycle of a training run."""

    TRAINING = "training"
    READY = "ready"
    FAILED = "failed"


class JobStatus(str, enum.Enum):
    """Life cycle of an attribution job."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


def run_key(run_id: str) -> str:
    return RUN_PREFIX + run_id


def job_key(job_id: str) -> str:
    return JOB_PREFIX + job_id


def lease_key(kind: str, record_id: str) -> str:
    """Return the lease key of a ``kind`` ("job" or "run") record."""
    return f"{LEASE_PREFIX}{kind}:{record_id}"


def dedupe_key(inputs: dict) -> str:
    """Return the key that maps a job's inputs to the active job computing them."""
    canonical = json.dumps(inputs, sort_keys=True, separators=(",", ":"))
    return DEDUPE_PREFIX + hashlib.sha256(canonical.encode()).hexdigest()


def evaluation_key(evaluation_id: str) -> str:
    return EVALUATION_PREFIX + evaluation_id


def evaluation_result_key(evaluation_id: str) -> str:
    return EVALUATION_PREFIX + evaluation_id + ":result"


def retrained_arguments(fingerprint: str, measurement: str, fraction: float, seed: int,
                        subset: int, removed_sha: str) -> dict:
    """Return the arguments that identify one stored row of retrained measurements.

    ``subset`` is the row's position in the draw of ``attribution.lds.draw_subsets``,
    which depends only on (n_train, fraction, seed), so an evaluation with more
    subsets reuses the rows of one with fewer. ``removed_sha`` guards against a
    change of the draw.
    """
    return {"fingerprint": fingerprint, "measurement": measurement, "fraction": float(fraction),
            "seed": int(seed), "subset": int(subset), "removed_sha": removed_sha}


def retrained_key(arguments: dict) -> str:
    canonical = json.dumps(arguments, sort_keys=True, separators=(",", ":"))
    return RETRAINED_PREFIX + hashlib.sha256(canonical.encode()).hexdigest()


def score_arguments(fingerprint: str, test_index: int, measurement: str,
                    engine_version: str) -> dict:
    """Return the arguments that identify one cached score vector."""
    return {
        "fingerprint": fingerprint,
        "test_index": int(test_index),
        "measurement": measurement,
        "engine_version": engine_version,
    }


def scores_key(arguments: dict) -> str:
    """Return the cache key of a score vector: a SHA-256 of its canonical arguments."""
    canonical = json.dumps(arguments, sort_keys=True, separators=(",", ":"))
    return SCORES_PREFIX + hashlib.sha256(canonical.encode()).hexdigest()
