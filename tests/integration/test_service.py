"""The service end to end: real Redis, local Ray workers, HTTP on a loopback port."""

from __future__ import annotations

import asyncio
import shutil
import time

import numpy as np
import pytest

import attribution
from client import (AsyncAttributionClient, ConflictError, JobFailedError, NotFoundError,
                    RequestValidationError)
from attribution.text import decode
from service.keys import score_arguments
from service.runs import run_folder
from service.store import Store

from .conftest import TINY

pytestmark = pytest.mark.integration


def _engine_scores(settings, run_id, indices, measurement="loss"):
    run = attribution.TrainingRun.load(run_folder(settings.runs_dir, run_id))
    return attribution.attribute(run, indices, measurement=measurement).numpy()


def test_healthz_over_http(client):
    health = client.health()
    assert health["status"] == "ok"
    assert health["redis"]["ok"] is True
    assert health["ray"]["detail"]["cpus"] == 2.0


def test_run_record_after_training(client, tiny_run):
    assert tiny_run["status"] == "ready"
    assert tiny_run["n_train"] == 200
    assert tiny_run["metrics"]["train_seconds"] > 0
    again = client.create_run("digits-mlp", TINY)
    assert again == {"run_id": tiny_run["run_id"], "status": "ready"}


@pytest.mark.parametrize("measurement", ["loss", "margin"])
def test_scores_equal_engine(client, tiny_run, settings, measurement):
    indices = [5, 0, 17, 3, 9]
    job_id = client.submit_job(tiny_run["run_id"], indices, measurement=measurement)
    job = client.wait(job_id, timeout=120, progress=False)
    assert job["replayed"] == len(indices)

    scores = client.scores(job_id)
    expected = _engine_scores(settings, tiny_run["run_id"], indices, measurement)
    assert scores.shape == (5, 200)
    scale = np.abs(expected).max()
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-5 * scale)

    top = client.top_k(job_id, k=2)
    assert [entry["test_index"] for entry in top] == indices
    order = np.argsort(scores[0]) if measurement == "loss" else np.argsort(-scores[0])
    assert [p["train_index"] for p in top[0]["proponents"]] == list(order[:2])


def test_repeated_job_served_from_cache(client, tiny_run):
    indices = [10, 11, 12]
    first = client.wait(client.submit_job(tiny_run["run_id"], indices), timeout=120,
                        progress=False)
    started = time.perf_counter()
    second_id = client.submit_job(tiny_run["run_id"], indices)
    second = client.wait(second_id, timeout=30, poll_interval=0.02, progress=False)
    assert time.perf_counter() - started < 5
    assert second["cached"] == 3
    assert second["replayed"] == 0
    np.testing.assert_array_equal(client.scores(second_id), client.scores(first["job_id"]))

    partial = client.wait(client.submit_job(tiny_run["run_id"], [12, 13]), timeout=120,
                          progress=False)
    assert partial["cached"] == 1
    assert partial["replayed"] == 1


def test_job_on_training_run_then_cancel(client, settings):
    # Long enough to cancel: 200 examples, 40 epochs of batch 100 = 80 steps per pass.
    overrides = {**TINY, "epochs": 40}
    created = client.create_run("digits-mlp", overrides)
    with pytest.raises(ConflictError, match="still training") as caught:
        client.submit_job(created["run_id"], [0])
    assert caught.value.retry_after == 5.0
    client.wait_for_run(created["run_id"], timeout=120)

    job_id = client.submit_job(created["run_id"], list(range(40)))
    deadline = time.monotonic() + 120
    while client.get_job(job_id)["progress"]["done"] == 0:
        assert time.monotonic() < deadline, "no progress within 120 s"
        time.sleep(0.05)
    cancelled = client.cancel(job_id)
    assert cancelled["status"] == "cancelled"

    time.sleep(3.0)  # workers would finish several more batches in this time
    job = client.get_job(job_id)
    assert job["status"] == "cancelled"
    assert job["progress"]["done"] < 40
    assert job["progress"]["done"] <= cancelled["progress"]["done"] + 2 * settings.replay_batch_size
    with pytest.raises(JobFailedError, match="cancelled"):
        client.wait(job_id, timeout=5, progress=False)

    # The samples finished before the cancellation stay cached and readable.
    store = Store.from_url(settings.redis_url)
    try:
        fingerprint = client.get_run(created["run_id"])["fingerprint"]
        cached = [index for index in range(40)
                  if store.get_scores(score_arguments(fingerprint, index, "loss",
                                                      attribution.__version__)) is not None]
    finally:
        store.close()
    assert len(cached) >= cancelled["progress"]["done"] > 0


def test_duplicate_job_computed_once(client):
    # 80 steps per reverse pass, so the first job is still running at the second submission.
    run = client.create_run("digits-mlp", {**TINY, "epochs": 40}, wait=True, timeout=120)
    indices = [30, 31, 32, 33, 34, 35, 36, 37]
    first = client.submit_job(run["run_id"], indices)
    second = client.submit_job(run["run_id"], indices)
    assert second == first
    job = client.wait(first, timeout=120, progress=False)
    assert job["replayed"] == len(indices)


def test_worker_failure_marks_job_failed(client, settings):
    run = client.create_run("digits-mlp", {**TINY, "seed": 1}, wait=True, timeout=120)
    shutil.rmtree(run_folder(settings.runs_dir, run["run_id"]))
    job_id = client.submit_job(run["run_id"], [0, 1])
    with pytest.raises(JobFailedError, match="has no spec.json") as caught:
        client.wait(job_id, timeout=120, progress=False)
    assert caught.value.job["status"] == "failed"

    retrained = client.create_run("digits-mlp", {**TINY, "seed": 1})
    assert retrained["status"] == "training"


def test_unknown_ids_404(client, tiny_run):
    with pytest.raises(NotFoundError, match="not found"):
        client.get_run("0" * 24)
    with pytest.raises(NotFoundError):
        client.submit_job("0" * 24, [0])
    with pytest.raises(NotFoundError):
        client.get_job("missing")
    with pytest.raises(NotFoundError):
        client.cancel("missing")
    with pytest.raises(NotFoundError):
        client.scores("missing")


@pytest.mark.parametrize("indices, measurement, field", [
    ([0, 50], "loss", "test_indices.1"),
    ([4, 4], "loss", "test_indices"),
    ([], "loss", "test_indices"),
    ([0], "influence", "measurement"),
])
def test_invalid_jobs_422(client, tiny_run, indices, measurement, field):
    with pytest.raises(RequestValidationError, match=field):
        client.submit_job(tiny_run["run_id"], indices, measurement=measurement)


def test_invalid_runs_422(client):
    with pytest.raises(RequestValidationError, match="recipe: unknown recipe"):
        client.create_run("imagenet-vit")
    with pytest.raises(RequestValidationError, match="overrides: .*epochz"):
        client.create_run("digits-mlp", {"epochz": 1})


def test_async_client_reads_cached_scores(service_url, tiny_run, client):
    indices = [20, 21]
    client.wait(client.submit_job(tiny_run["run_id"], indices), timeout=120, progress=False)

    async def scenario():
        async with AsyncAttributionClient(service_url) as async_client:
            job_id = await async_client.submit_job(tiny_run["run_id"], indices)
            job = await async_client.wait(job_id, timeout=30, progress=False)
            return job, await async_client.scores(job_id)

    job, scores = asyncio.run(scenario())
    assert job["cached"] == 2
    assert scores.shape == (2, 200)


def test_language_model_top_k_shows_chunk_text(client, settings):
    overrides = dict(n_train=30, n_test=4, sequence_length=8, hidden=[16], n_heads=2,
                     batch_size=10, epochs=1)
    created = client.create_run("shakespeare-gpt", overrides)
    run = client.wait_for_run(created["run_id"], timeout=300)
    job_id = client.submit_job(run["run_id"], [0, 2])
    client.wait(job_id, timeout=300, progress=False)

    scores = client.scores(job_id)
    np.testing.assert_allclose(scores, _engine_scores(settings, run["run_id"], [0, 2]),
                               rtol=1e-4, atol=1e-5 * np.abs(scores).max())
    top = client.top_k(job_id, k=2)
    loaded = attribution.TrainingRun.load(run_folder(settings.runs_dir, run["run_id"]))
    dataset = loaded.trainer.dataset
    first = top[0]["proponents"][0]
    assert first["label"] is None
    assert first["text"] == decode(dataset.x_train[first["train_index"]], dataset.vocab)
    assert top[0]["test_text"] == decode(dataset.x_test[0], dataset.vocab)
