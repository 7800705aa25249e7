"""``/ui``: the dashboard's static files, shipped in the package (:mod:`pyflue.ui`).

The files need no token: they hold nothing but code. Every call the pages make goes to the
public API with the token the browser was given (``Authorization: Bearer``), so the
dashboard shows nothing a script could not get.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from starlette.staticfiles import StaticFiles
from starlette.types import Message, Receive, Scope, Send

from pyflue.api import auth
from pyflue.ui import STATIC

# The pages load only their own files and talk only to this server.
_HEADERS = [
    (b"content-security-policy",
     b"default-src 'self'; img-src 'self' blob: data:; object-src 'none'; "
     b"frame-ancestors 'none'; base-uri 'none'; form-action 'self'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-cache"),
]


class _Files(StaticFiles):
    """Static files with the dashboard's security headers on every answer."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def headed(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *_HEADERS]
            await send(message)

        await super().__call__(scope, receive, headed)


def install(app: FastAPI) -> None:
    """Serves the dashboard at ``/ui/`` (``/ui`` redirects there)."""

    @app.get("/ui", include_in_schema=False)
    @auth.public
    async def ui_root() -> RedirectResponse:
        return RedirectResponse("/ui/", status_code=307)

    auth.public_mount(app, "/ui/", _Files(directory=STATIC, html=True), name="ui")
