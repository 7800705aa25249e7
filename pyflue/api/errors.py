"""The one place where errors become HTTP statuses and the JSON error body.

Body: ``{"error": {"type", "message", "details"}}`` (plus ``run_id`` where a run exists).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from pyflue import errors

# Most specific first: the first matching class decides the status.
STATUS: list[tuple[type[errors.PyflueError], int]] = [
    (errors.WorkflowNotFound, 404),
    (errors.RunNotFound, 404),
    (errors.InvalidPayload, 400),
    (errors.ConfigError, 400),
    (errors.RunStateConflict, 409),
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


def error_body(type: str, message: str, details: Any = None, **extra: Any) -> dict[str, Any]:
    return {"error": {"type": type, "message": message, "details": details}, **extra}


def status_for(exc: errors.PyflueError) -> int:
    return next((code for cls, code in STATUS if isinstance(exc, cls)), 500)


def install(app: FastAPI) -> None:
    @app.exception_handler(errors.PyflueError)
    async def _pyflue(_: Request, exc: errors.PyflueError) -> JSONResponse:
        return JSONResponse(error_body(exc.type, exc.message, exc.details), status_for(exc))

    @app.exception_handler(HttpProblem)
    async def _problem(_: Request, exc: HttpProblem) -> JSONResponse:
        return JSONResponse(error_body(exc.type, exc.message, exc.details), exc.status,
                            headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(p) for p in first.get("loc", ())]
        where = f"{loc[0]} parameter {loc[-1]!r}" if len(loc) > 1 else "request"
        return JSONResponse(
            error_body("invalid_parameter", f"{where}: {first.get('msg', 'invalid')}",
                       [{"loc": e.get("loc"), "msg": e.get("msg")} for e in exc.errors()]),
            400,
        )

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        # A bug of ours still answers in the documented shape (Starlette logs the traceback);
        # the exception's text stays in the log, as it may hold anything.
        return JSONResponse(error_body(
            "internal_error", f"the server failed unexpectedly ({type(exc).__name__}); "
            "its log has the details"), 500)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(error_body(kind, str(exc.detail)), exc.status_code,
                            headers=getattr(exc, "headers", None))
