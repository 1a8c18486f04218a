"""API keys: hashing, the authentication middleware and ownership checks.

The service never stores a key. ``MAGIC_API_KEYS`` contains the SHA-256 hex
digest of each key (``magic-attr hash-key`` prints it). When that list is
empty, authentication is off and every record has no owner. Otherwise every
request except ``GET /healthz`` must carry a key, as ``Authorization: Bearer
<key>`` or ``X-API-Key: <key>``. A request without one, or with a key whose
hash is not configured, gets 401. The owner of a record is the first
``OWNER_LENGTH`` hex digits of its creator's key hash, and a request for a
record of another owner gets 403.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
from typing import Any, Awaitable, Callable, Iterable, Optional

from fastapi import HTTPException, Request, status

logger = logging.getLogger(__name__)

HEALTH_PATH = "/healthz"
OWNER_LENGTH = 16
KEY_HASH_LENGTH = 64
# ASGI scope key under which the middleware stores the caller's owner id for the routes.
OWNER_SCOPE_KEY = "magic.owner"
KEY_HEADER = "x-api-key"

Scope = dict[str, Any]
Message = dict[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]],
                   Awaitable[None]]


def hash_key(key: str) -> str:
    """Return the SHA-256 hex digest of an API key, the form stored in MAGIC_API_KEYS."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def owner_id(key_hash: str) -> str:
    """Return the owner id recorded on the runs and jobs created with a key of this hash."""
    return key_hash[:OWNER_LENGTH]


def is_key_hash(value: str) -> bool:
    """Return True if ``value`` has the form of a SHA-256 hex digest."""
    return len(value) == KEY_HASH_LENGTH and all(c in "0123456789abcdef" for c in value.lower())


class KeyRing:
    """The configured key hashes; ``owner`` looks a key up in constant time per hash."""

    def __init__(self, key_hashes: Iterable[str]) -> None:
        self._hashes = tuple(value.lower() for value in key_hashes)

    @property
    def enabled(self) -> bool:
        return bool(self._hashes)

    def owner(self, key: str) -> Optional[str]:
        """Return the owner id of ``key``, or None if its hash is not configured."""
        digest = hash_key(key)
        match = None
        # Compare with every hash, without stopping early, so the time taken does
        # not depend on which configured hash matches.
        for candidate in self._hashes:
            if hmac.compare_digest(digest, candidate):
                match = candidate
        return None if match is None else owner_id(match)


class CredentialsError(Exception):
    """A request carries no usable API key; the message gives the reason, without the key."""


def read_key(headers: Iterable[tuple[bytes, bytes]]) -> str:
    """Return the API key of a request from its ASGI headers; raise CredentialsError if absent."""
    bearer = api_key = None
    for name, value in headers:
        name = name.lower()
        if name == b"authorization":
            scheme, _, credentials = value.decode("latin-1").strip().partition(" ")
            if scheme.lower() != "bearer" or not credentials.strip():
                raise CredentialsError("the Authorization header must read 'Bearer <API key>'")
            bearer = credentials.strip()
        elif name == KEY_HEADER.encode():
            api_key = value.decode("latin-1").strip() or None
    if bearer is not None and api_key is not None and not hmac.compare_digest(
            bearer.encode("latin-1"), api_key.encode("latin-1")):
        raise CredentialsError("the Authorization and X-API-Key headers carry different keys; "
                          "send one key")
    key = bearer or api_key
    if not key:
        raise CredentialsError("missing API key; send it as 'Authorization: Bearer <key>' or in "
                          "the X-API-Key header")
    return key


class _RejectionLog:
    """Logs rejected requests at most once per ``interval_s`` per reason, with a count."""

    def __init__(self, interval_s: float = 10.0) -> None:
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._lock = threading.Lock()

    def warning(self, reason: str, method: str, path: str, client: str) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(reason, -self.interval_s) < self.interval_s:
                self._suppressed[reason] = self._suppressed.get(reason, 0) + 1
                return
            self._last[reason] = now
            suppressed = self._suppressed.pop(reason, 0)
        more = f" ({suppressed} more since the last message)" if suppressed else ""
        logger.warning("rejected %s %s from %s: %s%s", method, path, client, reason, more)


class APIKeyMiddleware:
    """ASGI middleware that authenticates every request but ``GET /healthz``.

    It rejects before the body is read, and stores the caller's owner id in the
    scope under ``OWNER_SCOPE_KEY`` for ``request_owner``. Keys are never logged.
    """

    def __init__(self, app: ASGIApp, key_ring: KeyRing) -> None:
        self.app = app
        self.key_ring = key_ring
        self._log = _RejectionLog()

    async def __call__(self, scope: Scope, receive, send) -> None:
        # The path must match exactly: a suffix test would let /v1/jobs/healthz through.
        if (scope["type"] != "http" or not self.key_ring.enabled
                or scope["path"] == HEALTH_PATH):
            await self.app(scope, receive, send)
            return
        try:
            key = read_key(scope["headers"])
        except CredentialsError as error:
            await self._reject(scope, send, str(error))
            return
        owner = self.key_ring.owner(key)
        if owner is None:
            await self._reject(scope, send, "invalid API key; check the key, or ask the "
                                            "operator to add its SHA-256 hash to MAGIC_API_KEYS")
            return
        scope[OWNER_SCOPE_KEY] = owner
        await self.app(scope, receive, send)

    async def _reject(self, scope: Scope, send, message: str) -> None:
        client = scope.get("client")
        self._log.warning(message, scope["method"], scope["path"],
                          f"{client[0]}:{client[1]}" if client else "unknown client")
        body = json.dumps({"detail": message}).encode()
        await send({"type": "http.response.start", "status": status.HTTP_401_UNAUTHORIZED,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (b"www-authenticate", b'Bearer realm="magic-attribution"')]})
        await send({"type": "http.response.body", "body": body})


def request_owner(request: Request) -> Optional[str]:
    """Return the caller's owner id, or None when authentication is off (FastAPI dependency)."""
    return request.scope.get(OWNER_SCOPE_KEY)


def require_owner(record: dict, owner: Optional[str], record_name: str) -> None:
    """Raise 403 unless the caller ``owner`` created ``record``; no check when auth is off.

    A record created while authentication was off has no owner, and with
    authentication on no key may use it.
    """
    if owner is None:
        return
    recorded = record.get("owner") or None
    if recorded is None:
        raise HTTPException(status.HTTP_403_FORBIDDEN,
                            detail=f"{record_name} was created without an API key, so no key may "
                                   "use it; create it again with your key")
    if not hmac.compare_digest(recorded, owner):
        raise HTTPException(status.HTTP_403_FORBIDDEN,
                            detail=f"{record_name} belongs to another API key")


ERROR_SCHEMA = {"type": "object", "properties": {"detail": {"type": "string"}},
                "required": ["detail"]}


def add_security_schemes(openapi: dict) -> dict:
    """Declare the key headers and the 401 and 403 responses in an OpenAPI document.

    Every route but /healthz requires a key, so /docs and schema-driven clients
    send it.
    """
    errors = {
        "401": "Missing or invalid API key.",
        "403": "The run, job or evaluation belongs to another API key.",
    }
    components = openapi.setdefault("components", {})
    components.setdefault("securitySchemes", {}).update({
        "BearerKey": {"type": "http", "scheme": "bearer",
                      "description": "An API key as 'Authorization: Bearer <key>'."},
        "HeaderKey": {"type": "apiKey", "in": "header", "name": "X-API-Key",
                      "description": "An API key in the X-API-Key header."},
    })
    for path, operations in openapi.get("paths", {}).items():
        if path == HEALTH_PATH:
            continue
        for operation in operations.values():
            operation["security"] = [{"BearerKey": []}, {"HeaderKey": []}]
            responses = operation.setdefault("responses", {})
            for code, description in errors.items():
                responses.setdefault(code, {"description": description, "content": {
                    "application/json": {"schema": ERROR_SCHEMA}}})
    return openapi
