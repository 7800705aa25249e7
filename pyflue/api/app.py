"""The control plane: ``create_app(settings, ...)`` builds the FastAPI app around a scheduler.

Dependencies come in as arguments (a store, a sandbox provider, model clients); whatever is not
given is built from the settings and closed with the app. Routers stay thin: they parse,
call the scheduler or the store, and serialize.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request

from pyflue import __version__, wiring
from pyflue.api import errors, openapi, runs, workflows, ws
from pyflue.llm import ModelResolver
from pyflue.responses import Health, PoolFillAnswer
from pyflue.sandbox.base import SandboxProvider
from pyflue.scheduler import Scheduler
from pyflue.settings import Settings
from pyflue.store import RunStore


def create_app(
    settings: Settings,
    *,
    store: RunStore | None = None,
    provider: SandboxProvider | None = None,
    models: ModelResolver | None = None,
) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with wiring.open_runner(settings, store=store, provider=provider,
                                      models=models, pool=True) as runner:
            scheduler = Scheduler(runner, max_concurrency=settings.server.max_concurrency)
            await scheduler.start()
            app.state.scheduler = scheduler
            try:
                yield
            finally:
                await scheduler.stop()

    app = FastAPI(
        title="pyflue",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.settings = settings
    errors.install(app, debug=settings.server.debug)
    app.include_router(workflows.router)
    app.include_router(runs.router)
    app.include_router(ws.router)
    openapi.install(app, settings)

    @app.get("/health", tags=["server"], operation_id="health", summary="Health",
             responses=errors.documented(500), openapi_extra={"security": []})
    async def health(request: Request) -> Health:
        """Whether the server is up, and its load. Needs no token."""
        scheduler: Scheduler = request.app.state.scheduler
        fills = [PoolFillAnswer(**vars(fill))
                 for fill in scheduler.runner.provider.pool_fills()]
        return Health(ok=True, version=__version__, running=scheduler.running,
                      max_concurrency=scheduler.max_concurrency, pool=fills)

    return app
