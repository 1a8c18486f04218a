"""Python SDK of the attribution service (sync and async, over httpx).

Needs only httpx, numpy and tqdm: neither torch nor ray is imported.
"""

from ._async import AsyncAttributionClient
from ._base import DEFAULT_BASE_URL, RetryPolicy
from ._errors import (APIError, AttributionClientError, AuthenticationError, ConflictError,
                      JobFailedError, NotFoundError, PermissionDeniedError,
                      RequestTooLargeError, RequestValidationError, RunFailedError,
                      ServiceConnectionError, ServiceUnavailableError, WaitTimeoutError)
from ._sync import AttributionClient

__all__ = [
    "APIError", "AsyncAttributionClient", "AttributionClient", "AttributionClientError",
    "AuthenticationError", "ConflictError", "DEFAULT_BASE_URL", "JobFailedError",
    "NotFoundError", "PermissionDeniedError", "RequestTooLargeError", "RequestValidationError",
    "RetryPolicy", "RunFailedError", "ServiceConnectionError", "ServiceUnavailableError",
    "WaitTimeoutError",
]
