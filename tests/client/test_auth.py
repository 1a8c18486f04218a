"""API keys in the client SDK, and the errors of 401, 403 and 413."""

import asyncio

import httpx
import pytest

from client import (APIError, AsyncAttributionClient, AttributionClient, AuthenticationError,
                    PermissionDeniedError, RequestTooLargeError, RetryPolicy)

FAST = RetryPolicy(attempts=2, base_delay=0.0, max_delay=0.0)
KEY = "client-test-key-123"


def _recording_handler(seen):
    def handler(request):
        seen.append(request.headers.get("authorization"))
        return httpx.Response(200, json={"job_id": "j1", "status": "queued"})
    return handler


def test_api_key_sent_as_bearer(monkeypatch):
    monkeypatch.delenv("MAGIC_API_KEY", raising=False)
    seen = []
    with AttributionClient("http://service.test", retry=FAST, api_key=KEY,
                           transport=httpx.MockTransport(_recording_handler(seen))) as client:
        client.get_job("j1")
    assert seen == [f"Bearer {KEY}"]


def test_api_key_read_from_environment(monkeypatch):
    monkeypatch.setenv("MAGIC_API_KEY", "from-env")
    seen = []
    with AttributionClient("http://service.test", retry=FAST,
                           transport=httpx.MockTransport(_recording_handler(seen))) as client:
        client.get_job("j1")
    with AttributionClient("http://service.test", retry=FAST, api_key="",
                           transport=httpx.MockTransport(_recording_handler(seen))) as client:
        client.get_job("j1")
    assert seen == ["Bearer from-env", None]


def test_no_key_sends_no_header(monkeypatch):
    monkeypatch.delenv("MAGIC_API_KEY", raising=False)
    seen = []
    with AttributionClient("http://service.test", retry=FAST,
                           transport=httpx.MockTransport(_recording_handler(seen))) as client:
        client.get_job("j1")
    assert seen == [None]


@pytest.mark.parametrize("status, error_class", [
    (401, AuthenticationError), (403, PermissionDeniedError), (413, RequestTooLargeError),
])
def test_status_maps_to_error(status, error_class):
    calls = []

    def handler(request):
        calls.append(1)
        return httpx.Response(status, json={"detail": f"refused with {status}"})

    with AttributionClient("http://service.test", retry=FAST, api_key=KEY,
                           transport=httpx.MockTransport(handler)) as client:
        with pytest.raises(error_class, match=f"refused with {status}") as error:
            client.submit_job("r1", [0])
    assert isinstance(error.value, APIError)
    assert error.value.status_code == status
    assert KEY not in str(error.value)
    assert calls == [1]


def test_async_client_sends_key_and_maps_403():
    seen = []

    def handler(request):
        seen.append(request.headers.get("authorization"))
        return httpx.Response(403, json={"detail": "belongs to another API key"})

    async def main():
        async with AsyncAttributionClient("http://service.test", retry=FAST, api_key=KEY,
                                          transport=httpx.MockTransport(handler)) as client:
            with pytest.raises(PermissionDeniedError, match="another API key"):
                await client.get_job("j1")

    asyncio.run(main())
    assert seen == [f"Bearer {KEY}"]
