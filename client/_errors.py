"""Exceptions of the client SDK.

::

    AttributionClientError
    ├── ServiceConnectionError   the service could not be reached, retries exhausted
    ├── APIError                 the service returned an HTTP error
    │   ├── AuthenticationError  401: API key missing or not accepted
    │   ├── PermissionDeniedError   403: the run or job belongs to another API key
    │   ├── NotFoundError        404: unknown run or job id
    │   ├── ConflictError        409: run still training or failed, job not finished
    │   ├── RequestTooLargeError 413: request body over the service's limit
    │   ├── RequestValidationError  422: invalid request, ``errors`` names the fields
    │   └── ServiceUnavailableError 503: too many jobs or a component is down
    ├── RunFailedError           a training run ended in status 'failed'
    ├── JobFailedError           a job ended in status 'failed' or 'cancelled'
    └── WaitTimeoutError         ``wait`` gave up before the job or run finished
"""

from __future__ import annotations

from typing import Any, Optional


class AttributionClientError(Exception):
    """Base class of every error raised by the client."""


class ServiceConnectionError(AttributionClientError):
    """The service could not be reached after all retries."""


class APIError(AttributionClientError):
    """The service returned an HTTP error status.

    Attributes:
        status_code: the HTTP status.
        detail: the ``detail`` of the response body, a string or a list of field errors.
        retry_after: seconds from the ``Retry-After`` header, or None.
    """

    def __init__(self, status_code: int, detail: Any, retry_after: Optional[float] = None,
                 method: str = "", url: str = "") -> None:
        self.status_code = status_code
        self.detail = detail
        self.retry_after = retry_after
        where = f"{method} {url}: " if method else ""
        super().__init__(f"{where}HTTP {status_code}: {format_detail(detail)}")


class AuthenticationError(APIError):
    """401: the request carried no API key, or the service does not accept the key.

    Pass ``api_key=`` to the client or set MAGIC_API_KEY.
    """


class PermissionDeniedError(APIError):
    """403: the run, job or evaluation was created with another API key."""


class RequestTooLargeError(APIError):
    """413: the request body exceeds the service's limit (MAGIC_MAX_BODY_BYTES)."""


class NotFoundError(APIError):
    """404: the run or job id is unknown (or its record expired)."""


class ConflictError(APIError):
    """409: the run is still training or failed, or the job has no scores yet."""


class RequestValidationError(APIError):
    """422: the request is invalid; ``errors`` lists the fields and messages."""

    @property
    def errors(self) -> list[dict]:
        return self.detail if isinstance(self.detail, list) else [{"msg": str(self.detail)}]


class ServiceUnavailableError(APIError):
    """503: the service is at its job limit or a component is down."""


class RunFailedError(AttributionClientError):
    """A training run ended in status 'failed'; ``run`` is its record."""

    def __init__(self, run: dict) -> None:
        self.run = run
        super().__init__(f"training run {run.get('run_id')} failed: {run.get('error')}")


class JobFailedError(AttributionClientError):
    """A job ended in status 'failed' or 'cancelled'; ``job`` is its record."""

    def __init__(self, job: dict) -> None:
        self.job = job
        reason = f": {job['error']}" if job.get("error") else ""
        super().__init__(f"job {job.get('job_id')} {job.get('status')}{reason}")


class WaitTimeoutError(AttributionClientError):
    """A wait for a job or run exceeded its timeout; the work may still finish."""


STATUS_ERRORS: dict[int, type[APIError]] = {
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: RequestTooLargeError,
    422: RequestValidationError,
    503: ServiceUnavailableError,
}


def format_detail(detail: Any) -> str:
    """Render a FastAPI ``detail`` (string or list of field errors) as one line."""
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, dict):
                location = ".".join(str(part) for part in item.get("loc", []) if part != "body")
                parts.append(f"{location}: {item.get('msg')}" if location else str(item.get("msg")))
            else:
                parts.append(str(item))
        return "; ".join(parts)
    return str(detail)
