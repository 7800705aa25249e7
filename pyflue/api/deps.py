"""Request-scoped access to what the app was built with, and the token check."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from pyflue.api.errors import HttpProblem
from pyflue.scheduler import Scheduler
from pyflue.settings import Settings
from pyflue.store.base import RunStore

# Declared as a dependency so the OpenAPI document has the `bearer` scheme and every guarded
# operation lists it; the check itself is require_token's (a 401 in our error body).
bearer = HTTPBearer(
    scheme_name="bearer", auto_error=False,
    description="The server's PYFLUE_API_TOKEN, as `Authorization: Bearer <token>`.",
)


def scheduler(request: Request) -> Scheduler:
    sched: Scheduler = request.app.state.scheduler
    return sched


def store(request: Request) -> RunStore:
    return scheduler(request).store


def settings(request: Request) -> Settings:
    configured: Settings = request.app.state.settings
    return configured


async def require_token(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
) -> None:
    """With a token configured, every route it guards needs ``Authorization: Bearer <token>``."""
    token = settings(request).server.api_token
    if token is None:
        return
    given = credentials.credentials if credentials is not None else ""
    if not given or not hmac.compare_digest(given.encode(), token.get_secret_value().encode()):
        raise HttpProblem(
            401, "unauthorized",
            "missing or wrong API token: send `Authorization: Bearer <token>` "
            "(the server's PYFLUE_API_TOKEN)",
            headers={"WWW-Authenticate": "Bearer"},
        )
