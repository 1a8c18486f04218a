"""Warm replay workers: kept between jobs on one run, stopped when training needs the CPUs."""

from __future__ import annotations

import pytest

from client import AttributionClient
from service.server import BackgroundServer

from .conftest import TINY
from .test_faults import _app, _settings, redis_process  # noqa: F401 - fixture

pytestmark = pytest.mark.integration


def test_pool_yields_to_training(ray_cluster, redis_process, tmp_path):
    settings = _settings(redis_process, tmp_path, worker_idle_s=600)
    server = BackgroundServer(_app(settings))
    url = server.start()
    pool = server.app.state.backend.pool
    try:
        with AttributionClient(url) as client:
            run_id = client.create_run("digits-mlp", TINY, wait=True, timeout=240)["run_id"]
            client.wait(client.submit_job(run_id, [0, 1, 2, 3]), timeout=240, progress=False)
            first_pids = pool.worker_pids()
            assert len(first_pids) == 2

            client.wait(client.submit_job(run_id, [4, 5, 6, 7]), timeout=240, progress=False)
            assert pool.worker_pids() == first_pids, "the second job started new workers"

            # Training needs a CPU that the idle workers hold: they stop instead of
            # blocking it until the idle timeout.
            other = client.create_run("digits-mlp", {**TINY, "seed": 7}, wait=True, timeout=120)
            assert other["status"] == "ready"
            assert pool.worker_pids() == []
    finally:
        server.stop()
