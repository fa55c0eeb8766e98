"""ASGI middleware run before any route: the body size limit and the API key.

Both are plain ASGI (no HTTP parsing here: Starlette and uvicorn parse the request) so that a
refused request costs nothing: an oversized body is refused from its ``Content-Length``, or as
soon as the bytes read pass the limit, without being buffered whole.
"""

from __future__ import annotations

import hmac

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from apps.serve.errors import APIError


class BodySizeLimit:
    """Refuse request bodies over ``max_bytes`` with 413; smaller bodies reach the app unchanged."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    def _too_large(self, size: str) -> APIError:
        return APIError(413, f"the request body is {size} bytes, more than this server's limit of {self.max_bytes} "
                        "(--max-body-mb); send smaller or fewer images", code="request_too_large")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._too_large(declared).response()(scope, receive, send)
            return
        # Read the body up to the limit, then hand it to the app as it came.
        chunks: list[Message] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left
                chunks.append(message)
                break
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                await self._too_large(f"more than {self.max_bytes}").response()(scope, receive, send)
                return
            chunks.append(message)
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            return chunks.pop(0) if chunks else await receive()

        await self.app(scope, replay, send)


class APIKeyCheck:
    """With a key set, every ``/v1`` request needs ``Authorization: Bearer KEY`` (401 otherwise)."""

    def __init__(self, app: ASGIApp, api_key: str | None):
        self.app, self.api_key = app, api_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.api_key is None or scope["type"] != "http" or not scope["path"].startswith("/v1"):
            await self.app(scope, receive, send)
            return
        header = Headers(scope=scope).get("authorization", "")
        scheme, _, token = header.partition(" ")
        if not header:
            error = APIError(401, "this server needs an API key: send the header 'Authorization: Bearer KEY'",
                             code="missing_api_key")
        elif scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.api_key.encode()):
            error = APIError(401, "invalid API key; send the key the server was started with, as 'Authorization: Bearer KEY'",
                             code="invalid_api_key")
        else:
            await self.app(scope, receive, send)
            return
        await error.response()(scope, receive, send)
