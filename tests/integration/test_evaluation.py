"""Evaluation and prediction jobs end to end: real Redis, local Ray, real HTTP."""

from __future__ import annotations

import time

import httpx
import numpy as np
import pytest

import attribution
from attribution.lds import compare_methods
from service.runs import run_folder

pytestmark = pytest.mark.integration

# Test indices that the other integration tests do not attribute, because an
# evaluation caches MAGIC's scores and those tests count replayed samples.
EVALUATION = {"test_indices": [40, 43, 47], "fractions": [0.05, 0.1], "num_subsets": 4,
              "methods": ["magic", "tracin", "trak"]}


def _wait(http: httpx.Client, evaluation_id: str, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        record = http.get(f"/v1/evaluations/{evaluation_id}").json()
        if record["status"] not in ("queued", "running"):
            return record
        assert time.monotonic() < deadline, f"evaluation still {record['status']}"
        time.sleep(0.2)


def _local_comparison(settings, run_id: str, request: dict) -> dict:
    """Return ``compare_methods`` on the saved run for the fields of an evaluation request."""
    run = attribution.TrainingRun.load(run_folder(settings.runs_dir, run_id))
    return compare_methods(run, request["test_indices"], request["methods"],
                           fractions=request["fractions"],
                           num_subsets=request["num_subsets"]).to_dict()


@pytest.fixture
def http(service_url):
    with httpx.Client(base_url=service_url, timeout=60) as client:
        yield client


def test_run_reports_smoothness(client, tiny_run):
    record = client.get_run(tiny_run["run_id"])
    assert 0 <= record["smoothness"]["score"] <= 1
    assert isinstance(record["warnings"], list)


def test_evaluation_equals_local_comparison(http, tiny_run, settings):
    created = http.post("/v1/evaluations", json={"run_id": tiny_run["run_id"], **EVALUATION})
    assert created.status_code == 202
    evaluation_id = created.json()["evaluation_id"]
    record = _wait(http, evaluation_id)
    assert record["status"] == "succeeded", record["error"]
    assert record["progress"] == {"done": 11, "total": 11}
    result = http.get(f"/v1/evaluations/{evaluation_id}/result").json()

    local = _local_comparison(settings, tiny_run["run_id"], EVALUATION)
    assert result["failed"] == {}
    for method in EVALUATION["methods"]:
        for fraction in ("0.05", "0.1"):
            assert result["lds"][method][fraction] == pytest.approx(
                local["lds"][method][fraction], abs=1e-6)
            np.testing.assert_allclose(result["per_sample"][method][fraction],
                                       local["per_sample"][method][fraction], atol=1e-6)
    changes = result["changes"]["magic"]["0.1"]
    assert np.asarray(changes["predicted"]).shape == (4, 3)
    assert np.asarray(changes["actual"]).shape == (4, 3)


def test_evaluation_reuses_retrained_subsets(client, tiny_run):
    arguments = dict(test_indices=[1, 2], methods=["tracin"], fractions=[0.05], num_subsets=6)
    first = client.wait_evaluation(client.submit_evaluation(tiny_run["run_id"], **arguments),
                                   timeout=180)
    second_id = client.submit_evaluation(tiny_run["run_id"], **arguments)
    second = client.wait_evaluation(second_id, timeout=180)
    record = client.get_evaluation(second_id)
    assert record["reused"] == 6
    assert record["retrained"] == 0
    assert second["lds"] == first["lds"]


def test_evaluation_cancel(http, tiny_run):
    body = {"run_id": tiny_run["run_id"], "test_indices": [4], "fractions": [0.2],
            "num_subsets": 200, "methods": ["tracin"], "seed": 9}
    evaluation_id = http.post("/v1/evaluations", json=body).json()["evaluation_id"]
    cancelled = http.delete(f"/v1/evaluations/{evaluation_id}")
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    time.sleep(1.0)
    record = http.get(f"/v1/evaluations/{evaluation_id}").json()
    assert record["status"] == "cancelled"
    assert record["progress"]["done"] < record["progress"]["total"]
    assert http.get(f"/v1/evaluations/{evaluation_id}/result").status_code == 409


@pytest.mark.parametrize("patch, field", [
    ({"methods": ["influence"]}, "methods"),
    ({"fractions": [1.5]}, "fractions"),
    ({"num_subsets": 2}, "num_subsets"),
    ({"test_indices": [50]}, "test_indices"),
    ({"methods": ["magic", "magic"]}, "methods"),
    ({"fractions": [0.001]}, "fractions"),
])
def test_invalid_evaluations_422(http, tiny_run, patch, field):
    response = http.post("/v1/evaluations",
                         json={"run_id": tiny_run["run_id"], **EVALUATION, **patch})
    assert response.status_code == 422
    assert field in str(response.json()["detail"])


def test_prediction_with_verify(http, client, tiny_run, settings):
    indices = [30, 31]
    removed = list(range(0, 20))
    missing = http.post("/v1/predictions", json={"run_id": tiny_run["run_id"],
                                                 "test_indices": indices, "removed": removed})
    assert missing.status_code == 409
    assert "POST /v1/jobs" in missing.json()["detail"]

    job_id = client.submit_job(tiny_run["run_id"], indices)
    client.wait(job_id, timeout=120, progress=False)
    body = client.predict(tiny_run["run_id"], indices, removed, verify=True)
    scores = client.scores(job_id)
    np.testing.assert_allclose(body["predicted_change"], -scores[:, removed].sum(axis=1),
                               rtol=1e-6)
    assert len(body["actual_change"]) == 2
    # A smooth tiny run: predicted and true changes agree in sign.
    assert np.all(np.sign(body["predicted_change"]) == np.sign(body["actual_change"]))


def test_language_model_evaluation_matches_local(http, client, settings):
    overrides = dict(n_train=30, n_test=4, sequence_length=8, hidden=[16], n_heads=2,
                     batch_size=10, epochs=1)
    run = client.create_run("shakespeare-gpt", overrides, wait=True, timeout=300)
    body = {"run_id": run["run_id"], "test_indices": [1, 3], "fractions": [0.1],
            "num_subsets": 4, "methods": ["magic", "tracin"]}
    created = http.post("/v1/evaluations", json=body)
    assert created.status_code == 202
    record = _wait(http, created.json()["evaluation_id"], timeout=300)
    assert record["status"] == "succeeded", record["error"]
    result = http.get(f"/v1/evaluations/{record['evaluation_id']}/result").json()

    local = _local_comparison(settings, run["run_id"], body)
    assert result["failed"] == {}
    for method in body["methods"]:
        assert result["lds"][method]["0.1"] == pytest.approx(local["lds"][method]["0.1"],
                                                             abs=1e-6)
