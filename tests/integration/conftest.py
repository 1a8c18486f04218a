"""One real Redis, one local Ray and one service over real HTTP for all integration tests."""

from __future__ import annotations

import pytest

from client import AttributionClient, RetryPolicy
from service.app import create_app
from service.server import BackgroundServer
from service.settings import Settings

TINY = {"n_train": 200, "n_test": 50, "epochs": 2, "hidden": [16]}


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray for the session; shut down with ray.shutdown, never `ray stop`."""
    import ray

    from workers.cluster import start_ray

    start_ray(Settings(ray_num_cpus=2, ray_object_store_mb=200))
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def settings(redis_base_url, tmp_path_factory) -> Settings:
    return Settings(redis_url=f"{redis_base_url}?db=0", storage_dir=tmp_path_factory.mktemp("storage"),
                    shard_size=4, replay_batch_size=2, replay_workers=2, shard_timeout_s=120,
                    train_timeout_s=120, ray_call_timeout_s=60,
                    # Other services in the session share this Ray's 2 CPUs, so idle
                    # replay workers stop after about a second (checked every second).
                    worker_idle_s=1, job_lease_s=3)


@pytest.fixture(scope="session")
def service_url(ray_cluster, settings):
    server = BackgroundServer(create_app(settings))
    url = server.start()
    yield url
    server.stop()


@pytest.fixture
def client(service_url):
    with AttributionClient(service_url, retry=RetryPolicy(attempts=3, base_delay=0.1)) as client:
        yield client


@pytest.fixture(scope="session")
def tiny_run(service_url) -> dict:
    """The record of a trained tiny digits run (200 training examples, 4 steps)."""
    with AttributionClient(service_url) as client:
        return client.create_run("digits-mlp", TINY, wait=True, timeout=120)
