"""Request-scoped access to what the app was built with. Who is calling: :mod:`pyflue.api.auth`
(every route is guarded there, by construction)."""

from __future__ import annotations

from fastapi import Request

from pyflue.api import auth
from pyflue.scheduler import Scheduler
from pyflue.settings import Settings
from pyflue.store.base import RunStore

# Kept for routers that still name it: the app guards every route already (a dependency named
# twice is computed once per request).
require_token = auth.authenticate


def scheduler(request: Request) -> Scheduler:
    sched: Scheduler = request.app.state.scheduler
    return sched


def store(request: Request) -> RunStore:
    return scheduler(request).store


def settings(request: Request) -> Settings:
    configured: Settings = request.app.state.settings
    return configured
