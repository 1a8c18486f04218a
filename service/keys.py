"""Redis key names and status values shared by the service, the workers and the client.

This module imports only the standard library, so the client SDK can use the
status values without the server stack installed.

Layout (all keys start with ``PREFIX``):

- ``run:{run_id}``: hash, the record of one training run.
- ``job:{job_id}``: hash, the record of one attribution job.
- ``jobs:active``: set of job ids that are queued or running.
- ``scores:{cache_key}``: hash, one test sample's score vector with its arguments.
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
