"""The OpenAPI document, the contract of the HTTP API, and its Swagger UI page at ``/docs``.

The document is generated from the routes and their models, then made to say what the server
does: parameters that may be left out are not also ``null``; validation errors are the 400s the
routes list (never FastAPI's 422); operations without a configured token accept no credentials
too; the WebSocket routes, which OpenAPI cannot describe, are in the description and in the
``x-websockets`` extension. ``/openapi.json``, ``/docs`` and the page's assets need no token:
the document is not secret and a browser cannot send a bearer header for a page. The assets
(Swagger UI 5) ship in the ``fastapi-offline`` package, so the page works without the internet.
"""

from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.staticfiles import StaticFiles

from pyflue.api import auth, ws
from pyflue.api.sse import EVENT_SCHEMA
from pyflue.errors import ConfigError
from pyflue.settings import Settings

ASSETS = "/docs/assets"

DESCRIPTION = """\
Workflows for agent and CI work; every run gets a fresh Docker container.

**Authentication.** With `PYFLUE_API_TOKEN` set on the server, every operation but
`GET /health` needs `Authorization: Bearer <token>` (the `bearer` scheme: use *Authorize* above
to try the operations here). Without a token the server binds a loopback address only and
checks nothing.

**Errors** are `{"error": {"type", "message", "details"}}` (the `ErrorBody` schema) with the
status each operation lists; a parameter out of its bounds is a 400 `invalid_parameter`.

**Run ids** (`workflow:<name>:<ULID>`) come back in the `X-Flue-Run-Id` header of invocations
and streams; their colons may be sent as they are or as `%3A`.

**Server-sent events** (`Accept: text/event-stream` on an invocation, `GET /runs/{run_id}/stream`):
the stream opens with a comment naming the run, then one frame per stored event
(`id: <event_index>`, `event: <type>`, `data: <event JSON>`, a blank line), a `: keep-alive`
comment every `PYFLUE_HEARTBEAT_SECONDS` while idle, and ends after `run_end`.

**WebSockets** (not OpenAPI operations; see `x-websockets` in this document):

- `WS /workflows/{name}`: send `{"payload": {...}}` first (within 30 s); receive every run
  event, then `{"type": "result", "run_id", "result"}` or
  `{"type": "error", "run_id", "status", "error"}`, then the close.
- `WS /runs/{run_id}/stream?after=N`: receive the run's events after index N until `run_end`.
- Token: the `Authorization` header, or `?token=<token>` for clients that cannot set headers.
- Close codes: 1000 done; 4400 bad first message or `after`; 4401 unauthorized; 4404 unknown
  workflow or run; 4408 the reader fell behind (reconnect with `?after=` the last index);
  4413 the first message is over PYFLUE_MAX_BODY_BYTES (the HTTP body limit); 1011 server error.
"""

_ERROR_FRAME = {
    "type": "object",
    "description": "sent before a 4400/4404/4413/1011 close",
    "required": ["type", "error"],
    "properties": {"type": {"const": "error"},
                   "error": {"$ref": "#/components/schemas/ErrorDetail"},
                   "run_id": {"type": "string"}},
}
_CLOSE_CODES = {
    str(ws.CLOSE_DONE): "the run ended (after the outcome frame), or the followed run "
                        "reached run_end",
    str(ws.CLOSE_BAD_MESSAGE): "the first message is not {\"payload\": {...}} with an object, "
                               "or `after` is not an event index",
    str(ws.CLOSE_UNAUTHORIZED): "missing or wrong token (no frame; the reason says it)",
    str(ws.CLOSE_NOT_FOUND): "unknown workflow or run",
    str(ws.CLOSE_TOO_SLOW): "the reader fell too far behind: reconnect with ?after=N "
                            "(the reason names N)",
    str(ws.CLOSE_TOO_LARGE): "the first message is over PYFLUE_MAX_BODY_BYTES, the HTTP body "
                             "limit (error type payload_too_large)",
    str(ws.CLOSE_ERROR): "an unexpected server error",
}
_AUTH = ("the `bearer` token as `Authorization: Bearer <token>`, or `?token=<token>` "
         "(when the server has PYFLUE_API_TOKEN)")
WEBSOCKETS: dict[str, Any] = {
    "/workflows/{name}": {
        "summary": "Invoke a workflow over a WebSocket: one invocation per socket",
        "auth": _AUTH,
        "client_messages": [{
            "description": f"the first and only message, within {ws.FIRST_MESSAGE_TIMEOUT:g} s",
            "schema": {"type": "object", "required": ["payload"],
                       "properties": {"payload": {"type": "object"}}},
        }],
        "server_messages": [
            {"description": "every run event, in order, run_start to run_end",
             "schema": EVENT_SCHEMA},
            {"description": "last, when the run completed", "schema": {
                "type": "object", "required": ["type", "run_id", "result"],
                "properties": {"type": {"const": "result"}, "run_id": {"type": "string"},
                               "result": {}}}},
            {"description": "last, when the run did not complete", "schema": {
                "type": "object", "required": ["type", "run_id", "status", "error"],
                "properties": {"type": {"const": "error"}, "run_id": {"type": "string"},
                               "status": {"$ref": "#/components/schemas/RunStatus"},
                               "error": {"$ref": "#/components/schemas/ErrorDetail"}}}},
            _ERROR_FRAME,
        ],
        "close_codes": _CLOSE_CODES,
    },
    "/runs/{run_id}/stream": {
        "summary": "Follow a run's events over a WebSocket, stored ones then live ones",
        "auth": _AUTH,
        "query": {"after": {"type": "integer", "minimum": 0, "maximum": 2**63 - 1,
                            "default": 0, "description": "send the events after this index"}},
        "server_messages": [
            {"description": "the run's events after `after`, until run_end",
             "schema": EVENT_SCHEMA},
            _ERROR_FRAME,
        ],
        "close_codes": _CLOSE_CODES,
    },
}


def build(app: FastAPI, settings: Settings) -> dict[str, Any]:
    """The document of ``app``: FastAPI's, made to say what the server does (module doc)."""
    doc = copy.deepcopy(app.openapi())
    doc["info"]["description"] = DESCRIPTION
    schemas = doc.get("components", {}).get("schemas", {})
    event = schemas["EventPage"]["properties"]["events"]["items"]
    doc["paths"] = _with_event(doc.get("paths", {}), event)
    doc["x-websockets"] = _with_event(WEBSOCKETS, event)
    # A public route (pyflue.api.auth.public) asks for no token: FastAPI lists the app's
    # bearer dependency on every operation.
    for route in (context.original_route for context in iter_route_contexts(app.routes)):
        if isinstance(route, APIRoute) and auth.is_public(route.endpoint, settings):
            for method in route.methods or ():
                operation = doc["paths"].get(route.path_format, {}).get(method.lower())
                if operation is not None:
                    operation["security"] = []
    for path in doc.get("paths", {}).values():
        for operation in path.values():
            operation.get("responses", {}).pop("422", None)
            for parameter in operation.get("parameters", []):
                parameter["schema"] = _absent_not_null(parameter.get("schema", {}))
            if (settings.server.api_token is None and settings.server.tokens_file is None
                    and operation.get("security")):
                operation["security"].append({})  # no token configured: nothing is checked
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    return doc


def _with_event(value: Any, event: dict[str, Any]) -> Any:
    """A copy of ``value`` with :data:`EVENT_SCHEMA` replaced by the document's event schema."""
    if value == EVENT_SCHEMA:
        return event
    if isinstance(value, dict):
        return {k: _with_event(v, event) for k, v in value.items()}
    if isinstance(value, list):
        return [_with_event(v, event) for v in value]
    return value


def _absent_not_null(schema: dict[str, Any]) -> dict[str, Any]:
    """``anyOf [X, null]`` of an optional parameter as ``X``: a query or header value is a
    string or missing, never null."""
    options = schema.get("anyOf")
    if not isinstance(options, list):
        return schema
    kept = [o for o in options if o != {"type": "null"}]
    if len(kept) != 1:
        return schema
    rest = {k: v for k, v in schema.items() if k != "anyOf"}
    return {**kept[0], **rest}


def assets() -> Path:
    """The folder of Swagger UI's files in the installed ``fastapi_offline`` package."""
    folder = resources.files("fastapi_offline") / "static"
    if not isinstance(folder, Path) or not (folder / "swagger-ui-bundle.js").is_file():
        raise ConfigError(f"Swagger UI's files are not in {folder}: reinstall pyflue's "
                          "dependencies (`pip install fastapi-offline`)")
    return folder


def install(app: FastAPI, settings: Settings) -> None:
    """Serves ``/openapi.json``, ``/docs`` and the page's assets, without the token."""
    document: dict[str, Any] = {}
    auth.public_mount(app, ASSETS, StaticFiles(directory=assets()), name="docs-assets")

    @app.get("/openapi.json", include_in_schema=False)
    @auth.public
    async def openapi() -> JSONResponse:
        if not document:
            document.update(build(app, settings))
        return JSONResponse(document)

    @app.get("/docs", include_in_schema=False)
    @auth.public
    async def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(
            openapi_url=f"{root}/openapi.json", title=f"{app.title} API",
            swagger_js_url=f"{root}{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS}/favicon.png",
            # The token survives a reload; no call to an online validator.
            swagger_ui_parameters={"persistAuthorization": True, "validatorUrl": None},
        )
