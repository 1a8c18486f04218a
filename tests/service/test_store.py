import json

import numpy as np
import pytest

from service.keys import JobStatus, RunStatus, score_arguments, scores_key
from service.store import CacheMismatchError, decode_vector, encode_vector


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_vector_round_trip(dtype):
    vector = np.linspace(-1, 1, 7).astype(dtype)
    fields = {key.encode(): value for key, value in encode_vector(vector).items()}
    decoded = decode_vector(fields)
    assert decoded.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(decoded, vector)


def test_encode_rejects_object_arrays():
    with pytest.raises(TypeError, match="dtype"):
        encode_vector(np.array([{"a": 1}], dtype=object))


def test_decode_rejects_wrong_size():
    fields = {b"data": np.zeros(3, np.float32).tobytes(), b"dtype": b"float32",
              b"shape": b"[4]"}
    with pytest.raises(CacheMismatchError, match="shape"):
        decode_vector(fields)


def test_scores_round_trip_and_expiry(store):
    arguments = score_arguments("f" * 64, 3, "loss", "0.1.0")
    vector = np.arange(5, dtype=np.float32)
    store.put_scores(arguments, vector)
    np.testing.assert_array_equal(store.get_scores(arguments), vector)
    assert 0 < store.client.ttl(scores_key(arguments)) <= 60


def test_scores_missing_returns_none(store):
    assert store.get_scores(score_arguments("f" * 64, 4, "loss", "0.1.0")) is None


def test_scores_argument_mismatch_raises(store):
    arguments = score_arguments("f" * 64, 3, "loss", "0.1.0")
    store.put_scores(arguments, np.zeros(5, np.float32))
    other = {**arguments, "measurement": "margin"}
    store.client.hset(scores_key(arguments), "arguments", json.dumps(other, sort_keys=True))
    with pytest.raises(CacheMismatchError, match="stored for"):
        store.get_scores(arguments)


def test_missing_scores_lists_positions(store):
    present = score_arguments("f" * 64, 0, "loss", "0.1.0")
    absent = score_arguments("f" * 64, 1, "loss", "0.1.0")
    store.put_scores(present, np.zeros(2, np.float32))
    assert store.missing_scores([present, absent, present]) == [1]


def _create_job(store, job_id="job1"):
    store.create_job(job_id, {"job_id": job_id, "run_id": "run1", "measurement": "loss",
                              "test_indices": [0, 1], "total": 2, "engine_version": "0.1.0"})


def test_job_transitions_respect_status(store):
    _create_job(store)
    assert store.active_job_ids() == ["job1"]
    assert store.transition_job("job1", (JobStatus.QUEUED,), JobStatus.RUNNING)
    assert store.transition_job("job1", (JobStatus.QUEUED, JobStatus.RUNNING),
                                JobStatus.CANCELLED, finished_at=1.0)
    assert not store.transition_job("job1", (JobStatus.RUNNING,), JobStatus.SUCCEEDED)
    job = store.get_job("job1")
    assert job["status"] == JobStatus.CANCELLED
    assert job["finished_at"] == 1.0
    assert store.active_job_ids() == []
    assert 0 < store.client.ttl("magic:job:job1") <= 60


def test_job_progress_counters(store):
    _create_job(store)
    store.add_job_progress("job1", done=2, replayed=2)
    job = store.get_job("job1")
    assert job["done"] == 2
    assert job["replayed"] == 2
    assert job["test_indices"] == [0, 1]


def test_run_restarts_only_after_failure(store):
    assert store.start_run("run1", "digits-mlp", {}, {"epochs": 1}, n_train=10, n_test=5)
    assert not store.start_run("run1", "digits-mlp", {}, {"epochs": 1}, n_train=10, n_test=5)
    assert store.training_run_ids() == ["run1"]
    store.finish_run("run1", RunStatus.FAILED, error="boom")
    assert store.start_run("run1", "digits-mlp", {}, {"epochs": 1}, n_train=10, n_test=5)
    run = store.get_run("run1")
    assert run["status"] == RunStatus.TRAINING.value
    assert run["error"] == ""
    store.finish_run("run1", RunStatus.READY, fingerprint="abc", metrics={"test_loss": 1.0})
    assert store.get_run("run1")["metrics"] == {"test_loss": 1.0}
    assert not store.start_run("run1", "digits-mlp", {}, {"epochs": 1}, n_train=10, n_test=5)
