"""Fuzz the REST API from its own OpenAPI schema with schemathesis.

The service runs over real HTTP on a loopback port, with a real Redis, API keys
on and a fake compute backend. Hypothesis draws valid and invalid requests for
every operation. The second test gives every request that names a run, job or
evaluation the id of a stored record instead of a random one, so it reaches
past the 404. Every response must be a 2xx or 4xx that matches the schema.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx
import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (content_type_conformance,
                                               negative_data_rejection,
                                               response_headers_conformance,
                                               response_schema_conformance)

from service.app import create_app
from service.auth import hash_key
from service.server import BackgroundServer
from service.settings import Settings
from service.store import Store

from .fakes import TINY, FakeBackend, finish_job, mark_ready

pytestmark = pytest.mark.timeout(180)

KEY = "fuzz-test-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance,
          response_headers_conformance, negative_data_rejection]


def _settings(**fields) -> Settings:
    # A high job limit: the fuzzer submits many jobs, and the 503 past the limit is a 5xx.
    return Settings(api_keys=(hash_key(KEY),), max_active_jobs=10**6, max_test_samples=64,
                    max_body_bytes=64 * 1024, **fields)


# The schema is read from an application built like the one under test; building
# it starts nothing (Redis and the backend start in the lifespan).
schema = schemathesis.openapi.from_dict(
    create_app(_settings(), backend_factory=lambda *_: FakeBackend()).openapi())


@dataclass(frozen=True)
class Service:
    url: str
    run_id: str
    job_id: str
    evaluation_id: str


@pytest.fixture(scope="module")
def service(redis_base_url, tmp_path_factory):
    """Serve the app over HTTP on Redis database 3, with a ready run, a job and an evaluation."""
    settings = _settings(redis_url=f"{redis_base_url}?db=3",
                         storage_dir=tmp_path_factory.mktemp("fuzz"))
    store = Store.from_url(settings.redis_url)
    store.client.flushdb()
    backend = FakeBackend()
    server = BackgroundServer(create_app(settings, backend_factory=lambda *_: backend))
    url = server.start()
    try:
        # The first run imports torch and loads the data set, which can take seconds.
        with httpx.Client(base_url=url, headers=AUTH, timeout=120) as http:
            body = {"recipe": "digits-mlp", "overrides": TINY}
            run_id = http.post("/v1/runs", json=body).json()["run_id"]
            mark_ready(store, settings.runs_dir, run_id, backend.trainings[-1][1])
            job_id = http.post("/v1/jobs", json={"run_id": run_id,
                                                 "test_indices": [0, 1, 2]}).json()["job_id"]
            finish_job(store, job_id, np.random.default_rng(0).normal(size=(3, 200)))
            evaluation_id = http.post("/v1/evaluations", json={
                "run_id": run_id, "test_indices": [0], "fractions": [0.1], "num_subsets": 3,
            }).json()["evaluation_id"]
        yield Service(url, run_id, job_id, evaluation_id)
    finally:
        server.stop()
        store.client.flushdb()
        store.close()


def _aim_at_records(case, service: Service) -> None:
    """Replace the ids in a schema-valid ``case`` with those of the stored records.

    Invalid cases stay as drawn: a valid id in place of an invalid one would make
    the request valid while schemathesis still expects a 4xx.
    """
    if case.meta is not None and not case.meta.generation.mode.is_positive:
        return
    known = {"run_id": service.run_id, "job_id": service.job_id,
             "evaluation_id": service.evaluation_id}
    for name in list(case.path_parameters or {}):
        if name in known:
            case.path_parameters[name] = known[name]
    if isinstance(case.body, dict) and isinstance(case.body.get("run_id"), str):
        case.body["run_id"] = service.run_id
        # The fake backend cannot retrain, so a verified prediction would fail in it.
        if case.body.get("verify") is True:
            case.body["verify"] = False


FUZZ_SETTINGS = settings(max_examples=15, deadline=2000, derandomize=True, database=None,
                         suppress_health_check=list(HealthCheck))


@schema.parametrize()
@FUZZ_SETTINGS
def test_api_from_schema(case, service):
    case.call_and_validate(base_url=service.url, headers=AUTH, checks=CHECKS, timeout=10)


@schema.parametrize()
@FUZZ_SETTINGS
def test_api_on_stored_records(case, service):
    _aim_at_records(case, service)
    case.call_and_validate(base_url=service.url, headers=AUTH, checks=CHECKS, timeout=10)
