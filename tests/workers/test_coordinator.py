"""Coordinator pieces that run without a Ray cluster."""

import pytest
from ray.exceptions import RayTaskError

from service.keys import JobStatus
from service.settings import Settings
from service.store import Store
from workers.coordinator import SHUTDOWN_MESSAGE, RayBackend, describe_error, shard_length


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


def test_shutdown_fails_queued_jobs(store, tmp_path):
    backend = RayBackend(Settings(storage_dir=tmp_path), store, redis_url="unused")
    backend.stopping.set()
    store.create_job("job1", {"job_id": "job1", "run_id": "run1", "measurement": "loss",
                              "test_indices": [0], "total": 1, "engine_version": "0.1.0"})
    backend.submit_job("job1")
    backend.shutdown(timeout=5)
    job = store.get_job("job1")
    assert job["status"] == JobStatus.FAILED
    assert job["error"] == SHUTDOWN_MESSAGE


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
