"""Routes against a real Redis with a fake compute backend (no Ray, no training)."""

import io

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.keys import JobStatus, RunStatus
from service.settings import Settings

from .fakes import TINY, FakeBackend, finish_job, mark_ready


@pytest.fixture
def backend():
    return FakeBackend()


@pytest.fixture
def api(store, backend, redis_base_url, tmp_path):
    settings = Settings(redis_url=f"{redis_base_url}?db=1", storage_dir=tmp_path,
                        max_active_jobs=3, max_test_samples=20)
    app = create_app(settings, backend_factory=lambda *_: backend)
    with TestClient(app) as client:
        yield client


@pytest.fixture
def ready_run(api, store, backend, tmp_path):
    """A run with status ready, a labels file and no checkpoints."""
    run_id = api.post("/v1/runs", json={"recipe": "digits-mlp", "overrides": TINY}).json()["run_id"]
    mark_ready(store, tmp_path / "runs", run_id, backend.trainings[-1][1])
    return run_id


def test_healthz_reports_components(api):
    body = api.get("/healthz").json()
    assert body["status"] == "ok"
    assert body["redis"]["ok"] is True
    assert body["ray"]["detail"] == {"cpus": 2.0}


def test_create_run_is_idempotent(api, backend):
    first = api.post("/v1/runs", json={"recipe": "digits-mlp", "overrides": TINY})
    second = api.post("/v1/runs", json={"recipe": "digits-mlp", "overrides": TINY})
    assert first.status_code == 202
    assert second.status_code == 200
    assert first.json()["run_id"] == second.json()["run_id"]
    assert len(backend.trainings) == 1


def test_read_run_shows_spec(api):
    run_id = api.post("/v1/runs", json={"recipe": "digits-mlp", "overrides": TINY}).json()["run_id"]
    body = api.get(f"/v1/runs/{run_id}").json()
    assert body["status"] == "training"
    assert body["n_test"] == 50
    assert body["spec"]["hidden"] == [16]


@pytest.mark.parametrize("body, field", [
    ({"recipe": "nope"}, "recipe"),
    ({"recipe": "digits-mlp", "overrides": {"epochz": 2}}, "overrides"),
    ({"recipe": "digits-mlp", "overrides": {"epochs": "2"}}, "overrides"),
    ({"recipe": "digits-mlp", "extra": 1}, "extra"),
])
def test_create_run_invalid_body(api, body, field):
    response = api.post("/v1/runs", json=body)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][:2] == ["body", field]


def test_unknown_ids_are_404(api):
    assert api.get("/v1/runs/nope").status_code == 404
    assert api.get("/v1/jobs/nope").status_code == 404
    assert api.delete("/v1/jobs/nope").status_code == 404
    assert api.get("/v1/jobs/nope/scores").status_code == 404
    response = api.post("/v1/jobs", json={"run_id": "nope", "test_indices": [0]})
    assert response.status_code == 404
    assert "nope" in response.json()["detail"]


def test_job_on_training_run_is_409_with_retry(api):
    run_id = api.post("/v1/runs", json={"recipe": "digits-mlp", "overrides": TINY}).json()["run_id"]
    response = api.post("/v1/jobs", json={"run_id": run_id, "test_indices": [0]})
    assert response.status_code == 409
    assert response.headers["Retry-After"] == "5"
    assert "still training" in response.json()["detail"]


def test_job_on_failed_run_is_409(api, store):
    run_id = api.post("/v1/runs", json={"recipe": "digits-mlp", "overrides": TINY}).json()["run_id"]
    store.finish_run(run_id, RunStatus.FAILED, error="DataError: loss became nan")
    response = api.post("/v1/jobs", json={"run_id": run_id, "test_indices": [0]})
    assert response.status_code == 409
    assert "loss became nan" in response.json()["detail"]


@pytest.mark.parametrize("body, location", [
    ({"test_indices": [0, 50]}, ["body", "test_indices", 1]),
    ({"test_indices": [3, 3]}, ["body", "test_indices"]),
    ({"test_indices": [-1]}, ["body", "test_indices", 0]),
    ({"test_indices": ["1"]}, ["body", "test_indices", 0]),
    ({"test_indices": []}, ["body", "test_indices"]),
    ({"test_indices": list(range(21))}, ["body", "test_indices"]),
    ({"test_indices": [0], "measurement": "accuracy"}, ["body", "measurement"]),
])
def test_submit_job_invalid_body(api, ready_run, body, location):
    response = api.post("/v1/jobs", json={"run_id": ready_run, **body})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == location


def test_submit_job_queues_it(api, ready_run, backend):
    response = api.post("/v1/jobs", json={"run_id": ready_run, "test_indices": [4, 2]})
    assert response.status_code == 202
    job_id = response.json()["job_id"]
    assert backend.jobs == [job_id]
    body = api.get(f"/v1/jobs/{job_id}").json()
    assert body["status"] == "queued"
    assert body["progress"] == {"done": 0, "total": 2}


def test_too_many_active_jobs_is_503(api, ready_run):
    for index in range(3):
        response = api.post("/v1/jobs", json={"run_id": ready_run, "test_indices": [index]})
        assert response.status_code == 202
    response = api.post("/v1/jobs", json={"run_id": ready_run, "test_indices": [3]})
    assert response.status_code == 503
    assert "Retry-After" in response.headers


def test_duplicate_job_joins_active_job(api, ready_run, backend, store):
    body = {"run_id": ready_run, "test_indices": [5, 1]}
    first = api.post("/v1/jobs", json=body)
    second = api.post("/v1/jobs", json=body)
    assert (first.status_code, second.status_code) == (202, 200)
    assert second.json()["job_id"] == first.json()["job_id"]
    assert backend.jobs == [first.json()["job_id"]]
    assert store.metric_totals()["jobs_submitted"] == 1
    # Other inputs, the other measurement included, make another job.
    other = api.post("/v1/jobs", json={**body, "measurement": "margin"})
    assert other.status_code == 202
    assert len(set(backend.jobs)) == 2


def test_resubmit_after_failure_makes_new_job(api, ready_run, backend, store):
    body = {"run_id": ready_run, "test_indices": [7]}
    first = api.post("/v1/jobs", json=body).json()["job_id"]
    store.transition_job(first, (JobStatus.QUEUED,), JobStatus.FAILED, error="worker lost")
    second = api.post("/v1/jobs", json=body)
    assert second.status_code == 202
    assert second.json()["job_id"] != first
    assert backend.jobs == [first, second.json()["job_id"]]


def test_cached_job_succeeds_at_submission(api, ready_run, backend, store):
    first = api.post("/v1/jobs", json={"run_id": ready_run, "test_indices": [3, 8]}).json()
    scores = np.arange(400, dtype=np.float32).reshape(2, 200)
    finish_job(store, first["job_id"], scores)
    again = api.post("/v1/jobs", json={"run_id": ready_run, "test_indices": [8, 3]})
    assert again.status_code == 200
    assert again.json()["status"] == "succeeded"
    assert backend.jobs == [first["job_id"]]
    job = api.get(f"/v1/jobs/{again.json()['job_id']}").json()
    assert job["status"] == "succeeded"
    assert job["cached"] == 2
    matrix = api.get(f"/v1/jobs/{again.json()['job_id']}/scores").json()["scores"]
    np.testing.assert_array_equal(matrix, scores[::-1])
    # One sample not cached: the job goes to the backend.
    partly = api.post("/v1/jobs", json={"run_id": ready_run, "test_indices": [3, 9]})
    assert partly.status_code == 202


def test_cancel_then_cancel_again(api, ready_run):
    job_id = api.post("/v1/jobs", json={"run_id": ready_run, "test_indices": [0]}).json()["job_id"]
    assert api.delete(f"/v1/jobs/{job_id}").json()["status"] == "cancelled"
    again = api.delete(f"/v1/jobs/{job_id}")
    assert again.status_code == 409
    assert "already cancelled" in again.json()["detail"]
    assert api.get(f"/v1/jobs/{job_id}/scores").status_code == 409


def test_scores_of_unfinished_job_is_409(api, ready_run):
    job_id = api.post("/v1/jobs", json={"run_id": ready_run, "test_indices": [0]}).json()["job_id"]
    response = api.get(f"/v1/jobs/{job_id}/scores")
    assert response.status_code == 409
    assert response.headers["Retry-After"] == "2"


def test_scores_json_npy_and_top_k(api, ready_run, store):
    job_id = api.post("/v1/jobs", json={"run_id": ready_run, "test_indices": [7, 3]}).json()["job_id"]
    scores = np.random.default_rng(0).normal(size=(2, 200)).astype(np.float32)
    finish_job(store, job_id, scores)

    body = api.get(f"/v1/jobs/{job_id}/scores").json()
    assert body["test_indices"] == [7, 3]
    np.testing.assert_allclose(np.array(body["scores"], dtype=np.float32), scores)

    npy = api.get(f"/v1/jobs/{job_id}/scores", params={"format": "npy"})
    assert npy.headers["content-type"] == "application/x-npy"
    np.testing.assert_array_equal(np.load(io.BytesIO(npy.content)), scores)

    top = api.get(f"/v1/jobs/{job_id}/scores", params={"top_k": 2}).json()["top"]
    assert top[0]["test_index"] == 7
    assert top[0]["test_label"] == 7
    assert [p["train_index"] for p in top[0]["proponents"]] == list(np.argsort(scores[0])[:2])
    assert [o["train_index"] for o in top[0]["opponents"]] == list(np.argsort(scores[0])[::-1][:2])
    assert top[0]["proponents"][0]["label"] == top[0]["proponents"][0]["train_index"] % 10


def test_top_k_for_margin_prefers_positive(api, ready_run, store):
    body = {"run_id": ready_run, "test_indices": [0], "measurement": "margin"}
    job_id = api.post("/v1/jobs", json=body).json()["job_id"]
    scores = np.array([np.linspace(-1, 1, 200)], dtype=np.float32)
    finish_job(store, job_id, scores)
    top = api.get(f"/v1/jobs/{job_id}/scores", params={"top_k": 1}).json()["top"][0]
    assert top["proponents"][0]["train_index"] == 199
    assert top["opponents"][0]["train_index"] == 0


@pytest.mark.parametrize("params", [{"top_k": 0}, {"top_k": 201}, {"top_k": 2, "format": "npy"},
                                    {"format": "csv"}])
def test_scores_invalid_query(api, ready_run, store, params):
    job_id = api.post("/v1/jobs", json={"run_id": ready_run, "test_indices": [0]}).json()["job_id"]
    finish_job(store, job_id, np.zeros((1, 200), np.float32))
    assert api.get(f"/v1/jobs/{job_id}/scores", params=params).status_code == 422


def test_expired_scores_are_410(api, ready_run, store):
    job_id = api.post("/v1/jobs", json={"run_id": ready_run, "test_indices": [0]}).json()["job_id"]
    finish_job(store, job_id, np.zeros((1, 200), np.float32))
    for key in store.client.scan_iter(match="magic:scores:*"):
        store.client.delete(key)
    assert api.get(f"/v1/jobs/{job_id}/scores").status_code == 410


def test_openapi_documents_sign_convention(api):
    schema = api.get("/openapi.json").json()
    description = schema["components"]["schemas"]["ScoresPublic"]["properties"]["scores"]
    assert "-scores[q][i]" in description["description"]


@pytest.mark.parametrize("path,body,field", [
    ("/v1/jobs", '{"run_id": "abc", "test_indices": [NaN]}', "test_indices"),
    ("/v1/runs", '{"recipe": NaN}', "recipe"),
    ("/v1/runs", '{"recipe": "digits-mlp", "overrides": {"lr": Infinity}, "x": -Infinity}',
     "x"),
])
def test_non_finite_json_is_422_not_500(api, path, body, field):
    response = api.post(path, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert field in [str(part) for error in response.json()["detail"] for part in error["loc"]]


def test_top_k_splits_by_sign(api, ready_run, store):
    job_id = api.post("/v1/jobs", json={"run_id": ready_run, "test_indices": [0]}).json()["job_id"]
    scores = np.array([np.linspace(-1, 3, 200)], dtype=np.float32)  # 50 negative scores
    finish_job(store, job_id, scores)
    top = api.get(f"/v1/jobs/{job_id}/scores", params={"top_k": 200}).json()["top"][0]
    assert len(top["proponents"]) == 50
    assert len(top["opponents"]) == 150
    assert all(item["score"] < 0 for item in top["proponents"])
    assert all(item["score"] > 0 for item in top["opponents"])
