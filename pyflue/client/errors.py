"""The errors :class:`pyflue.client.PyFlueClient` raises, all :class:`~pyflue.errors.PyflueError`::

    PyflueError
    ├── ServerUnreachable     no connection to the server, or a stream that could not resume
    └── ApiError              the server answered with an error body (status_code, type, ...)
        ├── BadRequestError   400, 413, 415, 422: bad payload, parameter, size or media type
        ├── AuthError         401, 403: missing or wrong API token
        ├── NotFoundError     404: unknown workflow or run
        ├── ConflictError     409: a cancelled run (wait=True); cancelling a finished run
        └── ServerError       5xx: a failed, timed-out or interrupted run (wait=True), ...
"""

from __future__ import annotations

from typing import Any

import httpx

from pyflue.errors import PyflueError


class ServerUnreachable(PyflueError):
    """The server could not be reached, or a dropped stream could not be resumed."""

    type = "server_unreachable"


class ApiError(PyflueError):
    """The server answered with an error body ``{"error": {"type", "message", "details"}}``.

    ``run_id`` and ``run_status`` are set when the error is about a run that exists (a run that
    did not complete, answering ``?wait=result``); ``body`` is the whole decoded body.
    """

    details: Any

    def __init__(self, status_code: int, body: dict[str, Any]) -> None:
        error: dict[str, Any] = body["error"] if isinstance(body.get("error"), dict) else {}
        message = str(error.get("message") or f"HTTP {status_code}")
        super().__init__(message)
        self.status_code = status_code
        self.type = str(error.get("type") or "http_error")
        self.details = error.get("details")
        self.run_id: str | None = body.get("run_id")
        self.run_status: str | None = body.get("status")
        self.body = body


def unreadable_event(where: str, frame: str | bytes, exc: Exception) -> ApiError:
    """The error for a frame from the server that is not an event at all."""
    text = frame if isinstance(frame, str) else frame.decode(errors="replace")
    return ApiError(200, {"error": {
        "type": "invalid_response", "details": f"{exc}\n\nframe: {text[:500]}",
        "message": f"{where} sent a frame that is not a run event: is it a pyflue server?"}})


class BadRequestError(ApiError):
    """400, 413 or 415 (and 422): the request itself was refused."""


class AuthError(ApiError):
    """401 or 403: send the server's token (``PyFlueClient(token=...)``)."""


class NotFoundError(ApiError):
    """404: no workflow or run of that name."""


class ConflictError(ApiError):
    """409: the run is not in a state that allows it (or was cancelled, with wait=True)."""


class ServerError(ApiError):
    """5xx: the run failed, timed out or was interrupted (wait=True), or the server failed."""


def _error_class(status: int) -> type[ApiError]:
    if status in (400, 413, 415, 422):
        return BadRequestError
    if status in (401, 403):
        return AuthError
    if status == 404:
        return NotFoundError
    if status == 409:
        return ConflictError
    return ServerError if status >= 500 else ApiError


def error_from(response: httpx.Response) -> ApiError:
    """The typed error for an error response whose body has been read."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict) or not isinstance(body.get("error"), dict):
        text = response.text.strip().replace("\n", " ")[:200]
        body = {"error": {"type": "http_error", "details": text or None, "message":
                          f"HTTP {response.status_code} from {response.request.url}"}}
    return _error_class(response.status_code)(response.status_code, body)
