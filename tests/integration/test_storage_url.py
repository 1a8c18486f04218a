"""A service whose runs live at a file:// URL: training uploads, Ray workers copy and load."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

import attribution
from client import AttributionClient
from service import storage
from service.app import create_app
from service.server import BackgroundServer
from service.settings import Settings

from .conftest import TINY

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def url_settings(redis_base_url, tmp_path_factory) -> Settings:
    root = tmp_path_factory.mktemp("url-storage")
    return Settings(redis_url=f"{redis_base_url}?db=2", storage_dir=root / "local",
                    runs_url=f"file://{root}/remote/runs", shard_size=4, replay_batch_size=2,
                    replay_workers=2, shard_timeout_s=300, train_timeout_s=300,
                    ray_call_timeout_s=120, smoothness_probe=False, worker_idle_s=0)


@pytest.fixture(scope="module")
def url_client(ray_cluster, url_settings):
    import redis

    redis.Redis.from_url(url_settings.redis_url).flushdb()
    server = BackgroundServer(create_app(url_settings))
    url = server.start()
    with AttributionClient(url) as client:
        yield client
    server.stop()


def test_job_on_run_stored_at_file_url(url_client, url_settings):
    run = url_client.create_run("digits-mlp", {**TINY, "seed": 7}, wait=True, timeout=120)
    assert run["status"] == "ready"
    location = storage.run_location(url_settings, run["run_id"])
    remote = location.removeprefix("file://")
    with open(f"{remote}/{storage.COMPLETE_MARKER}") as handle:
        assert handle.read() == run["fingerprint"]
    assert not url_settings.runs_dir.exists()

    # Drop any copy left by an earlier session, so the replay workers must download it.
    cache = storage.default_cache_dir() / run["fingerprint"]
    shutil.rmtree(cache, ignore_errors=True)

    indices = [0, 3, 7]
    job_id = url_client.submit_job(run["run_id"], indices)
    job = url_client.wait(job_id, timeout=120, progress=False)
    assert job["status"] == "succeeded"
    assert (cache / storage.COMPLETE_MARKER).is_file()

    expected = attribution.attribute(attribution.TrainingRun.load(cache), indices).numpy()
    scores = url_client.scores(job_id)
    scale = np.abs(expected).max()
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-5 * scale)
    top = url_client.top_k(job_id, k=2)
    assert [entry["test_index"] for entry in top] == indices
    assert all("label" in entry["proponents"][0] for entry in top)
    shutil.rmtree(cache, ignore_errors=True)
