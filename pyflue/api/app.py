"""The control plane: ``create_app(settings, ...)`` builds the FastAPI app around a scheduler.

Dependencies come in as arguments (a store, a sandbox provider, model clients); whatever is not
given is built from the settings and closed with the app. Routers stay thin: they parse,
call the scheduler or the store, and serialize.

Every route, HTTP or WebSocket, of any router included here, needs a token: the app's own
dependency :func:`pyflue.api.auth.authenticate` (read that module before adding a route: how a
route gets the caller, loads a run for the caller's tenant, or is marked public).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fastapi import Depends, FastAPI, Request, Response

from pyflue import __version__, wiring
from pyflue.api import (
    artifacts,
    auth,
    errors,
    observability,
    openapi,
    runs,
    ui,
    workers,
    workflows,
    ws,
)
from pyflue.engine_watch import EngineWatch
from pyflue.llm import ModelResolver
from pyflue.responses import EngineHealth, Health, PoolFillAnswer
from pyflue.retention import keep_pruning, parse_age
from pyflue.sandbox.base import SandboxProvider
from pyflue.scheduler import Scheduler
from pyflue.settings import Settings
from pyflue.store import RunStore
from pyflue.tenants import Tokens

UNHEALTHY = ("the server's Docker engine does not answer: the body is a `Health` with `ok: false` "
             "and a `reason`; no run starts until the engine answers again")


def create_app(
    settings: Settings,
    *,
    store: RunStore | None = None,
    provider: SandboxProvider | None = None,
    models: ModelResolver | None = None,
) -> FastAPI:
    metrics = None
    if settings.observability.metrics:
        from pyflue.metrics import Metrics

        metrics = Metrics(settings.observability.worker_name)
    server = settings.server
    tokens = Tokens.load(server.api_token.get_secret_value() if server.api_token else None,
                         server.tokens_file)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with wiring.open_runner(settings, store=store, provider=provider,
                                      models=models, pool=True,
                                      observers=[metrics] if metrics else []) as runner:
            engine = wiring.engine_watch(settings, runner.provider)
            if engine is not None:
                await engine.start()  # a first ping: admission waits for an engine that answers
            scheduler = Scheduler(runner, max_concurrency=server.max_concurrency,
                                  engine=engine, engine_wait=server.engine_wait,
                                  tenant_limits=tokens.limits, fair=tokens.multi_tenant,
                                  max_queued=server.tenant_max_queued)
            await scheduler.start()
            if metrics is not None:
                metrics.watch_server(lambda: (scheduler.max_concurrency, scheduler.running),
                                     runner.provider.pool_fills)
            app.state.scheduler = scheduler
            app.state.engine = engine
            pruning = None
            if settings.server.retention is not None:
                pruning = asyncio.create_task(keep_pruning(
                    runner.retention, parse_age(settings.server.retention),
                    settings.server.retention_interval))
            try:
                yield
            finally:
                if pruning is not None:
                    pruning.cancel()
                    await asyncio.gather(pruning, return_exceptions=True)
                await scheduler.stop()
                if engine is not None:
                    await engine.stop()

    app = FastAPI(
        title="pyflue",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        # Every route of the app, whatever router it comes from: see pyflue.api.auth.
        dependencies=[Depends(auth.authenticate)],
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.tokens = tokens
    errors.install(app, debug=settings.server.debug)
    auth.install(app)
    app.include_router(workflows.router)
    app.include_router(runs.router)
    app.include_router(artifacts.router)
    app.include_router(ws.router)
    app.include_router(workers.router)
    ui.install(app)
    app.include_router(observability.runs_router)
    if metrics is not None:
        observability.install(app, metrics, public=settings.observability.metrics_public)
    openapi.install(app, settings)

    @app.get("/health", tags=["server"], operation_id="health", summary="Health",
             responses={503: {"model": Health, "description": UNHEALTHY},
                        **errors.documented(500)},
             openapi_extra={"security": []})
    @auth.public
    async def health(request: Request, response: Response) -> Health:
        """Whether the server can run workflows, and its load. Needs no token. 200 with
        `ok: true`; 503 with `ok: false` and a `reason` while its Docker engine does not
        answer (runs stay queued meanwhile, up to PYFLUE_ENGINE_WAIT seconds)."""
        scheduler: Scheduler = request.app.state.scheduler
        engine: EngineWatch | None = request.app.state.engine
        state = engine.state if engine is not None else None
        reason = None
        # Where the engine is and its own words are the operator's (this route needs no
        # token): in the body only in debug mode, always in the server's log.
        debug = settings.server.debug
        if state is not None and not state.up:
            response.status_code = 503
            where = f" at {state.engine}" if debug else ""
            why = f" ({state.reason})" if debug and state.reason else ""
            reason = (f"the Docker engine{where} does not answer since "
                      f"{state.since:%Y-%m-%dT%H:%M:%SZ}{why}: no run starts until it does; "
                      f"queued runs wait up to {settings.server.engine_wait:g} s "
                      "(PYFLUE_ENGINE_WAIT), then fail engine_unavailable")
        fills = [PoolFillAnswer(**vars(fill))
                 for fill in scheduler.runner.provider.pool_fills()]
        return Health(
            ok=reason is None, version=__version__, running=scheduler.running,
            max_concurrency=scheduler.max_concurrency, reason=reason,
            engine=None if state is None else EngineHealth(
                up=state.up, since=state.since, reason=state.reason if debug else None),
            pool=fills,
        )

    return app
