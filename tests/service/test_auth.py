"""API keys and ownership against a real Redis with a fake backend (no Ray)."""

import logging

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service import runs
from service.app import create_app
from service.auth import CredentialsError, KeyRing, hash_key, owner_id, read_key
from service.keys import JobStatus
from service.settings import Settings

from .fakes import TINY, FakeBackend, finish_job, mark_ready

KEY_A = "alice-key-0123456789"
KEY_B = "bob-key-9876543210"
UNKNOWN_KEY = "mallory-key-5555"
RUN_BODY = {"recipe": "digits-mlp", "overrides": TINY}


def _headers(key):
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def backend():
    return FakeBackend()


@pytest.fixture
def settings(redis_base_url, tmp_path):
    return Settings(redis_url=f"{redis_base_url}?db=1", storage_dir=tmp_path,
                    max_active_jobs=50, max_test_samples=20,
                    api_keys=(hash_key(KEY_A), hash_key(KEY_B)))


@pytest.fixture
def api(store, backend, settings):
    app = create_app(settings, backend_factory=lambda *_: backend)
    with TestClient(app) as client:
        yield client


def _ready_run(api, store, backend, settings, key):
    """Create the tiny run with ``key`` and mark it ready; return its id."""
    response = api.post("/v1/runs", json=RUN_BODY, headers=_headers(key))
    assert response.status_code == 202
    run_id = response.json()["run_id"]
    mark_ready(store, settings.runs_dir, run_id, backend.trainings[-1][1])
    return run_id


@pytest.fixture
def run_a(api, store, backend, settings):
    return _ready_run(api, store, backend, settings, KEY_A)


@pytest.fixture
def job_a(api, run_a, store):
    response = api.post("/v1/jobs", json={"run_id": run_a, "test_indices": [1, 2]},
                        headers=_headers(KEY_A))
    assert response.status_code == 202
    return response.json()["job_id"]


# ------------------------------------------------------------------ keys
def test_key_ring_finds_owner_of_each_hash():
    ring = KeyRing([hash_key(KEY_A), hash_key(KEY_B).upper()])
    assert ring.owner(KEY_A) == owner_id(hash_key(KEY_A))
    assert ring.owner(KEY_B) == hash_key(KEY_B)[:16]
    assert ring.owner(UNKNOWN_KEY) is None
    assert ring.owner("") is None
    assert ring.enabled
    assert not KeyRing([]).enabled


@pytest.mark.parametrize("headers, key", [
    ([(b"authorization", b"Bearer abc")], "abc"),
    ([(b"Authorization", b"bearer  abc ")], "abc"),
    ([(b"x-api-key", b"abc")], "abc"),
    ([(b"authorization", b"Bearer abc"), (b"x-api-key", b"abc")], "abc"),
])
def test_read_key_accepts_both_headers(headers, key):
    assert read_key(headers) == key


@pytest.mark.parametrize("headers, message", [
    ([], "missing API key"),
    ([(b"x-api-key", b"  ")], "missing API key"),
    ([(b"authorization", b"Basic YWxpY2U6cHc=")], "Bearer"),
    ([(b"authorization", b"Bearer")], "Bearer"),
    ([(b"authorization", b"Bearer abc"), (b"x-api-key", b"abd")], "different keys"),
])
def test_read_key_rejects_unusable_headers(headers, message):
    with pytest.raises(CredentialsError, match=message):
        read_key(headers)


def test_healthz_needs_no_key(api):
    assert api.get("/healthz").status_code == 200


@pytest.mark.parametrize("method, path", [
    ("GET", "/v1/runs/abc"), ("POST", "/v1/runs"), ("POST", "/v1/jobs"),
    ("GET", "/v1/jobs/abc"), ("DELETE", "/v1/jobs/abc"), ("GET", "/v1/jobs/abc/scores"),
    ("POST", "/v1/evaluations"), ("GET", "/v1/evaluations/abc"),
    ("GET", "/v1/evaluations/abc/result"), ("POST", "/v1/predictions"),
    ("GET", "/openapi.json"), ("GET", "/docs"), ("GET", "/metrics"), ("GET", "/no/such/route"),
    ("GET", "/v1/jobs/healthz"), ("GET", "/healthz/"),
])
def test_every_other_route_needs_a_key(api, method, path):
    response = api.request(method, path)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert "missing API key" in response.json()["detail"]


def test_unknown_key_not_echoed_or_logged(api, caplog):
    caplog.set_level(logging.DEBUG)
    for headers in (_headers(UNKNOWN_KEY), {"X-API-Key": UNKNOWN_KEY}):
        response = api.get("/v1/runs/abc", headers=headers)
        assert response.status_code == 401
        assert "invalid API key" in response.json()["detail"]
        assert UNKNOWN_KEY not in response.text
    assert "rejected GET /v1/runs/abc" in caplog.text
    assert UNKNOWN_KEY not in caplog.text


def test_valid_key_in_either_header_is_accepted(api):
    assert api.get("/v1/runs/abc", headers=_headers(KEY_A)).status_code == 404
    assert api.get("/v1/runs/abc", headers={"X-API-Key": KEY_B}).status_code == 404


def test_openapi_declares_key_schemes(api):
    schema = api.get("/openapi.json", headers=_headers(KEY_A)).json()
    assert set(schema["components"]["securitySchemes"]) == {"BearerKey", "HeaderKey"}
    assert "security" not in schema["paths"]["/healthz"]["get"]
    operation = schema["paths"]["/v1/jobs/{job_id}"]["get"]
    assert operation["security"] == [{"BearerKey": []}, {"HeaderKey": []}]
    assert {"401", "403"} <= set(operation["responses"])


def test_openapi_without_keys_has_no_schemes(redis_base_url, tmp_path, store):
    app = create_app(Settings(redis_url=f"{redis_base_url}?db=1", storage_dir=tmp_path),
                     backend_factory=lambda *_: FakeBackend())
    with TestClient(app) as client:
        schema = client.get("/openapi.json").json()
    assert "securitySchemes" not in schema.get("components", {})
    assert client.app is app


# ------------------------------------------------------------- ownership
def test_run_records_owner_and_gets_own_id(api, store, backend):
    first = api.post("/v1/runs", json=RUN_BODY, headers=_headers(KEY_A)).json()["run_id"]
    second = api.post("/v1/runs", json=RUN_BODY, headers=_headers(KEY_B)).json()["run_id"]
    fingerprint_a, fingerprint_b = (fingerprint for _, fingerprint in backend.trainings)
    assert first != second
    assert fingerprint_a == fingerprint_b
    assert first == runs.run_id_from_fingerprint(fingerprint_a, owner_id(hash_key(KEY_A)))
    assert store.get_run(first)["owner"] == hash_key(KEY_A)[:16]
    assert store.get_run(second)["owner"] == hash_key(KEY_B)[:16]
    again = api.post("/v1/runs", json=RUN_BODY, headers=_headers(KEY_A))
    assert again.status_code == 200
    assert again.json()["run_id"] == first


def test_other_key_cannot_read_run(api, run_a):
    assert api.get(f"/v1/runs/{run_a}", headers=_headers(KEY_A)).status_code == 200
    response = api.get(f"/v1/runs/{run_a}", headers=_headers(KEY_B))
    assert response.status_code == 403
    assert "belongs to another API key" in response.json()["detail"]


def test_other_key_cannot_use_run(api, run_a, backend):
    jobs_before = list(backend.jobs)
    bodies = {
        "/v1/jobs": {"run_id": run_a, "test_indices": [0]},
        "/v1/evaluations": {"run_id": run_a, "test_indices": [0], "fractions": [0.1],
                            "num_subsets": 3},
        "/v1/predictions": {"run_id": run_a, "test_indices": [0], "removed": [1]},
    }
    for path, body in bodies.items():
        response = api.post(path, json=body, headers=_headers(KEY_B))
        assert response.status_code == 403, path
        assert f"training run {run_a}" in response.json()["detail"]
    assert backend.jobs == jobs_before
    assert backend.evaluations == []


def test_job_records_owner(api, job_a, store):
    assert store.get_job(job_a)["owner"] == hash_key(KEY_A)[:16]


@pytest.mark.parametrize("method, suffix", [
    ("GET", ""), ("GET", "/scores"), ("DELETE", ""),
])
def test_other_key_cannot_read_or_cancel_job(api, job_a, store, method, suffix):
    response = api.request(method, f"/v1/jobs/{job_a}{suffix}", headers=_headers(KEY_B))
    assert response.status_code == 403
    assert f"attribution job {job_a} belongs to another API key" == response.json()["detail"]
    assert store.get_job(job_a)["status"].value == "queued"


def test_owner_reads_scores_and_cancels(api, run_a, store):
    body = {"run_id": run_a, "test_indices": [4]}
    job_id = api.post("/v1/jobs", json=body, headers=_headers(KEY_A)).json()["job_id"]
    other = api.post("/v1/jobs", json={**body, "test_indices": [5]},
                     headers=_headers(KEY_A)).json()["job_id"]
    finish_job(store, job_id, np.ones((1, 200), np.float32))
    scores = api.get(f"/v1/jobs/{job_id}/scores", headers=_headers(KEY_A))
    assert scores.status_code == 200
    assert scores.json()["scores"] == [[1.0] * 200]
    assert api.delete(f"/v1/jobs/{other}", headers=_headers(KEY_A)).json()["status"] == "cancelled"


def test_cache_shared_between_keys(api, run_a, store, backend, settings):
    """Two keys' runs of one spec share the fingerprint, so B's job is served from A's cache."""
    job_id = api.post("/v1/jobs", json={"run_id": run_a, "test_indices": [6]},
                      headers=_headers(KEY_A)).json()["job_id"]
    finish_job(store, job_id, np.full((1, 200), 2.0, np.float32))
    run_b = _ready_run(api, store, backend, settings, KEY_B)
    assert store.get_run(run_b)["fingerprint"] == store.get_run(run_a)["fingerprint"]
    response = api.post("/v1/jobs", json={"run_id": run_b, "test_indices": [6]},
                        headers=_headers(KEY_B))
    assert response.status_code < 300
    job_b = response.json()["job_id"]
    # As a worker would on finding every vector cached: nothing is stored for B's job.
    store.transition_job(job_b, (JobStatus.QUEUED,), JobStatus.SUCCEEDED, finished_at=1e10,
                         done=1)
    assert store.get_job(job_b)["owner"] == hash_key(KEY_B)[:16]
    scores = api.get(f"/v1/jobs/{job_b}/scores", headers=_headers(KEY_B)).json()["scores"]
    assert scores == [[2.0] * 200]
    assert api.get(f"/v1/jobs/{job_b}", headers=_headers(KEY_A)).status_code == 403


@pytest.mark.parametrize("method, suffix", [("GET", ""), ("GET", "/result"), ("DELETE", "")])
def test_other_key_cannot_read_or_cancel_evaluation(api, run_a, store, method, suffix):
    body = {"run_id": run_a, "test_indices": [0], "fractions": [0.1], "num_subsets": 3}
    response = api.post("/v1/evaluations", json=body, headers=_headers(KEY_A))
    assert response.status_code == 202
    evaluation_id = response.json()["evaluation_id"]
    assert store.get_evaluation(evaluation_id)["owner"] == hash_key(KEY_A)[:16]
    denied = api.request(method, f"/v1/evaluations/{evaluation_id}{suffix}",
                         headers=_headers(KEY_B))
    assert denied.status_code == 403
    assert "belongs to another API key" in denied.json()["detail"]
    assert store.get_evaluation(evaluation_id)["status"].value == "queued"


def test_record_without_owner_is_closed_to_keys(api, store, backend, settings):
    """A run made while authentication was off belongs to no key once it is on."""
    spec = runs.resolve_spec("digits-mlp", TINY)
    fingerprint = runs.run_fingerprint(spec)
    run_id = runs.run_id_from_fingerprint(fingerprint)
    store.start_run(run_id, "digits-mlp", TINY, spec.to_dict(), n_train=200, n_test=50)
    mark_ready(store, settings.runs_dir, run_id, fingerprint)
    response = api.get(f"/v1/runs/{run_id}", headers=_headers(KEY_A))
    assert response.status_code == 403
    assert "created without an API key" in response.json()["detail"]


def test_auth_off_ignores_owners(redis_base_url, tmp_path, store, backend):
    app = create_app(Settings(redis_url=f"{redis_base_url}?db=1", storage_dir=tmp_path),
                     backend_factory=lambda *_: backend)
    with TestClient(app) as client:
        run_id = client.post("/v1/runs", json=RUN_BODY).json()["run_id"]
        assert run_id == runs.run_id_from_fingerprint(backend.trainings[-1][1])
        assert store.get_run(run_id)["owner"] == ""
        mark_ready(store, tmp_path / "runs", run_id, backend.trainings[-1][1])
        job = client.post("/v1/jobs", json={"run_id": run_id, "test_indices": [0]}).json()
        assert store.get_job(job["job_id"])["owner"] == ""
        # A key sent to a service without keys is ignored.
        assert client.get(f"/v1/runs/{run_id}", headers=_headers(UNKNOWN_KEY)).status_code == 200
