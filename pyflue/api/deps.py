"""Request-scoped access to what the app was built with, and the token check."""

from __future__ import annotations

import hmac

from fastapi import Request

from pyflue.api.errors import HttpProblem
from pyflue.scheduler import Scheduler
from pyflue.settings import Settings
from pyflue.store.base import RunStore


def scheduler(request: Request) -> Scheduler:
    sched: Scheduler = request.app.state.scheduler
    return sched


def store(request: Request) -> RunStore:
    return scheduler(request).store


def settings(request: Request) -> Settings:
    configured: Settings = request.app.state.settings
    return configured


async def require_token(request: Request) -> None:
    """With a token configured, every route it guards needs ``Authorization: Bearer <token>``."""
    token = settings(request).server.api_token
    if token is None:
        return
    given = request.headers.get("authorization", "")
    scheme, _, value = given.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        value.strip().encode(), token.get_secret_value().encode()
    ):
        raise HttpProblem(
            401, "unauthorized",
            "missing or wrong API token: send `Authorization: Bearer <token>` "
            "(the server's PYFLUE_API_TOKEN)",
            headers={"WWW-Authenticate": "Bearer"},
        )
