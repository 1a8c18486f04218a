"""GET /metrics against a real Redis with a fake compute backend."""

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from service.app import create_app
from service.keys import JobStatus, score_arguments
from service.settings import Settings

from .fakes import TINY, FakeBackend, mark_ready


@pytest.fixture
def backend():
    return FakeBackend()


@pytest.fixture
def api(store, backend, redis_base_url, tmp_path):
    settings = Settings(redis_url=f"{redis_base_url}?db=1", storage_dir=tmp_path)
    app = create_app(settings, backend_factory=lambda *_: backend)
    with TestClient(app) as client:
        yield client


@pytest.fixture
def ready_run(api, store, backend, tmp_path):
    run_id = api.post("/v1/runs", json={"recipe": "digits-mlp", "overrides": TINY}).json()["run_id"]
    mark_ready(store, tmp_path / "runs", run_id, backend.trainings[-1][1])
    return run_id


def scrape(api) -> dict[str, float]:
    """Return every sample of GET /metrics as {"name{label=value,...}": value}."""
    response = api.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            labels = ",".join(f"{key}={value}" for key, value in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


def run_job(api, store, backend, run_id, test_indices, cached):
    """Submit a job, cache its scores as a replay worker would, and mark it succeeded."""
    job_id = api.post("/v1/jobs", json={"run_id": run_id, "test_indices": test_indices}).json()[
        "job_id"]
    job = store.get_job(job_id)
    run = store.get_run(run_id)
    store.transition_job(job_id, (JobStatus.QUEUED,), JobStatus.RUNNING)
    store.set_job_fields(job_id, cached=cached, done=cached)
    for index in test_indices:
        store.put_scores(score_arguments(run["fingerprint"], index, job["measurement"],
                                         job["engine_version"]), np.zeros(200, np.float32))
    store.add_job_progress(job_id, done=len(test_indices) - cached,
                           replayed=len(test_indices) - cached)
    store.transition_job(job_id, (JobStatus.RUNNING,), JobStatus.SUCCEEDED, finished_at=1e10)
    return job_id


def test_metrics_empty_service(api):
    samples = scrape(api)
    assert samples["magic_jobs_submitted_total{}"] == 0
    assert samples["magic_jobs_finished_total{status=succeeded}"] == 0
    assert samples["magic_active_jobs{}"] == 0
    assert samples["magic_cache_hits_total{}"] == 0


def test_metrics_count_a_job(api, store, backend, ready_run):
    before = scrape(api)
    run_job(api, store, backend, ready_run, [0, 1, 2, 3], cached=1)
    after = scrape(api)
    assert after["magic_jobs_submitted_total{}"] == before["magic_jobs_submitted_total{}"] + 1
    assert after["magic_jobs_finished_total{status=succeeded}"] == 1
    assert after["magic_jobs_finished_total{status=failed}"] == 0
    assert after["magic_samples_replayed_total{}"] == 3
    assert after["magic_cache_hits_total{}"] == 1
    assert after["magic_cache_misses_total{}"] == 3
    assert after["magic_active_jobs{}"] == 0


def test_metrics_active_and_failed_jobs(api, store, backend, ready_run):
    job_id = api.post("/v1/jobs", json={"run_id": ready_run, "test_indices": [5]}).json()["job_id"]
    assert scrape(api)["magic_active_jobs{}"] == 1
    store.transition_job(job_id, (JobStatus.QUEUED,), JobStatus.FAILED, error="test")
    samples = scrape(api)
    assert samples["magic_active_jobs{}"] == 0
    assert samples["magic_jobs_finished_total{status=failed}"] == 1


def test_metrics_count_requests_by_route(api, ready_run):
    api.get(f"/v1/runs/{ready_run}")
    api.get("/v1/runs/unknown-run")
    samples = scrape(api)
    ok = "magic_http_requests_total{method=GET,route=/v1/runs/{run_id},status=200}"
    missing = "magic_http_requests_total{method=GET,route=/v1/runs/{run_id},status=404}"
    assert samples[ok] == 1
    assert samples[missing] == 1
