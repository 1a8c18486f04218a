"""The asynchronous client; same methods as ``AttributionClient``, awaitable."""

from __future__ import annotations

import asyncio
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


class AsyncAttributionClient:
    """Asynchronous client of the attribution service's REST API.

    Example::

        async with AsyncAttributionClient("http://127.0.0.1:8000") as client:
            job_id = await client.submit_job(run_id, [0, 1, 2])
            await client.wait(job_id)
            scores = await client.scores(job_id)   # numpy array (3, n_train)
    """

    def __init__(self, base_url: str = DEFAULT_BASE_URL, timeout: float = 30.0,
                 retry: RetryPolicy = RetryPolicy(),
                 transport: Optional[httpx.AsyncBaseTransport] = None,
                 api_key: Optional[str] = None) -> None:
        self.retry = retry
        self._http = httpx.AsyncClient(base_url=base_url, timeout=timeout, transport=transport,
                                       headers=auth_headers(api_key))

    async def __aenter__(self) -> "AsyncAttributionClient":
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # ---------------------------------------------------------------- runs
    async def health(self) -> dict:
        return (await self._request("GET", "/healthz")).json()

    async def create_run(self, recipe: str, overrides: Optional[dict] = None,
                         wait: bool = False, timeout: Optional[float] = None) -> dict:
        """Create (or find) a training run; see ``AttributionClient.create_run``."""
        response = await self._request("POST", "/v1/runs",
                                       json={"recipe": recipe, "overrides": overrides or {}})
        created = response.json()
        if wait:
            return await self.wait_for_run(created["run_id"], timeout=timeout)
        return created

    async def get_run(self, run_id: str) -> dict:
        return (await self._request("GET", f"/v1/runs/{run_id}")).json()

    async def wait_for_run(self, run_id: str, timeout: Optional[float] = None,
                           poll_interval: float = 0.5) -> dict:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            run = await self.get_run(run_id)
            if run_is_ready(run, deadline, timeout):
                return run
            await asyncio.sleep(poll_interval)

    # ---------------------------------------------------------------- jobs
    async def submit_job(self, run_id: str, test_indices: Iterable[int],
                         measurement: str = "loss") -> str:
        body = job_body(run_id, test_indices, measurement)
        return (await self._request("POST", "/v1/jobs", json=body)).json()["job_id"]

    async def get_job(self, job_id: str) -> dict:
        return (await self._request("GET", f"/v1/jobs/{job_id}")).json()

    async def wait(self, job_id: str, timeout: Optional[float] = None,
                   poll_interval: float = 0.25, progress: bool = True) -> dict:
        """Poll until the job finishes; see ``AttributionClient.wait``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with JobProgress(job_id, enabled=progress) as bar:
            while True:
                job = await self.get_job(job_id)
                bar.update(job)
                if job["status"] in FINISHED_JOB_STATUSES:
                    break
                if deadline is not None and time.monotonic() > deadline:
                    raise WaitTimeoutError(f"job {job_id} not finished after {timeout} s")
                await asyncio.sleep(poll_interval)
        if job["status"] != "succeeded":
            raise JobFailedError(job)
        return job

    async def scores(self, job_id: str) -> np.ndarray:
        """Return the job's influence scores, shape (len(test_indices), n_train)."""
        response = await self._request("GET", f"/v1/jobs/{job_id}/scores",
                                       params={"format": "npy"})
        return load_npy(response.content)

    async def top_k(self, job_id: str, k: int = 3) -> list[dict]:
        response = await self._request("GET", f"/v1/jobs/{job_id}/scores", params={"top_k": k})
        return response.json()["top"]

    async def cancel(self, job_id: str) -> dict:
        return (await self._request("DELETE", f"/v1/jobs/{job_id}")).json()

    # --------------------------------------------------------- evaluations
    async def submit_evaluation(self, run_id: str, test_indices: Iterable[int],
                                methods: Iterable[str] = ("magic",),
                                fractions: Iterable[float] = (0.01, 0.05, 0.1),
                                num_subsets: int = 50, **options: Any) -> str:
        """Submit an evaluation job; see ``AttributionClient.submit_evaluation``."""
        body = evaluation_body(run_id, test_indices, methods, fractions, num_subsets, options)
        response = await self._request("POST", "/v1/evaluations", json=body)
        return response.json()["evaluation_id"]

    async def get_evaluation(self, evaluation_id: str) -> dict:
        return (await self._request("GET", f"/v1/evaluations/{evaluation_id}")).json()

    async def wait_evaluation(self, evaluation_id: str, timeout: Optional[float] = None,
                              poll_interval: float = 0.5) -> dict:
        """Poll until the evaluation finishes and return its result; see the sync client."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not evaluation_finished(await self.get_evaluation(evaluation_id), evaluation_id,
                                      deadline, timeout):
            await asyncio.sleep(poll_interval)
        return (await self._request("GET", f"/v1/evaluations/{evaluation_id}/result")).json()

    async def cancel_evaluation(self, evaluation_id: str) -> dict:
        return (await self._request("DELETE", f"/v1/evaluations/{evaluation_id}")).json()

    async def predict(self, run_id: str, test_indices: Iterable[int], removed: Iterable[int],
                      measurement: str = "loss", verify: bool = False) -> dict:
        """Return the predicted (and with ``verify`` the retrained) change of each measurement."""
        body = prediction_body(run_id, test_indices, removed, measurement, verify)
        return (await self._request("POST", "/v1/predictions", json=body)).json()

    # ------------------------------------------------------------- transport
    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        for attempt in range(self.retry.attempts):
            last = attempt == self.retry.attempts - 1
            try:
                response = await self._http.request(method, path, **kwargs)
            except httpx.TransportError as error:
                if last or not should_retry(method, error, None):
                    raise ServiceConnectionError(
                        f"{method} {self._http.base_url}{path} failed: {error!r}; is the "
                        "service running at that address?") from error
                await asyncio.sleep(self.retry.delay(attempt))
                continue
            if last or not should_retry(method, None, response):
                raise_for_status(response)
                return response
            await asyncio.sleep(self.retry.delay(attempt, retry_after_seconds(response)))
        raise AssertionError("unreachable: the last attempt returns or raises")
