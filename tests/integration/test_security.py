"""API keys end to end: a real Redis, a local Ray and the client over real HTTP."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

import numpy as np
import pytest
import ray

from client import (AttributionClient, AuthenticationError, PermissionDeniedError,
                    RequestTooLargeError, RetryPolicy)
from service.app import create_app
from service.auth import hash_key
from service.server import BackgroundServer
from service.settings import Settings
from service.store import Store

from .conftest import TINY

pytestmark = pytest.mark.integration

KEY_A = "integration-key-alice-0001"
KEY_B = "integration-key-bob-0002"
RETRY = RetryPolicy(attempts=2, base_delay=0.1)


@pytest.fixture(scope="module")
def secured_url(ray_cluster, redis_base_url, tmp_path_factory):
    """Serve the app with two API keys, on Redis database 2 and the session's Ray.

    Its replay workers stop after each job, so they leave the Ray CPUs free for
    the other integration tests' service.
    """
    settings = Settings(redis_url=f"{redis_base_url}?db=2",
                        storage_dir=tmp_path_factory.mktemp("secured"),
                        api_keys=(hash_key(KEY_A), hash_key(KEY_B)), max_body_bytes=64 * 1024,
                        shard_size=4, replay_batch_size=2, replay_workers=2,
                        shard_timeout_s=120, train_timeout_s=120, ray_call_timeout_s=60,
                        smoothness_probe=False, worker_idle_s=0)
    store = Store.from_url(settings.redis_url)
    store.client.flushdb()
    server = BackgroundServer(create_app(settings))
    url = server.start()
    yield url
    server.stop()
    store.client.flushdb()
    store.close()


def _client(url, key):
    return AttributionClient(url, retry=RETRY, api_key=key)


def test_keys_and_ownership_over_http(secured_url):
    with _client(secured_url, "") as anonymous:
        assert anonymous.health()["status"] == "ok"
        with pytest.raises(AuthenticationError, match="missing API key"):
            anonymous.create_run("digits-mlp", TINY)
    with _client(secured_url, "not-a-configured-key") as stranger:
        with pytest.raises(AuthenticationError, match="invalid API key") as error:
            stranger.get_run("abc")
        assert "not-a-configured-key" not in str(error.value)

    with _client(secured_url, KEY_A) as alice, _client(secured_url, KEY_B) as bob:
        run = alice.create_run("digits-mlp", TINY, wait=True, timeout=120)
        run_id = run["run_id"]
        job_id = alice.submit_job(run_id, [0, 3])
        job = alice.wait(job_id, timeout=120, progress=False)
        assert job["status"] == "succeeded"
        scores = alice.scores(job_id)
        assert scores.shape == (2, 200)
        assert np.isfinite(scores).all()

        with pytest.raises(PermissionDeniedError, match="belongs to another API key"):
            bob.get_run(run_id)
        with pytest.raises(PermissionDeniedError, match=f"training run {run_id}"):
            bob.submit_job(run_id, [1])
        with pytest.raises(PermissionDeniedError):
            bob.get_job(job_id)
        with pytest.raises(PermissionDeniedError):
            bob.scores(job_id)
        with pytest.raises(PermissionDeniedError):
            bob.top_k(job_id, k=2)
        with pytest.raises(PermissionDeniedError):
            bob.cancel(job_id)
        with pytest.raises(PermissionDeniedError):
            bob.predict(run_id, [0], [1, 2])

        # Alice's records are unchanged by Bob's attempts.
        assert alice.get_job(job_id)["status"] == "succeeded"
        np.testing.assert_array_equal(alice.scores(job_id), scores)
        prediction = alice.predict(run_id, [0, 3], [5, 7])
        expected = -scores[:, [5, 7]].sum(axis=1)
        np.testing.assert_allclose(prediction["predicted_change"], expected, rtol=1e-5)


def test_oversized_body_over_http(secured_url):
    with _client(secured_url, KEY_A) as alice:
        with pytest.raises(RequestTooLargeError, match="limit of 65536 bytes"):
            alice.submit_job("any-run", range(20_000))


def test_local_ray_binds_loopback(ray_cluster):
    assert ipaddress.ip_address(ray.util.get_node_ip_address()).is_loopback
    gcs_host = urlsplit("//" + ray.get_runtime_context().gcs_address).hostname
    assert ipaddress.ip_address(gcs_host).is_loopback
