"""Coordinator pieces that run without a Ray cluster."""

import time

import pytest
from ray.exceptions import RayTaskError

from service.keys import JobStatus, lease_key
from service.settings import Settings
from service.store import Store
from workers.coordinator import (ORPHANED_EVALUATION_MESSAGE, REQUEUED_MESSAGE, RayBackend,
                                 describe_error, shard_length)


@pytest.fixture
def store(redis_base_url):
    store = Store.from_url(f"{redis_base_url}?db=2")
    store.client.flushdb()
    yield store
    store.close()


def test_describe_error_unwraps_ray_task_error():
    error = RayTaskError(function_name="run_shard", traceback_str="Traceback ...\nlong",
                         cause=FileNotFoundError("run folder /x has no spec.json"))
    assert describe_error(error) == "FileNotFoundError: run folder /x has no spec.json"


def test_describe_error_keeps_last_line():
    assert describe_error(RuntimeError("first\nsecond")) == "RuntimeError: second"
    assert describe_error(TimeoutError()) == "TimeoutError: no message"


def _queued_job(store, job_id):
    store.create_job(job_id, {"job_id": job_id, "run_id": "run1", "measurement": "loss",
                              "test_indices": [0], "total": 1, "engine_version": "0.1.0"})


def test_shutdown_leaves_jobs_queued(store, tmp_path):
    settings = Settings(storage_dir=tmp_path)
    first = RayBackend(settings, store, redis_url="unused")
    _queued_job(store, "job1")
    first.submit_job("job1")
    assert store.client.exists(lease_key("job", "job1"))
    first.shutdown(timeout=5)
    assert store.get_job("job1")["status"] == JobStatus.QUEUED
    assert not store.client.exists(lease_key("job", "job1"))

    second = RayBackend(settings, store, redis_url="unused")
    assert second.sweep() == ["job job1"]
    assert second._jobs.get_nowait() == "job1"
    assert second.sweep() == []  # held now, not taken twice


def test_sweep_takes_lapsed_jobs_only(store, tmp_path):
    settings = Settings(storage_dir=tmp_path)
    _queued_job(store, "held")
    _queued_job(store, "orphan")
    store.transition_job("orphan", (JobStatus.QUEUED,), JobStatus.RUNNING)
    assert store.claim("job", "held", "another-process", lease_s=60)
    assert store.claim("job", "orphan", "stopped-process", lease_s=0.2)
    time.sleep(0.4)
    backend = RayBackend(settings, store, redis_url="unused")
    assert backend.sweep() == ["job orphan"]
    orphan = store.get_job("orphan")
    assert orphan["status"] == JobStatus.QUEUED
    assert orphan["error"] == REQUEUED_MESSAGE
    assert store.job_status("held") == JobStatus.QUEUED
    # A lease is renewed and released only by the token that holds it.
    assert not store.renew("job", "held", backend.token, lease_s=60)
    store.release("job", "held", backend.token)
    assert store.client.get(lease_key("job", "held")) == b"another-process"


def test_sweep_skips_finished_job(store, tmp_path):
    _queued_job(store, "done")
    store.transition_job("done", (JobStatus.QUEUED,), JobStatus.SUCCEEDED)
    backend = RayBackend(Settings(storage_dir=tmp_path), store, redis_url="unused")
    assert backend.sweep() == []


@pytest.mark.parametrize("missing,max_shard,workers,expected", [
    (64, 64, 2, 32),   # even split over both workers
    (16, 64, 2, 8),
    (1, 64, 2, 1),     # fewer samples than workers
    (300, 64, 2, 60),  # capped by the maximum: 5 shards of 60
    (7, 3, 1, 3),
])
def test_shard_length_splits_evenly(missing, max_shard, workers, expected):
    length = shard_length(missing, max_shard, workers)
    assert length == expected
    assert length <= max_shard


def test_sweep_fails_an_orphaned_evaluation(store, tmp_path):
    store.create_evaluation("ev1", {"evaluation_id": "ev1", "run_id": "run1",
                                    "test_indices": [0], "total": 3})
    assert store.claim("evaluation", "ev1", "stopped-process", lease_s=0.2)
    backend = RayBackend(Settings(storage_dir=tmp_path), store, redis_url="unused")
    assert backend.sweep() == []  # its holder's lease is still alive
    time.sleep(0.4)
    assert backend.sweep() == ["evaluation ev1"]
    record = store.get_evaluation("ev1")
    assert record["status"] == JobStatus.FAILED
    assert record["error"] == ORPHANED_EVALUATION_MESSAGE
    assert not store.client.exists(lease_key("evaluation", "ev1"))
