"""Request size limits: the body-size middleware and the cap on listed validation errors."""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import status

logger = logging.getLogger(__name__)

# A 422 response lists at most this many validation errors, then one entry with the count.
MAX_LISTED_ERRORS = 20
# A rejected input echoed in a 422 response is cut to about this many characters.
MAX_ECHOED_INPUT_CHARS = 200
# An oversized body is read and discarded up to this size before the 413 goes out, so
# HTTP clients that send the whole body before reading the response still see the 413.
# Past it the connection closes.
MAX_DRAINED_BYTES = 64 * 1024 * 1024


def _readable_size(size: int) -> str:
    if size >= 1024 * 1024:
        return f"{size / (1024 * 1024):.3g} MiB"
    return f"{size / 1024:.3g} KiB"


class BodyLimitMiddleware:
    """ASGI middleware that returns 413 for request bodies over ``max_bytes``, unparsed.

    A declared ``Content-Length`` over the limit is rejected at once. Without
    one (chunked transfer encoding) the body is counted as it arrives and
    rejected as soon as it passes the limit. An accepted body is passed on whole.
    """

    def __init__(self, app, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {name.lower(): value for name, value in scope["headers"]}
        declared = headers.get(b"content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                await _send_error(send, status.HTTP_400_BAD_REQUEST,
                                  "the Content-Length header is not a non-negative integer")
                return
            if int(declared) > self.max_bytes:
                # With Expect: 100-continue the client has not sent the body yet and
                # sends none after the 413, so nothing needs to be drained.
                if headers.get(b"expect", b"").lower() != b"100-continue":
                    await _drain(receive, already=0)
                await self._reject(scope, send, int(declared))
                return

        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                if message.get("more_body", False):
                    size = await _drain(receive, already=size)
                await self._reject(scope, send, size)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break

        body = b"".join(chunks)
        delivered = False

        async def replay():
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _reject(self, scope, send, size: int) -> None:
        logger.warning("rejected %s %s: body of %d bytes or more exceeds MAGIC_MAX_BODY_BYTES=%d",
                       scope["method"], scope["path"], size, self.max_bytes)
        await _send_error(send, status.HTTP_413_CONTENT_TOO_LARGE,
                          f"the request body ({size} bytes or more) exceeds the limit of "
                          f"{self.max_bytes} bytes ({_readable_size(self.max_bytes)}, "
                          "MAGIC_MAX_BODY_BYTES); send less data per request")


async def _drain(receive, already: int) -> int:
    """Read and discard the rest of a request body; return the bytes seen in total."""
    size = already
    while size <= MAX_DRAINED_BYTES:
        message = await receive()
        if message["type"] != "http.request":
            break
        size += len(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return size


async def _send_error(send, status_code: int, message: str) -> None:
    body = json.dumps({"detail": message}).encode()
    await send({"type": "http.response.start", "status": status_code,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def cap_errors(errors: list[dict]) -> list[dict]:
    """Return the first MAX_LISTED_ERRORS validation errors and one entry counting the rest.

    Each echoed input is shortened, so a large rejected value is not sent back whole.
    """
    listed = [_shorten_input(error) for error in errors[:MAX_LISTED_ERRORS]]
    hidden = len(errors) - len(listed)
    if hidden > 0:
        listed.append({"type": "too_many_errors", "loc": [],
                       "msg": f"{hidden} more validation errors not listed; the response "
                              f"lists the first {MAX_LISTED_ERRORS} of {len(errors)}"})
    return listed


def _shorten_input(error: dict) -> dict:
    if "input" not in error:
        return error
    value: Any = error["input"]
    try:
        text = value if isinstance(value, str) else json.dumps(value, default=str)
    except (ValueError, RecursionError):
        text = f"<{type(value).__name__} that cannot be shown>"
    if len(text) <= MAX_ECHOED_INPUT_CHARS:
        return error
    return {**error, "input": text[:MAX_ECHOED_INPUT_CHARS] + f"... ({len(text)} characters)"}


def document_body_limit(openapi: dict, max_bytes: int) -> dict:
    """Add the 413 response to every operation of an OpenAPI document that takes a body."""
    schema = {"type": "object", "properties": {"detail": {"type": "string"}},
              "required": ["detail"]}
    for operations in openapi.get("paths", {}).values():
        for operation in operations.values():
            if "requestBody" in operation:
                operation.setdefault("responses", {}).setdefault("413", {
                    "description": f"The request body exceeds {max_bytes} bytes.",
                    "content": {"application/json": {"schema": schema}}})
    return openapi
