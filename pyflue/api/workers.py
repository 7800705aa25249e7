"""``/workers``: who shares the run store, and when each was last heard from."""

from __future__ import annotations

from collections import Counter

from fastapi import APIRouter, Request

from pyflue.api import auth, deps
from pyflue.api.auth import CallerDep
from pyflue.api.errors import documented
from pyflue.models import RunStatus
from pyflue.responses import WorkerInfo, WorkerList

router = APIRouter(tags=["server"])  # guarded by the app: see pyflue.api.auth

# Runs counted per worker: more than this many running at once is past any pool of workers
# this store serves (each one's PYFLUE_MAX_CONCURRENCY), so the count is exact in practice.
_RUNNING_COUNTED = 2000


@router.get("/workers", operation_id="list_workers", summary="List workers",
            responses=documented(401, 500, 503))
async def list_workers(request: Request, caller: CallerDep) -> WorkerList:
    """The workers sharing this server's run store, with their heartbeats and running runs
    (the caller's tenant's; an admin's: all)."""
    store = deps.store(request)
    lease = deps.settings(request).server.worker_lease
    running = Counter(run.owner for run in await store.list_runs(
        status=RunStatus.running, limit=_RUNNING_COUNTED, tenant=auth.tenant_filter(caller)))
    return WorkerList(lease_seconds=lease, workers=[
        WorkerInfo(worker=seen.worker, started_at=seen.started_at, seen_at=seen.seen_at,
                   age_seconds=round(seen.age_seconds, 3), lost=seen.age_seconds > lease,
                   running=running[seen.worker])
        for seen in await store.list_workers()])
