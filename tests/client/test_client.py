"""Client SDK against httpx mock transports: retries, errors, parsing."""

import asyncio
import io
import json
import subprocess
import sys

import httpx
import numpy as np
import pytest

from client import (AsyncAttributionClient, AttributionClient, ConflictError, JobFailedError,
                    NotFoundError, RequestValidationError, RetryPolicy, ServiceConnectionError,
                    ServiceUnavailableError, WaitTimeoutError)

FAST = RetryPolicy(attempts=3, base_delay=0.0, max_delay=0.0)


def _job(status="running", done=0, total=2, error=None):
    return {"job_id": "j1", "run_id": "r1", "status": status, "measurement": "loss",
            "progress": {"done": done, "total": total}, "cached": 0, "replayed": done,
            "error": error, "created_at": 0.0}


def _client(handler, retry=FAST):
    return AttributionClient("http://service.test", retry=retry,
                             transport=httpx.MockTransport(handler))


def test_retries_503_then_succeeds():
    calls = []

    def handler(request):
        calls.append(request.url.path)
        if len(calls) < 3:
            return httpx.Response(503, json={"detail": "busy"}, headers={"Retry-After": "0"})
        return httpx.Response(202, json={"job_id": "j1", "status": "queued"})

    with _client(handler) as client:
        assert client.submit_job("r1", [0, 1]) == "j1"
    assert len(calls) == 3


def test_503_after_all_attempts_raises():
    with _client(lambda request: httpx.Response(503, json={"detail": "busy"})) as client:
        with pytest.raises(ServiceUnavailableError, match="busy"):
            client.get_job("j1")


def test_connect_error_retried_then_raised():
    calls = []

    def handler(request):
        calls.append(1)
        raise httpx.ConnectError("connection refused", request=request)

    with _client(handler) as client:
        with pytest.raises(ServiceConnectionError, match="is the service running"):
            client.submit_job("r1", [0])
    assert len(calls) == 3


def test_post_not_retried_after_read_timeout():
    calls = []

    def handler(request):
        calls.append(1)
        raise httpx.ReadTimeout("slow", request=request)

    with _client(handler) as client:
        with pytest.raises(ServiceConnectionError):
            client.submit_job("r1", [0])
    assert len(calls) == 1


def test_get_retried_after_read_timeout():
    calls = []

    def handler(request):
        calls.append(1)
        if len(calls) == 1:
            raise httpx.ReadTimeout("slow", request=request)
        return httpx.Response(200, json=_job())

    with _client(handler) as client:
        assert client.get_job("j1")["status"] == "running"
    assert len(calls) == 2


@pytest.mark.parametrize("status, error_class", [
    (404, NotFoundError), (409, ConflictError), (422, RequestValidationError),
])
def test_http_errors_map_to_classes(status, error_class):
    def handler(request):
        return httpx.Response(status, json={"detail": "nope"}, headers={"Retry-After": "5"})

    with _client(handler) as client:
        with pytest.raises(error_class) as caught:
            client.get_job("j1")
    assert caught.value.status_code == status
    assert caught.value.retry_after == 5.0


def test_validation_error_names_field():
    detail = [{"loc": ["body", "test_indices", 1], "msg": "test index 99 is out of range"}]

    with _client(lambda request: httpx.Response(422, json={"detail": detail})) as client:
        with pytest.raises(RequestValidationError, match=r"test_indices\.1: test index 99") as caught:
            client.submit_job("r1", [0, 99])
    assert caught.value.errors == detail


def test_scores_parse_npy():
    expected = np.arange(6, dtype=np.float32).reshape(2, 3)

    def handler(request):
        assert request.url.params["format"] == "npy"
        buffer = io.BytesIO()
        np.save(buffer, expected)
        return httpx.Response(200, content=buffer.getvalue())

    with _client(handler) as client:
        np.testing.assert_array_equal(client.scores("j1"), expected)


def test_wait_returns_succeeded_job():
    states = iter([_job("queued"), _job("running", 1), _job("succeeded", 2)])

    with _client(lambda request: httpx.Response(200, json=next(states))) as client:
        job = client.wait("j1", poll_interval=0.0, progress=True)
    assert job["status"] == "succeeded"


def test_wait_raises_for_failed_job():
    failed = _job("failed", error="TimeoutError: shard 0 did not finish")

    with _client(lambda request: httpx.Response(200, json=failed)) as client:
        with pytest.raises(JobFailedError, match="shard 0 did not finish"):
            client.wait("j1", poll_interval=0.0, progress=False)


def test_wait_times_out():
    with _client(lambda request: httpx.Response(200, json=_job())) as client:
        with pytest.raises(WaitTimeoutError, match="0/2 done"):
            client.wait("j1", timeout=0.05, poll_interval=0.01, progress=False)


def test_async_client_submit_and_wait():
    states = iter([_job("running", 1), _job("succeeded", 2)])
    post_statuses = []

    def handler(request):
        if request.method == "POST":
            status = 503 if not post_statuses else 202
            post_statuses.append(status)
            return httpx.Response(status, json={"job_id": "j1", "status": "queued"})
        return httpx.Response(200, json=next(states))

    async def scenario():
        async with AsyncAttributionClient("http://service.test", retry=FAST,
                                          transport=httpx.MockTransport(handler)) as client:
            job_id = await client.submit_job("r1", [0, 1])
            return await client.wait(job_id, poll_interval=0.0, progress=False)

    assert asyncio.run(scenario())["status"] == "succeeded"
    assert post_statuses == [503, 202]


def _evaluation(status, done=0):
    return {"evaluation_id": "e1", "status": status, "progress": {"done": done, "total": 3},
            "error": "retraining failed" if status == "failed" else None}


@pytest.mark.parametrize("make_client", ["sync", "async"])
def test_evaluation_and_prediction_calls(make_client):
    states = iter([_evaluation("running", 1), _evaluation("succeeded", 3)])
    bodies = []

    def handler(request):
        path = request.url.path
        if request.method == "POST":
            bodies.append((path, json.loads(request.content)))
            if path == "/v1/predictions":
                return httpx.Response(200, json={"predicted": [[0.5]]})
            return httpx.Response(202, json={"evaluation_id": "e1", "status": "queued"})
        if path.endswith("/result"):
            return httpx.Response(200, json={"lds": {"magic": {"0.1": 0.9}}})
        return httpx.Response(200, json=next(states))

    def run(client):
        evaluation_id = client.submit_evaluation("r1", (4, 2), methods=["magic"],
                                                 fractions=[0.1], num_subsets=6, seed=3)
        result = client.wait_evaluation(evaluation_id, poll_interval=0.0)
        return result, client.predict("r1", [4], removed=[7, 9])

    async def run_async():
        async with AsyncAttributionClient("http://service.test", retry=FAST,
                                          transport=httpx.MockTransport(handler)) as client:
            evaluation_id = await client.submit_evaluation(
                "r1", (4, 2), methods=["magic"], fractions=[0.1], num_subsets=6, seed=3)
            result = await client.wait_evaluation(evaluation_id, poll_interval=0.0)
            return result, await client.predict("r1", [4], removed=[7, 9])

    if make_client == "sync":
        with _client(handler) as client:
            result, prediction = run(client)
    else:
        result, prediction = asyncio.run(run_async())
    assert result == {"lds": {"magic": {"0.1": 0.9}}}
    assert prediction == {"predicted": [[0.5]]}
    assert bodies == [
        ("/v1/evaluations", {"run_id": "r1", "test_indices": [4, 2], "methods": ["magic"],
                             "fractions": [0.1], "num_subsets": 6, "seed": 3}),
        ("/v1/predictions", {"run_id": "r1", "test_indices": [4], "removed": [7, 9],
                             "measurement": "loss", "verify": False}),
    ]


def test_async_wait_evaluation_failed():
    def handler(request):
        return httpx.Response(200, json=_evaluation("failed"))

    async def scenario():
        async with AsyncAttributionClient("http://service.test", retry=FAST,
                                          transport=httpx.MockTransport(handler)) as client:
            await client.wait_evaluation("e1", poll_interval=0.0)

    with pytest.raises(JobFailedError, match="retraining failed"):
        asyncio.run(scenario())


def test_client_imports_without_torch_or_ray():
    code = ("import sys, client; heavy = [m for m in ('torch', 'ray', 'fastapi', 'redis') "
            "if m in sys.modules]; print(heavy); sys.exit(1 if heavy else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
