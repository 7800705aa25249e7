"""``/metrics`` (Prometheus text) and ``/runs/{run_id}/metrics`` (a run's resource use)."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from pyflue.api import auth, deps
from pyflue.api.auth import CallerDep
from pyflue.api.errors import documented
from pyflue.metrics import Metrics
from pyflue.resources import parse_samples
from pyflue.responses import RunMetrics
from pyflue.status import RunStatus

# The queue is counted up to this many runs at each scrape (a bounded read of the store).
QUEUED_COUNT_CAP = 1000

runs_router = APIRouter(tags=["runs"])  # guarded as every route is (pyflue.api.auth)


@runs_router.get("/runs/{run_id}/metrics", operation_id="get_run_metrics",
                 summary="A run's resource use", responses=documented(401, 404, 500, 503))
async def run_metrics(run_id: str, request: Request, caller: CallerDep) -> RunMetrics:
    """The resource samples of a run's container (`timestamp, cpuCount, cpuUsedPct, memUsed,
    memTotal, diskUsed, diskTotal`), about one a second while it runs, and the summary its
    record has once it has ended."""
    store = deps.store(request)
    run = await auth.load_run(store, run_id, caller)  # another tenant's: 404
    meter = deps.scheduler(request).runner.meters.get(run_id)
    samples = list(meter.samples) if meter is not None else parse_samples(
        await store.get_samples(run_id))
    return RunMetrics(run_id=run.run_id, status=run.status, metrics=samples,
                      resources=run.resources)


def install(app: FastAPI, metrics: Metrics, *, public: bool) -> None:
    """Adds ``GET /metrics``: behind the API token unless ``public``."""
    @app.get("/metrics", tags=["server"], operation_id="metrics", summary="Prometheus metrics",
             response_class=Response,
             responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}},
                              "description": "the metrics in the Prometheus text format"},
                        **documented(*(() if public else (401,)), 500)},
             openapi_extra={"security": []} if public else None)
    @auth.public_when(lambda settings: settings.observability.metrics_public)
    async def prometheus(request: Request) -> Response:
        """This server's metrics in the Prometheus text format (docs/observability.md)."""
        queued = await deps.store(request).list_runs(status=RunStatus.queued,
                                                     limit=QUEUED_COUNT_CAP)
        metrics.queued.labels(metrics.worker).set(len(queued))
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

