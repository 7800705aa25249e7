"""``/runs``: list, get, events, live stream, cancel."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse

from pyflue.api import deps
from pyflue.api.errors import HttpProblem
from pyflue.api.sse import event_stream
from pyflue.errors import RunNotFound
from pyflue.events import EventType
from pyflue.status import MAX_EVENT_INDEX, RunStatus, parse_event_index

router = APIRouter(dependencies=[Depends(deps.require_token)])


@router.get("/runs")
async def list_runs(
    request: Request,
    status: RunStatus | None = None,
    workflow: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: str | None = None,
) -> dict[str, Any]:
    """Runs, newest first. ``next_cursor`` pages on (pass it as ``cursor``)."""
    if cursor is not None:
        try:
            await deps.store(request).get_run(cursor)
        except RunNotFound:
            raise HttpProblem(400, "invalid_parameter", f"query parameter 'cursor': no run "
                              f"{cursor!r}; pass the next_cursor of the previous page") from None
    runs = await deps.store(request).list_runs(
        status=status, workflow=workflow, limit=limit + 1, before=cursor
    )
    page, more = runs[:limit], len(runs) > limit
    return {
        "runs": [r.model_dump(mode="json") for r in page],
        "next_cursor": page[-1].run_id if more else None,
    }


@router.get("/runs/{run_id}")
async def get_run(run_id: str, request: Request) -> dict[str, Any]:
    return (await deps.store(request).get_run(run_id)).model_dump(mode="json")


def _types(raw: str | None) -> list[EventType] | None:
    if not raw:
        return None
    names = [t.strip() for t in raw.split(",") if t.strip()]
    unknown = [t for t in names if t not in EventType.__members__]
    if unknown:
        raise HttpProblem(400, "invalid_parameter",
                          f"query parameter 'types': unknown event type {', '.join(unknown)}; "
                          f"known: {', '.join(EventType.__members__)}")
    return [EventType(t) for t in names]


@router.get("/runs/{run_id}/events")
async def list_events(
    run_id: str,
    request: Request,
    after: Annotated[int, Query(ge=0, le=MAX_EVENT_INDEX)] = 0,
    limit: Annotated[int, Query(ge=1, le=5000)] = 1000,
    types: str | None = None,
) -> dict[str, Any]:
    store = deps.store(request)
    await store.get_run(run_id)
    wanted = _types(types)
    events = await store.list_events(run_id, after=after, limit=limit, types=wanted)
    return {
        "run_id": run_id,
        "events": [e.model_dump(mode="json") for e in events],
        "next_after": events[-1].event_index if events else after,
    }


@router.get("/runs/{run_id}/stream")
async def stream(
    run_id: str,
    request: Request,
    after: Annotated[int | None, Query(ge=0, le=MAX_EVENT_INDEX)] = None,
    last_event_id: Annotated[str | None, Header()] = None,
) -> StreamingResponse:
    store = deps.store(request)
    await store.get_run(run_id)
    start = after or 0
    if last_event_id is not None:
        resumed = parse_event_index(last_event_id)
        if resumed is None:
            raise HttpProblem(400, "invalid_parameter",
                              "header 'Last-Event-ID' must be an event index (an integer "
                              f"from 0 to {MAX_EVENT_INDEX})")
        start = resumed
    body = event_stream(store, run_id, after=start,
                        heartbeat=deps.settings(request).server.heartbeat_seconds)
    return StreamingResponse(body, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Flue-Run-Id": run_id})


@router.post("/runs/{run_id}/cancel", status_code=202)
async def cancel(run_id: str, request: Request) -> JSONResponse:
    run = await deps.scheduler(request).cancel(run_id)
    state = "cancelled" if run.status is RunStatus.cancelled else "cancelling"
    return JSONResponse({"status": state, "run_id": run_id}, 202)
