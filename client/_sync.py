"""The synchronous client."""

from __future__ import annotations

import time
from typing import Any, Iterable, Optional

import httpx
import numpy as np

from ._base import (DEFAULT_BASE_URL, FINISHED_JOB_STATUSES, RetryPolicy, auth_headers,
                    evaluation_body, evaluation_finished, job_body, load_npy,
                    prediction_body, raise_for_status, retry_after_seconds, run_is_ready,
                    should_retry)
from ._errors import (JobFailedError, ServiceConnectionError,
                      WaitTimeoutError)
from ._progress import JobProgress


class AttributionClient:
    """Client of the attribution service's REST API.

    Example::

        with AttributionClient("http://127.0.0.1:8000") as client:
            run = client.create_run("mnist-mlp", wait=True)
            job_id = client.submit_job(run["run_id"], range(16))
            client.wait(job_id)
            scores = client.scores(job_id)   # numpy array (16, n_train)

    Args:
        base_url: the service's address.
        timeout: seconds per HTTP request.
        retry: retry policy for connection errors and HTTP 503.
        transport: an httpx transport, for tests (``httpx.MockTransport``).
        api_key: the API key, sent as ``Authorization: Bearer <key>``; None reads
            the MAGIC_API_KEY environment variable, and an empty key sends none.
    """

    def __init__(self, base_url: str = DEFAULT_BASE_URL, timeout: float = 30.0,
                 retry: RetryPolicy = RetryPolicy(),
                 transport: Optional[httpx.BaseTransport] = None,
                 api_key: Optional[str] = None) -> None:
        self.retry = retry
        self._http = httpx.Client(base_url=base_url, timeout=timeout, transport=transport,
                                  headers=auth_headers(api_key))

    def __enter__(self) -> "AttributionClient":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # ---------------------------------------------------------------- runs
    def health(self) -> dict:
        """Return the service's health report (raises ServiceUnavailableError if degraded)."""
        return self._request("GET", "/healthz").json()

    def create_run(self, recipe: str, overrides: Optional[dict] = None, wait: bool = False,
                   timeout: Optional[float] = None) -> dict:
        """Create (or find) the training run of ``recipe`` with ``overrides``.

        Returns ``{"run_id", "status"}``, or with ``wait=True`` the full run
        record once training finished. Raises RunFailedError if training failed.
        """
        created = self._request("POST", "/v1/runs",
                                json={"recipe": recipe, "overrides": overrides or {}}).json()
        return self.wait_for_run(created["run_id"], timeout=timeout) if wait else created

    def get_run(self, run_id: str) -> dict:
        return self._request("GET", f"/v1/runs/{run_id}").json()

    def wait_for_run(self, run_id: str, timeout: Optional[float] = None,
                     poll_interval: float = 0.5) -> dict:
        """Poll until the run is ready and return its record; raise RunFailedError if failed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            run = self.get_run(run_id)
            if run_is_ready(run, deadline, timeout):
                return run
            time.sleep(poll_interval)

    # ---------------------------------------------------------------- jobs
    def submit_job(self, run_id: str, test_indices: Iterable[int],
                   measurement: str = "loss") -> str:
        """Submit an attribution job and return its job id."""
        body = job_body(run_id, test_indices, measurement)
        return self._request("POST", "/v1/jobs", json=body).json()["job_id"]

    def get_job(self, job_id: str) -> dict:
        return self._request("GET", f"/v1/jobs/{job_id}").json()

    def wait(self, job_id: str, timeout: Optional[float] = None, poll_interval: float = 0.25,
             progress: bool = True) -> dict:
        """Poll until the job finishes and return its record, showing a progress bar.

        Raises JobFailedError if the job failed or was cancelled, and
        WaitTimeoutError after ``timeout`` seconds (the job keeps running).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with JobProgress(job_id, enabled=progress) as bar:
            while True:
                job = self.get_job(job_id)
                bar.update(job)
                if job["status"] in FINISHED_JOB_STATUSES:
                    break
                if deadline is not None and time.monotonic() > deadline:
                    raise WaitTimeoutError(f"job {job_id} not finished after {timeout} s "
                                           f"({job['progress']['done']}/"
                                           f"{job['progress']['total']} done)")
                time.sleep(poll_interval)
        if job["status"] != "succeeded":
            raise JobFailedError(job)
        return job

    def scores(self, job_id: str) -> np.ndarray:
        """Return the job's influence scores, shape (len(test_indices), n_train).

        ``scores[q, i]`` is d measurement_q / d weight_i; removing training example
        i changes the measurement by about ``-scores[q, i]``.
        """
        response = self._request("GET", f"/v1/jobs/{job_id}/scores", params={"format": "npy"})
        return load_npy(response.content)

    def top_k(self, job_id: str, k: int = 3) -> list[dict]:
        """Return, per test sample, its ``k`` strongest proponents and opponents with labels."""
        response = self._request("GET", f"/v1/jobs/{job_id}/scores", params={"top_k": k})
        return response.json()["top"]

    def cancel(self, job_id: str) -> dict:
        """Cancel a queued or running job and return its record."""
        return self._request("DELETE", f"/v1/jobs/{job_id}").json()

    # --------------------------------------------------------- evaluations
    def submit_evaluation(self, run_id: str, test_indices: Iterable[int],
                          methods: Iterable[str] = ("magic",),
                          fractions: Iterable[float] = (0.01, 0.05, 0.1), num_subsets: int = 50,
                          **options: Any) -> str:
        """Submit an evaluation job (LDS of ``methods``) and return its evaluation id.

        ``options`` are further request fields: measurement, seed, trak_proj_dim.
        """
        body = evaluation_body(run_id, test_indices, methods, fractions, num_subsets, options)
        return self._request("POST", "/v1/evaluations", json=body).json()["evaluation_id"]

    def get_evaluation(self, evaluation_id: str) -> dict:
        return self._request("GET", f"/v1/evaluations/{evaluation_id}").json()

    def wait_evaluation(self, evaluation_id: str, timeout: Optional[float] = None,
                        poll_interval: float = 0.5) -> dict:
        """Poll until the evaluation finishes and return its result.

        Raises JobFailedError if it failed or was cancelled, and WaitTimeoutError
        after ``timeout`` seconds (the evaluation keeps running).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while not evaluation_finished(self.get_evaluation(evaluation_id), evaluation_id,
                                      deadline, timeout):
            time.sleep(poll_interval)
        return self._request("GET", f"/v1/evaluations/{evaluation_id}/result").json()

    def cancel_evaluation(self, evaluation_id: str) -> dict:
        return self._request("DELETE", f"/v1/evaluations/{evaluation_id}").json()

    def predict(self, run_id: str, test_indices: Iterable[int], removed: Iterable[int],
                measurement: str = "loss", verify: bool = False) -> dict:
        """Return the predicted (and with ``verify`` the retrained) change of each measurement."""
        body = prediction_body(run_id, test_indices, removed, measurement, verify)
        return self._request("POST", "/v1/predictions", json=body).json()

    # ------------------------------------------------------------- transport
    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        for attempt in range(self.retry.attempts):
            last = attempt == self.retry.attempts - 1
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TransportError as error:
                if last or not should_retry(method, error, None):
                    raise ServiceConnectionError(
                        f"{method} {self._http.base_url}{path} failed: {error!r}; is the "
                        "service running at that address?") from error
                time.sleep(self.retry.delay(attempt))
                continue
            if last or not should_retry(method, None, response):
                raise_for_status(response)
                return response
            time.sleep(self.retry.delay(attempt, retry_after_seconds(response)))
        raise AssertionError("unreachable: the last attempt returns or raises")
