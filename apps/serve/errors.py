"""OpenAI-style errors: every refusal is ``{"error": {"message", "type", "param", "code"}}`` with its status.

``APIError`` is raised anywhere in a request's handling; the handlers installed by
``install_error_handlers`` turn it, pydantic's validation errors, Starlette's 404/405 and
anything unexpected into that body, so a client never sees a traceback (an unexpected error
is logged on the server with its traceback, and answered with a 500 that says so).
"""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from apps.serve.schema import PART_TYPES, ChatCompletionRequest, ErrorBody, ErrorResponse

log = logging.getLogger("vlm.serve")

TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
    504: "timeout_error",
}


class APIError(Exception):
    """A request refused or failed: HTTP ``status`` and an OpenAI error body."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers

    def body(self) -> dict[str, Any]:
        error = ErrorBody(message=self.message, type=TYPES.get(self.status, "invalid_request_error"),
                          param=self.param, code=self.code)
        return ErrorResponse(error=error).as_dict()

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


# --- pydantic's errors, said for a person -------------------------------------------------------

_UNION_LABEL = re.compile(r"^(str|int|float|bool|list\[.*\]|dict\[.*\]|tagged-union\[.*\]|function-\w+\[.*\])$")
_KNOWN_FIELDS = ", ".join(ChatCompletionRequest.model_fields)


def _clean_loc(loc: tuple[Any, ...]) -> list[Any]:
    """Drop pydantic's union branch labels (``str``, ``list[...]``) and tagged-union tags from a location."""
    cleaned, tag_next = [], False
    for i, part in enumerate(loc):
        if isinstance(part, str) and _UNION_LABEL.match(part):
            tag_next = tag_next or part.startswith("list[tagged-union")
            continue
        if tag_next and isinstance(part, str) and part in PART_TYPES and i > 0 and isinstance(loc[i - 1], int):
            tag_next = False
            continue
        cleaned.append(part)
    return cleaned


def _loc_text(loc: list[Any]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _message(error: dict[str, Any], where: str) -> str:
    kind, msg = error["type"], error["msg"]
    if kind == "json_invalid":
        return f"the body is not valid JSON ({msg.removeprefix('Invalid JSON: ')}); send a JSON object"
    if kind == "model_type" and not where:
        return "the body must be a JSON object with 'messages' (and 'model', 'max_tokens', ...)"
    if kind == "extra_forbidden":
        if where.startswith("messages") or "." in where:
            return f"{where}: unknown field; remove it"
        return f"{where}: unknown or unsupported field; this server takes {_KNOWN_FIELDS}"
    if kind == "missing":
        return f"{where}: required field missing"
    if kind == "value_error":
        msg = msg.removeprefix("Value error, ")
    return f"{where}: {msg}" if where else msg


def validation_error(err: ValidationError | RequestValidationError) -> APIError:
    """One 400 for a body that fails the schema: the most specific problems first, at most three."""
    errors = [(e, _clean_loc(tuple(e.get("loc", ())))) for e in err.errors()]
    # Where a union's branches both fail, the branch that got further is what the client meant.
    deepest = [(e, loc) for e, loc in errors
               if not any(len(other) > len(loc) and other[: len(loc)] == loc for _, other in errors)]
    messages: list[str] = []
    by_place: dict[str, list[str]] = {}
    for error, loc in deepest:
        where = _loc_text(loc)
        if error["type"].endswith("_type") and where in by_place:
            by_place[where].append(error["msg"].removeprefix("Input should be "))
            continue
        by_place[where] = [error["msg"].removeprefix("Input should be ")] if error["type"].endswith("_type") else []
        messages.append(_message(error, where))
    for where, expected in by_place.items():
        if len(expected) > 1:  # a union of types, all wrong: say what each branch takes
            said = " or ".join(e.removeprefix("a valid ") for e in expected)
            if where.endswith("content"):
                said = 'a string, or an array of parts ({"type": "text", "text": ...} or {"type": "image_url", ...})'
            messages = [f"{where}: should be {said}" if m.startswith(f"{where}: ") else m for m in messages]
    first_param = _loc_text(deepest[0][1]) if deepest else None
    text = "; ".join(dict.fromkeys(messages[:3]))
    if len(messages) > 3:
        text += f" (and {len(messages) - 3} more)"
    return APIError(400, text, param=first_param or None, code="invalid_request")


# --- handlers -----------------------------------------------------------------------------------


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, err: APIError) -> JSONResponse:
        return err.response()

    @app.exception_handler(RequestValidationError)
    async def _request_validation(request: Request, err: RequestValidationError) -> JSONResponse:
        return validation_error(err).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, err: StarletteHTTPException) -> JSONResponse:
        if err.status_code == 404:
            message = f"no such endpoint {request.url.path}; the API is POST /v1/chat/completions, GET /v1/models"
        elif err.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        else:
            message = str(err.detail)
        return APIError(err.status_code, message, code="not_found" if err.status_code == 404 else None,
                        headers=getattr(err, "headers", None)).response()

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, err: Exception) -> JSONResponse:
        log.exception("unexpected error answering %s %s", request.method, request.url.path)
        return APIError(500, f"internal server error ({type(err).__name__}); the server log has the details, "
                        "and the server goes on answering").response()
