"""``/runs``: list, get, events, live stream, cancel, delete.

Every route here is guarded (:mod:`pyflue.api.auth`) and sees only the caller's tenant's runs:
a run is loaded with :func:`~pyflue.api.auth.load_run` (another tenant's is a 404)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BeforeValidator

from pyflue.api import auth, deps
from pyflue.api.auth import CallerDep
from pyflue.api.errors import HttpProblem, documented
from pyflue.api.operator import public_event, public_run
from pyflue.api.sse import SSE_RESPONSE, EventStreamResponse, event_stream
from pyflue.errors import RunNotFound
from pyflue.events import EventType
from pyflue.models import Run
from pyflue.responses import CancelAnswer, DeleteAnswer, EventPage, RunPage
from pyflue.status import MAX_EVENT_INDEX, RunStatus, parse_event_index, past_the_end

router = APIRouter(tags=["runs"])

# `types`: comma-separated event types, spaces around them and empty items allowed. The
# route's own check (_types) accepts exactly what this pattern matches.
_NAME = "(?:" + "|".join(EventType.__members__) + ")"
TYPES_PATTERN = f"^ *{_NAME}? *(?:, *{_NAME}? *)*$"

_EVENT_INDEX = {"type": "integer", "minimum": 0, "maximum": MAX_EVENT_INDEX}
_LAST_EVENT_ID = {
    "name": "Last-Event-ID", "in": "header", "required": False, "schema": _EVENT_INDEX,
    "description": "resume after this event index (what `EventSource` sends when it "
                   "reconnects); wins over `after`",
}


_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def _iso_time(value: object) -> object:
    """Times are ISO 8601 text: a bare number (which pydantic would take for a Unix time) is
    refused, as the document's `date-time` format says."""
    if isinstance(value, str) and not _ISO_DATE.match(value):
        raise ValueError("expected an ISO 8601 time such as 2026-01-31T12:00:00Z")
    return value


@router.get("/runs", operation_id="list_runs", summary="List runs", responses=documented(
    400, 401, 404, 500, 503, _404="`not_found`: the `cursor` names no run"))
async def list_runs(
    request: Request,
    caller: CallerDep,
    status: Annotated[RunStatus | None, Query(description="only runs in this status")] = None,
    workflow: Annotated[str | None, Query(description="only runs of this workflow")] = None,
    limit: Annotated[int, Query(ge=1, le=500, description="runs per page")] = 50,
    cursor: Annotated[str | None, Query(
        description="the `next_cursor` of the previous page (a run id); 404 when it names "
                    "no run")] = None,
    created_after: Annotated[datetime | None, Query(
        description="only runs created at or after this time (ISO 8601; UTC when it has no "
                    "offset)"), BeforeValidator(_iso_time)] = None,
    created_before: Annotated[datetime | None, Query(
        description="only runs created before this time (ISO 8601; UTC when it has no "
                    "offset)"), BeforeValidator(_iso_time)] = None,
    run_id: Annotated[str | None, Query(
        min_length=1, max_length=200,
        description="only runs whose id contains this text (letter case ignored), e.g. a "
                    "part of the ULID")] = None,
) -> RunPage:
    """Runs, newest first. `next_cursor` pages on (pass it as `cursor`, with the same
    filters)."""
    if cursor is not None:
        try:
            await auth.load_run(deps.store(request), cursor, caller)
        except RunNotFound:
            raise RunNotFound(f"query parameter 'cursor': no run {cursor!r}; pass the "
                              "next_cursor of the previous page") from None
    runs = await deps.store(request).list_runs(
        status=status, workflow=workflow, limit=limit + 1, before=cursor,
        created_after=created_after, created_before=created_before, id_contains=run_id,
        tenant=auth.tenant_filter(caller),
    )
    page, more = runs[:limit], len(runs) > limit
    debug = deps.settings(request).server.debug
    return RunPage(runs=[public_run(run, debug) for run in page],
                   next_cursor=page[-1].run_id if more else None)


@router.get("/runs/{run_id}", operation_id="get_run", summary="Get a run",
            responses=documented(401, 404, 500, 503))
async def get_run(run_id: str, request: Request, caller: CallerDep) -> Run:
    """The run record."""
    return public_run(await auth.load_run(deps.store(request), run_id, caller),
                      deps.settings(request).server.debug)


def _types(raw: str | None) -> list[EventType] | None:
    names = [t.strip(" ") for t in (raw or "").split(",")]
    names = [t for t in names if t]
    unknown = [t for t in names if t not in EventType.__members__]
    if unknown:
        raise HttpProblem(400, "invalid_parameter",
                          f"query parameter 'types': unknown event type {', '.join(unknown)}; "
                          f"known: {', '.join(EventType.__members__)}")
    return [EventType(t) for t in names] or None


@router.get("/runs/{run_id}/events", operation_id="list_events",
            summary="List a run's events",
            responses=documented(400, 401, 404, 500, 503))
async def list_events(
    run_id: str,
    request: Request,
    caller: CallerDep,
    after: Annotated[int, Query(ge=0, le=MAX_EVENT_INDEX,
                                description="only events after this index")] = 0,
    limit: Annotated[int, Query(ge=1, le=5000, description="events per page")] = 1000,
    types: Annotated[str | None, Query(
        description="only these event types, comma-separated (e.g. `log,run_end`)",
        json_schema_extra={"pattern": TYPES_PATTERN})] = None,
) -> EventPage:
    """A page of the run's stored events, in order."""
    store = deps.store(request)
    await auth.load_run(store, run_id, caller)
    wanted = _types(types)
    events = await store.list_events(run_id, after=after, limit=limit, types=wanted)
    debug = deps.settings(request).server.debug
    return EventPage(run_id=run_id, events=[public_event(e, debug) for e in events],
                     next_after=events[-1].event_index if events else after)


@router.get("/runs/{run_id}/stream", operation_id="stream_run",
            summary="Follow a run's events (SSE)", response_class=StreamingResponse,
            responses={
                200: {"description": SSE_RESPONSE["text"],
                      "headers": {"X-Flue-Run-Id": {"description": "the run's id",
                                                    "schema": {"type": "string"}}},
                      "content": {"text/event-stream": SSE_RESPONSE["content"]}},
                **documented(400, 401, 404, 500, 503, _400=(
                    "`invalid_parameter`: `after` or `Last-Event-ID` is not an event index, or "
                    "is past the run's last event (an index of another run's)")),
            },
            openapi_extra={"parameters": [_LAST_EVENT_ID]})
async def stream(
    run_id: str,
    request: Request,
    caller: CallerDep,
    after: Annotated[int | None, Query(ge=0, le=MAX_EVENT_INDEX,
                                       description="only events after this index")] = None,
    last_event_id: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> StreamingResponse:
    """The run's events as server-sent events: the stored ones, then live ones, until
    `run_end`. Resume with `Last-Event-ID` or `?after=`."""
    store = deps.store(request)
    run = await auth.load_run(store, run_id, caller)
    start, where = after or 0, "query parameter 'after'"
    if last_event_id is not None:
        resumed = parse_event_index(last_event_id)
        if resumed is None:
            raise HttpProblem(400, "invalid_parameter",
                              "header 'Last-Event-ID' must be an event index (an integer "
                              f"from 0 to {MAX_EVENT_INDEX})")
        start, where = resumed, "header 'Last-Event-ID'"
    if problem := past_the_end(run.run_id, run.event_count, start):
        raise HttpProblem(400, "invalid_parameter", f"{where}: {problem}")
    server = deps.settings(request).server
    body = event_stream(store, run_id, after=start, heartbeat=server.heartbeat_seconds,
                        debug=server.debug)
    return EventStreamResponse(body, send_timeout=server.ws_send_timeout,
                               headers={"Cache-Control": "no-cache", "X-Flue-Run-Id": run_id})


@router.post("/runs/{run_id}/cancel", status_code=202, operation_id="cancel_run",
             summary="Cancel a run",
             responses=documented(401, 404, 409, 500, 503,
                                  _409="`conflict`: the run has already finished"))
async def cancel(run_id: str, request: Request, caller: CallerDep) -> CancelAnswer:
    """Cancel a queued run at once, or stop a running one (its container is killed)."""
    await auth.load_run(deps.store(request), run_id, caller)
    run = await deps.scheduler(request).cancel(run_id)
    return CancelAnswer(status="cancelled" if run.status is RunStatus.cancelled else "cancelling",
                        run_id=run_id)


@router.delete("/runs/{run_id}", operation_id="delete_run", summary="Delete a run",
               responses=documented(401, 404, 409, 500, 503,
                                    _409="`conflict`: the run has not finished (cancel it "
                                         "first)"))
async def delete(run_id: str, request: Request, caller: CallerDep) -> DeleteAnswer:
    """Delete a finished run: its record, its events, its uploads (and what else it owns).
    A queued or running run is refused with 409: cancel it first."""
    await auth.load_run(deps.store(request), run_id, caller)  # another tenant's: 404
    await deps.scheduler(request).runner.retention.forget(run_id)
    return DeleteAnswer(status="deleted", run_id=run_id)
