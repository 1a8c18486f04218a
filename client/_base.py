"""Request building, response parsing and the retry policy shared by both clients."""

from __future__ import annotations

import io
import os
import random
import time
from dataclasses import dataclass
from typing import Any, Optional

import httpx
import numpy as np

from ._errors import STATUS_ERRORS, APIError, JobFailedError, RunFailedError, WaitTimeoutError

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
API_KEY_ENV = "MAGIC_API_KEY"
FINISHED_JOB_STATUSES = ("succeeded", "failed", "cancelled")


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of one request on connection errors and HTTP 503.

    The delay before retry n (from 0) is ``min(max_delay, base_delay * 2**n)``
    with up to 10% jitter, or the server's ``Retry-After`` when it sends one.
    POST requests are retried only when the connection failed before anything
    was sent, so a job is never submitted twice.
    """

    attempts: int = 5
    base_delay: float = 0.25
    max_delay: float = 8.0

    def delay(self, attempt: int, retry_after: Optional[float] = None) -> float:
        if retry_after is not None:
            return min(self.max_delay, retry_after)
        backoff = min(self.max_delay, self.base_delay * 2 ** attempt)
        return backoff * (1 + 0.1 * random.random())


def should_retry(method: str, error: Optional[Exception], response: Optional[httpx.Response]
                 ) -> bool:
    """Return True if a request that raised ``error`` or got ``response`` may be repeated."""
    if response is not None:
        return response.status_code == 503
    if isinstance(error, httpx.ConnectError):
        return True
    return method != "POST" and isinstance(error, httpx.TransportError)


def auth_headers(api_key: Optional[str]) -> dict[str, str]:
    """Return the headers that carry ``api_key``, or MAGIC_API_KEY's key when it is None.

    An empty key sends no header, for a service without authentication.
    """
    key = os.environ.get(API_KEY_ENV) if api_key is None else api_key
    return {"Authorization": f"Bearer {key}"} if key else {}


def retry_after_seconds(response: httpx.Response) -> Optional[float]:
    value = response.headers.get("Retry-After")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def raise_for_status(response: httpx.Response) -> None:
    """Raise the APIError subclass matching an HTTP error response."""
    if response.status_code < 400:
        return
    try:
        detail = response.json().get("detail", response.text)
    except ValueError:
        detail = response.text
    error_class = STATUS_ERRORS.get(response.status_code, APIError)
    raise error_class(response.status_code, detail, retry_after=retry_after_seconds(response),
                      method=response.request.method, url=str(response.request.url))


def run_is_ready(run: dict, deadline: Optional[float], timeout: Optional[float]) -> bool:
    """Return True once ``run`` is ready, False while it trains.

    Raises RunFailedError for a failed run and WaitTimeoutError past ``deadline``
    (a ``time.monotonic()`` value, or None for no limit).
    """
    if run["status"] == "ready":
        return True
    if run["status"] == "failed":
        raise RunFailedError(run)
    if deadline is not None and time.monotonic() > deadline:
        raise WaitTimeoutError(f"training run {run['run_id']} still training after {timeout} s")
    return False


def job_body(run_id: str, test_indices, measurement: str) -> dict[str, Any]:
    return {"run_id": run_id, "test_indices": [int(i) for i in test_indices],
            "measurement": measurement}


def evaluation_body(run_id: str, test_indices, methods, fractions, num_subsets: int,
                    options: dict[str, Any]) -> dict[str, Any]:
    """Return the body of POST /v1/evaluations; ``options``: measurement, seed, trak_proj_dim."""
    return {"run_id": run_id, "test_indices": [int(i) for i in test_indices],
            "methods": list(methods), "fractions": [float(p) for p in fractions],
            "num_subsets": num_subsets, **options}


def prediction_body(run_id: str, test_indices, removed, measurement: str,
                    verify: bool) -> dict[str, Any]:
    return {"run_id": run_id, "test_indices": [int(i) for i in test_indices],
            "removed": [int(i) for i in removed], "measurement": measurement,
            "verify": verify}


def evaluation_finished(record: dict, evaluation_id: str, deadline: Optional[float],
                        timeout: Optional[float]) -> bool:
    """Return True once the evaluation succeeded, False while it runs.

    Raises JobFailedError if it failed or was cancelled and WaitTimeoutError past
    ``deadline`` (a ``time.monotonic()`` value, or None for no limit).
    """
    if record["status"] == "succeeded":
        return True
    if record["status"] in FINISHED_JOB_STATUSES:
        raise JobFailedError({**record, "job_id": evaluation_id})
    if deadline is not None and time.monotonic() > deadline:
        raise WaitTimeoutError(f"evaluation {evaluation_id} not finished after {timeout} s "
                               f"({record['progress']['done']}/{record['progress']['total']} "
                               "done)")
    return False


def load_npy(content: bytes) -> np.ndarray:
    """Parse a .npy response body; object arrays are rejected (no pickle)."""
    return np.load(io.BytesIO(content), allow_pickle=False)
