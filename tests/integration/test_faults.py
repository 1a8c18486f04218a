"""Faults injected into real processes: replay workers, Redis and the API process.

Each test runs a job on a service with its own redis-server, which keeps an
append-only file on disk and listens on a fixed unix socket so that it can be
restarted in place. The test kills or restarts one component in the middle of
the job. The job must end succeeded with every score vector equal to the
engine's scores on the same run.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import ray
import redis

import attribution
from client import AttributionClient
from service.embedded import redis_server_binary
from service.keys import SCORES_PREFIX, score_arguments
from service.runs import run_folder
from service.server import BackgroundServer
from service.settings import Settings
from service.store import Store

from .conftest import TINY

pytestmark = pytest.mark.integration

# 200 examples, 60 epochs of batch 100: 120 steps, so a batch of two adjoints
# takes long enough on this CPU for a fault to land in the middle of a job.
LONG = {**TINY, "epochs": 60}
INDICES = list(range(16))
# benchmarks/fault_report.py sets this to inject every fault several times.
REPEATS = int(os.environ.get("MAGIC_FAULT_REPEATS", "1"))
repeat = pytest.mark.parametrize("attempt", range(REPEATS))


class RedisProcess:
    """A redis-server on a fixed unix socket whose data survives a restart."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.socket = folder / "redis.sock"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [str(redis_server_binary()), "--port", "0", "--unixsocket", str(self.socket),
             "--unixsocketperm", "700", "--dir", str(self.folder), "--appendonly", "yes",
             "--appendfsync", "everysec", "--save", "", "--logfile",
             str(self.folder / "redis.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(unix_socket_path=str(self.socket), socket_connect_timeout=1)
        deadline = time.monotonic() + 15
        while True:
            try:
                if client.ping():
                    break
            except (redis.ConnectionError, redis.BusyLoadingError):
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)
        client.close()

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=15)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=15)


@pytest.fixture
def redis_process(tmp_path):
    server = RedisProcess(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


def _settings(redis_process, tmp_path, **overrides) -> Settings:
    values = dict(redis_url=redis_process.url, storage_dir=tmp_path / "storage",
                  shard_size=4, replay_batch_size=2, replay_workers=2, shard_timeout_s=240,
                  train_timeout_s=240, smoothness_probe=False, job_lease_s=2,
                  worker_idle_s=0)
    return Settings(**{**values, **overrides})


def _wait_for_progress(client, job_id, at_least: int) -> dict:
    deadline = time.monotonic() + 240
    while True:
        job = client.get_job(job_id)
        assert job["status"] in ("queued", "running"), job
        if job["progress"]["done"] >= at_least:
            return job
        assert time.monotonic() < deadline, f"no progress within 240 s: {job}"
        time.sleep(0.05)


def _check_complete(client, store, settings, run_id, job_id) -> None:
    """The job succeeded and its scores equal the engine's; one cache entry per sample."""
    job = client.wait(job_id, timeout=300, progress=False)
    assert job["status"] == "succeeded"
    assert not job["error"], "a resumed job kept the message of its interruption"
    assert job["cached"] == 0, "samples this job computed counted as cache hits"
    scores = client.scores(job_id)
    run = attribution.TrainingRun.load(run_folder(settings.runs_dir, run_id))
    expected = attribution.attribute(run, INDICES).numpy()
    np.testing.assert_allclose(scores, expected, rtol=1e-4,
                               atol=1e-5 * np.abs(expected).max())
    for index in INDICES:  # raises CacheMismatchError on a partial or foreign vector
        assert store.get_scores(score_arguments(run.fingerprint, index, "loss",
                                                attribution.__version__)) is not None
    assert len(list(store.client.scan_iter(match=SCORES_PREFIX + "*"))) == len(INDICES)


@contextlib.contextmanager
def _running_job(settings: Settings, redis_process: RedisProcess):
    """Serve ``settings`` in this process and yield a job that has made progress.

    Yields the server, a client, a Store on the test's Redis, the run id and
    the job id, once at least 2 of the job's samples are done.
    """
    app_server = BackgroundServer(_app(settings))
    url = app_server.start()
    store = Store.from_url(redis_process.url)
    try:
        with AttributionClient(url) as client:
            run_id = client.create_run("digits-mlp", LONG, wait=True, timeout=240)["run_id"]
            job_id = client.submit_job(run_id, INDICES)
            _wait_for_progress(client, job_id, at_least=2)
            yield app_server, client, store, run_id, job_id
    finally:
        store.close()
        app_server.stop()


@repeat
def test_replay_worker_killed_mid_shard(ray_cluster, redis_process, tmp_path, attempt):
    settings = _settings(redis_process, tmp_path)
    with _running_job(settings, redis_process) as (app_server, client, store, run_id, job_id):
        pool = app_server.app.state.backend.pool
        victim = pool.worker_pids()[0]
        os.kill(victim, signal.SIGKILL)
        _check_complete(client, store, settings, run_id, job_id)
        assert victim not in pool.worker_pids()


@repeat
def test_redis_killed_and_restarted_mid_job(ray_cluster, redis_process, tmp_path, attempt):
    settings = _settings(redis_process, tmp_path)
    with _running_job(settings, redis_process) as (_, client, store, run_id, job_id):
        redis_process.kill()
        time.sleep(1.5)
        redis_process.start()
        _check_complete(client, store, settings, run_id, job_id)


def _app(settings):
    from service.app import create_app

    return create_app(settings)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _serve(settings: Settings, port: int, log: Path) -> subprocess.Popen:
    """Start ``magic-attr serve`` as its own process on the session's Ray."""
    env = {**os.environ, "REDIS_URL": settings.redis_url,
           "RAY_ADDRESS": ray.get_runtime_context().gcs_address,
           "RAY_AUTH_MODE": "disabled", "MAGIC_STORAGE_DIR": str(settings.storage_dir),
           "MAGIC_SHARD_SIZE": "4", "MAGIC_REPLAY_BATCH_SIZE": "2",
           "MAGIC_JOB_LEASE_S": "2", "MAGIC_SMOOTHNESS_PROBE": "false",
           "MAGIC_WORKER_IDLE_S": "0"}
    command = [sys.executable, "-m", "service.cli", "serve", "--port", str(port)]
    return subprocess.Popen(command, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)


def _wait_healthy(url: str, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"the service at {url} did not become healthy"
        time.sleep(0.2)


@repeat
def test_api_process_killed_mid_job(ray_cluster, redis_process, tmp_path, attempt):
    settings = _settings(redis_process, tmp_path)
    settings.storage_dir.mkdir(parents=True)
    store = Store.from_url(redis_process.url)
    log = tmp_path / "serve.log"
    port = _free_port()
    first = _serve(settings, port, log)
    second = None
    try:
        url = f"http://127.0.0.1:{port}"
        with AttributionClient(url) as client:
            _wait_healthy(url)
            run_id = client.create_run("digits-mlp", LONG, wait=True, timeout=240)["run_id"]
            job_id = client.submit_job(run_id, INDICES)
            _wait_for_progress(client, job_id, at_least=2)
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=30)
            # A new process on the same port; it resumes the job once the lease lapses.
            second = _serve(settings, port, log)
            _wait_healthy(url)
            _check_complete(client, store, settings, run_id, job_id)
    except BaseException:
        print(log.read_text()[-5000:])
        raise
    finally:
        store.close()
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(timeout=60)
