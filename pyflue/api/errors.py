"""The one place where errors become HTTP statuses and the JSON error body.

Body: :class:`pyflue.responses.ErrorBody`, ``{"error": {"type", "message", "details"}}`` (plus
``run_id`` and ``status`` where a run exists). :func:`documented` lists, for a route's OpenAPI
``responses``, the error statuses it can answer with and the types each one carries.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from pyflue import errors
from pyflue.responses import ErrorBody, error_body

# Most specific first: the first matching class decides the status.
STATUS: list[tuple[type[errors.PyflueError], int]] = [
    (errors.WorkflowNotFound, 404),
    (errors.RunNotFound, 404),
    (errors.ArtifactNotFound, 404),
    (errors.ArtifactTooLarge, 413),
    (errors.ArtifactUnavailable, 503),
    (errors.InvalidPayload, 400),
    (errors.ConfigError, 400),
    (errors.RunStateConflict, 409),
    (errors.QueueFull, 429),
    (errors.WorkflowLoadError, 500),
    (errors.EngineUnavailable, 503),
    (errors.StoreError, 503),
]


class HttpProblem(Exception):
    """An HTTP-level refusal (415, 413, 401, ...) raised by the API layer itself."""

    def __init__(self, status: int, type: str, message: str, details: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.type, self.message, self.details = status, type, message, details
        self.headers = headers


# Every error status the API answers with, and the error types that come with it.
ERROR_STATUSES: dict[int, str] = {
    400: "`invalid_parameter`: a query, path or header parameter out of its bounds (`details` "
         "lists the refused ones)",
    401: "`unauthorized`: missing or wrong `Authorization: Bearer <token>`",
    404: "`not_found`: no workflow, run or artifact of that name (the message lists the "
         "workflows)",
    409: "`conflict`: the run is not in a status that allows it",
    413: "`payload_too_large`: the body is over PYFLUE_MAX_BODY_BYTES",
    415: "`unsupported_media_type`: a body that is not `Content-Type: application/json`",
    416: "`range_not_satisfiable`: the `Range` asks for bytes past the artifact's end",
    429: "`queue_full`: the caller's tenant has PYFLUE_TENANT_MAX_QUEUED runs queued; retry "
         "after the `Retry-After` header's seconds",
    500: "`internal_error` (a bug: the server's log has it), `workflow_load_error`",
    503: "`store_error` (the run store cannot be read or written), `engine_unavailable`, "
         "`artifact_unavailable` (listed, but its content is not in this server's "
         "PYFLUE_ARTIFACTS_DIR)",
}


def documented(*statuses: int, **special: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these error statuses, each with the :class:`ErrorBody` model;
    ``special`` (``_409="..."``) replaces the description of a status for one route."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        text = special.get(f"_{status}", ERROR_STATUSES.get(status, ""))
        out[status] = {"model": ErrorBody, "description": text}
    return out


def reply(body: ErrorBody, status: int, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body.to_json(), status, headers=headers)


def status_for(exc: errors.PyflueError) -> int:
    return next((code for cls, code in STATUS if isinstance(exc, cls)), 500)


def headers_for(exc: errors.PyflueError) -> dict[str, str] | None:
    if isinstance(exc, errors.QueueFull):
        return {"Retry-After": str(exc.retry_after)}
    return None


def error_reply(exc: HttpProblem) -> JSONResponse:
    """The answer to an :class:`HttpProblem`."""
    return reply(error_body(exc.type, exc.message, exc.details), exc.status, exc.headers)


def install(app: FastAPI, *, debug: bool = False) -> None:
    """The handlers. Unless ``debug``, a body leaves out what is meant for the server's
    operator: the error's hint (a ``pyflue`` command, a server path) and a traceback."""

    @app.exception_handler(errors.PyflueError)
    async def _pyflue(_: Request, exc: errors.PyflueError) -> JSONResponse:
        if debug:
            return reply(error_body(exc.type, exc.message, exc.details), status_for(exc),
                         headers_for(exc))
        details = None if isinstance(exc, errors.WorkflowLoadError) else exc.details
        return reply(error_body(exc.type, exc.public_message, details), status_for(exc),
                     headers_for(exc))

    @app.exception_handler(HttpProblem)
    async def _problem(_: Request, exc: HttpProblem) -> JSONResponse:
        return error_reply(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(p) for p in first.get("loc", ())]
        where = f"{loc[0]} parameter {loc[-1]!r}" if len(loc) > 1 else "request"
        return reply(
            error_body("invalid_parameter", f"{where}: {first.get('msg', 'invalid')}",
                       [{"loc": e.get("loc"), "msg": e.get("msg")} for e in exc.errors()]),
            400,
        )

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        # A bug of ours still answers in the documented shape (Starlette logs the traceback);
        # the exception's text stays in the log, as it may hold anything.
        return reply(error_body(
            "internal_error", f"the server failed unexpectedly ({type(exc).__name__}); "
            "its log has the details"), 500)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405 and (allowed := _allowed(request)):
            # Every method of the path, not only its first route's.
            headers = {**(headers or {}), "Allow": ", ".join(allowed)}
        return reply(error_body(kind, str(exc.detail)), exc.status_code, headers)


def _allowed(request: Request) -> list[str]:
    """The methods the API documents at the request's path (Starlette's own 405 names only
    the first route matching the path, where several routes share it)."""
    methods: set[str] = set()
    for template, operations in request.app.openapi().get("paths", {}).items():
        pattern = re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template))
        if re.fullmatch(pattern, request.url.path):
            methods |= {m.upper() for m in operations if m.upper() in _METHODS}
    return sorted(methods)


_METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"}
