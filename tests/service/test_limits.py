"""Bad input: body size, score-matrix size, strict request bodies and capped 422 lists."""

import asyncio
import json

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.auth import hash_key
from service.limits import MAX_LISTED_ERRORS, BodyLimitMiddleware
from service.settings import Settings

from .fakes import TINY, FakeBackend, mark_ready

MAX_BODY = 4096


@pytest.fixture
def backend():
    return FakeBackend()


@pytest.fixture
def settings(redis_base_url, tmp_path):
    # 200 training examples x 6 test samples = 1200 values, over the 1000 allowed.
    return Settings(redis_url=f"{redis_base_url}?db=1", storage_dir=tmp_path,
                    max_active_jobs=50, max_test_samples=20, max_body_bytes=MAX_BODY,
                    max_score_values=1000)


@pytest.fixture
def api(store, backend, settings):
    app = create_app(settings, backend_factory=lambda *_: backend)
    with TestClient(app) as client:
        yield client


@pytest.fixture
def ready_run(api, store, backend, settings):
    run_id = api.post("/v1/runs", json={"recipe": "digits-mlp", "overrides": TINY}).json()["run_id"]
    mark_ready(store, settings.runs_dir, run_id, backend.trainings[-1][1])
    return run_id


def _json_post(api, path, content, headers=None):
    return api.post(path, content=content,
                    headers={"content-type": "application/json", **(headers or {})})


# ------------------------------------------------------------- body size
def test_declared_oversized_body_is_413(api, backend):
    body = json.dumps({"run_id": "r", "test_indices": list(range(2000))})
    assert len(body) > MAX_BODY
    response = _json_post(api, "/v1/jobs", body)
    assert response.status_code == 413
    assert f"limit of {MAX_BODY} bytes (4 KiB, MAGIC_MAX_BODY_BYTES)" in response.json()["detail"]
    assert backend.jobs == []


def test_chunked_oversized_body_is_413(api):
    def chunks():
        for _ in range(10):
            yield b" " * 1000

    response = _json_post(api, "/v1/runs", chunks())
    assert "content-length" not in {name.lower() for name in response.request.headers}
    assert response.status_code == 413
    assert f"limit of {MAX_BODY} bytes" in response.json()["detail"]


def test_chunked_body_under_limit_is_parsed(api):
    def chunks():
        yield b'{"recipe": '
        yield b'"nope"}'

    response = _json_post(api, "/v1/runs", chunks())
    assert response.status_code == 422
    assert "unknown recipe 'nope'" in response.json()["detail"][0]["msg"]


def test_body_at_limit_is_accepted(api):
    body = '{"recipe": "nope"' + " " * (MAX_BODY - 18) + "}"
    assert len(body) == MAX_BODY
    assert _json_post(api, "/v1/runs", body).status_code == 422
    assert _json_post(api, "/v1/runs", body + " ").status_code == 413


def test_expect_continue_is_413_without_body(api):
    response = _json_post(api, "/v1/runs", b" " * (MAX_BODY + 1),
                          headers={"Expect": "100-continue"})
    assert response.status_code == 413


def _run_middleware(headers, messages, max_bytes=10):
    """Send ``messages`` through BodyLimitMiddleware; return (status, body the app saw)."""
    seen = {}

    async def app(scope, receive, send):
        seen["body"] = (await receive())["body"]
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def main():
        pending = list(messages)
        sent = []

        async def receive():
            return pending.pop(0) if pending else {"type": "http.disconnect"}

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": "/v1/runs", "headers": headers}
        await BodyLimitMiddleware(app, max_bytes=max_bytes)(scope, receive, send)
        return sent[0]["status"], seen.get("body")

    return asyncio.run(main())


def test_middleware_counts_streamed_chunks():
    parts = [{"type": "http.request", "body": b"12345", "more_body": True},
             {"type": "http.request", "body": b"67890", "more_body": True},
             {"type": "http.request", "body": b"x", "more_body": False}]
    assert _run_middleware([], parts) == (413, None)
    under_limit = parts[:1] + [{**parts[1], "more_body": False}]
    assert _run_middleware([], under_limit) == (200, b"1234567890")


def test_middleware_rejects_understated_content_length():
    """A body longer than its Content-Length is still counted and rejected."""
    parts = [{"type": "http.request", "body": b"x" * 20, "more_body": False}]
    assert _run_middleware([(b"content-length", b"5")], parts) == (413, None)


def test_middleware_rejects_invalid_content_length():
    parts = [{"type": "http.request", "body": b"", "more_body": False}]
    assert _run_middleware([(b"content-length", b"-1")], parts) == (400, None)
    assert _run_middleware([(b"content-length", b"ten")], parts) == (400, None)


def test_missing_key_is_401_before_body_limit(redis_base_url, tmp_path, store):
    settings = Settings(redis_url=f"{redis_base_url}?db=1", storage_dir=tmp_path,
                        max_body_bytes=MAX_BODY, api_keys=(hash_key("k" * 20),))
    app = create_app(settings, backend_factory=lambda *_: FakeBackend())
    with TestClient(app) as client:
        assert _json_post(client, "/v1/runs", b" " * (MAX_BODY + 1)).status_code == 401
        with_key = _json_post(client, "/v1/runs", b" " * (MAX_BODY + 1),
                              headers={"X-API-Key": "k" * 20})
        assert with_key.status_code == 413


def test_openapi_documents_413(api):
    schema = api.get("/openapi.json").json()
    assert "413" in schema["paths"]["/v1/jobs"]["post"]["responses"]
    assert "413" not in schema["paths"]["/v1/jobs/{job_id}"]["get"]["responses"]


# ------------------------------------------------------ score-matrix size
def test_test_sample_limit_is_named(api, ready_run):
    response = api.post("/v1/jobs", json={"run_id": ready_run, "test_indices": list(range(21))})
    assert response.status_code == 422
    assert "limit of 20 per job" in response.json()["detail"][0]["msg"]


@pytest.mark.parametrize("path, extra", [
    ("/v1/jobs", {}),
    ("/v1/evaluations", {"fractions": [0.1], "num_subsets": 3}),
    ("/v1/predictions", {"removed": [0]}),
])
def test_score_matrix_limit(api, ready_run, backend, path, extra):
    response = api.post(path, json={"run_id": ready_run, "test_indices": list(range(6)), **extra})
    assert response.status_code == 422
    error = response.json()["detail"][0]
    assert error["loc"] == ["body", "test_indices"]
    assert "1200 values, over the limit of 1000 (MAGIC_MAX_SCORE_VALUES)" in error["msg"]
    assert "at most 5 test samples" in error["msg"]
    assert backend.jobs == []
    five = api.post(path, json={"run_id": ready_run, "test_indices": list(range(5)), **extra})
    assert five.status_code != 422


# ------------------------------------------------------ validation errors
def test_validation_errors_are_capped(api):
    response = api.post("/v1/jobs", json={"run_id": "r", "test_indices": [-1] * 100})
    assert response.status_code == 422
    errors = response.json()["detail"]
    assert len(errors) == MAX_LISTED_ERRORS + 1
    assert all(error["type"] == "greater_than_equal" for error in errors[:-1])
    assert errors[-1]["type"] == "too_many_errors"
    assert errors[-1]["msg"].startswith("80 more validation errors not listed")


def test_long_rejected_input_is_shortened(api):
    response = api.post("/v1/runs", json={"recipe": "digits-mlp", "notes": "y" * 3000})
    error = response.json()["detail"][0]
    assert error["loc"] == ["body", "notes"]
    assert len(error["input"]) < 300
    assert error["input"].endswith("(3000 characters)")


# -------------------------------------------------------- strict bodies
JOB = {"run_id": "r", "test_indices": [0]}
EVALUATION = {"run_id": "r", "test_indices": [0]}
PREDICTION = {"run_id": "r", "test_indices": [0], "removed": [1]}
RUN = {"recipe": "digits-mlp"}


@pytest.mark.parametrize("path, body", [
    ("/v1/runs", RUN), ("/v1/jobs", JOB), ("/v1/evaluations", EVALUATION),
    ("/v1/predictions", PREDICTION),
])
def test_unknown_field_is_named(api, path, body):
    response = api.post(path, json={**body, "test_indice": [0]})
    assert response.status_code == 422
    error = response.json()["detail"][0]
    assert error["type"] == "extra_forbidden"
    assert error["loc"] == ["body", "test_indice"]


STRICT_CASES = [
    ("/v1/jobs", {**JOB, "test_indices": [1.0]}, ["body", "test_indices", 0], "int_type"),
    ("/v1/jobs", {**JOB, "test_indices": [True]}, ["body", "test_indices", 0], "int_type"),
    ("/v1/jobs", {**JOB, "test_indices": 0}, ["body", "test_indices"], "list_type"),
    ("/v1/jobs", {**JOB, "test_indices": [[0]]}, ["body", "test_indices", 0], "int_type"),
    ("/v1/jobs", {**JOB, "run_id": 5}, ["body", "run_id"], "string_type"),
    ("/v1/jobs", {**JOB, "run_id": "r" * 129}, ["body", "run_id"], "string_too_long"),
    ("/v1/runs", {"recipe": "x" * 129}, ["body", "recipe"], "string_too_long"),
    ("/v1/runs", {**RUN, "overrides": [1]}, ["body", "overrides"], "dict_type"),
    ("/v1/evaluations", {**EVALUATION, "seed": "3"}, ["body", "seed"], "int_type"),
    ("/v1/evaluations", {**EVALUATION, "seed": True}, ["body", "seed"], "int_type"),
    ("/v1/evaluations", {**EVALUATION, "num_subsets": 5.0}, ["body", "num_subsets"], "int_type"),
    ("/v1/evaluations", {**EVALUATION, "fractions": [0.1, 1]}, ["body", "fractions", 1],
     "less_than"),
    ("/v1/evaluations", {**EVALUATION, "fractions": [-0.1]}, ["body", "fractions", 0],
     "greater_than"),
    ("/v1/predictions", {**PREDICTION, "verify": 1}, ["body", "verify"], "bool_type"),
    ("/v1/predictions", {**PREDICTION, "verify": "yes"}, ["body", "verify"], "bool_type"),
    ("/v1/predictions", {**PREDICTION, "removed": [-2]}, ["body", "removed", 0],
     "greater_than_equal"),
]


@pytest.mark.parametrize("path, body, location, error_type", STRICT_CASES)
def test_wrong_types_rejected(api, path, body, location, error_type):
    response = api.post(path, json=body)
    assert response.status_code == 422
    error = response.json()["detail"][0]
    assert error["loc"] == location
    assert error["type"] == error_type


@pytest.mark.parametrize("text, location", [
    ('{"run_id": "r", "test_indices": [0], "fractions": [NaN]}', ["body", "fractions", 0]),
    ('{"run_id": "r", "test_indices": [0], "fractions": [Infinity]}', ["body", "fractions", 0]),
    ('{"run_id": "r", "test_indices": [0], "fractions": [-Infinity]}', ["body", "fractions", 0]),
    ('{"run_id": "r", "test_indices": [NaN]}', ["body", "test_indices", 0]),
])
def test_non_finite_numbers_rejected(api, text, location):
    response = _json_post(api, "/v1/evaluations", text)
    assert response.status_code == 422
    errors = response.json()["detail"]
    assert errors[0]["loc"] == location
    assert errors[0]["type"] in ("finite_number", "int_type")


def test_non_finite_override_rejected(api):
    response = _json_post(api, "/v1/runs",
                          '{"recipe": "digits-mlp", "overrides": {"lr": NaN}}')
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "overrides"]
    assert "finite" in response.json()["detail"][0]["msg"]


@pytest.mark.parametrize("content, content_type, status", [
    ("[" * 2000 + "]" * 2000, "application/json", 400),
    ("{\"recipe\": ", "application/json", 422),
    ("[1, 2]", "application/json", 422),
    ('{"recipe": "digits-mlp"}', "text/plain", 422),
    ("recipe=digits-mlp", "application/x-www-form-urlencoded", 422),
])
def test_malformed_bodies_rejected(api, content, content_type, status):
    response = api.post("/v1/runs", content=content, headers={"content-type": content_type})
    assert response.status_code == status


def test_query_errors_use_list_form(api, ready_run, store):
    from .fakes import finish_job
    import numpy as np

    job_id = api.post("/v1/jobs", json={"run_id": ready_run, "test_indices": [0]}).json()["job_id"]
    finish_job(store, job_id, np.zeros((1, 200), np.float32))
    for params in ({"top_k": 201}, {"top_k": 2, "format": "npy"}):
        response = api.get(f"/v1/jobs/{job_id}/scores", params=params)
        assert response.status_code == 422
        assert response.json()["detail"][0]["loc"] == ["query", "top_k"]
