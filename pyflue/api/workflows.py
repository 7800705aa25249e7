"""``/workflows``: list them; invoke one (202, ``?wait=result``, or SSE)."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from pyflue.api import deps
from pyflue.api.errors import HttpProblem, error_body
from pyflue.api.sse import event_stream
from pyflue.errors import PyflueError
from pyflue.models import Run, RunStatus, check_payload, end_error

router = APIRouter(dependencies=[Depends(deps.require_token)])

# How a run that did not complete answers a ?wait=result request.
FINISHED_STATUS = {
    RunStatus.failed: 500,
    RunStatus.timed_out: 504,
    RunStatus.cancelled: 409,
    RunStatus.interrupted: 503,
}


@router.get("/workflows")
async def list_workflows(request: Request) -> dict[str, Any]:
    registry = deps.scheduler(request).runner.registry
    out = []
    for name in registry.names():
        try:
            description = registry.get(name).description
            problem = None
        except PyflueError as exc:
            description, problem = "", exc.message
        out.append({"name": name, "description": description, "error": problem})
    return {"workflows": out}


async def read_payload(request: Request, limit: int) -> dict[str, Any]:
    """The payload of an invocation: the JSON body, or its ``payload`` member."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise HttpProblem(413, "payload_too_large", f"the body is {length} bytes; the limit is "
                          f"{limit} (PYFLUE_MAX_BODY_BYTES)")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise HttpProblem(413, "payload_too_large", f"the body is over the limit of {limit} "
                              "bytes (PYFLUE_MAX_BODY_BYTES)")
    request._body = bytes(body)  # so a workflow can still read ctx.req.body() / .json()
    if not body.strip():
        return {}
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json" and not kind.endswith("+json"):
        raise HttpProblem(415, "unsupported_media_type", "send the payload as JSON "
                          f"(Content-Type: application/json), not {kind or 'no type'}")
    try:
        value = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HttpProblem(400, "invalid_json", f"the body is not valid JSON: {exc}") from None
    if isinstance(value, dict) and set(value) == {"payload"}:
        value = value["payload"]
    return check_payload(value)


@router.post("/workflows/{name}", status_code=202)
async def invoke(
    name: str,
    request: Request,
    wait: Annotated[Literal["result"] | None, Query(description="wait for the result")] = None,
    idempotency_key: Annotated[str | None, Header(max_length=300)] = None,
) -> Response:
    settings = deps.settings(request)
    payload = await read_payload(request, settings.server.max_body_bytes)
    scheduler = deps.scheduler(request)
    run, _new = await scheduler.submit(name, payload, req=request, idempotency_key=idempotency_key)
    headers = {"X-Flue-Run-Id": run.run_id}
    if "text/event-stream" in request.headers.get("accept", ""):
        stream = event_stream(scheduler.store, run.run_id, after=0,
                              heartbeat=settings.server.heartbeat_seconds)
        return StreamingResponse(stream, media_type="text/event-stream",
                                 headers={**headers, "Cache-Control": "no-cache"})
    if wait == "result":
        final = await scheduler.wait(run.run_id)
        return _result_response(final, headers)
    return JSONResponse({"status": "accepted", "run_id": run.run_id}, 202, headers=headers)


def _result_response(run: Run, headers: dict[str, str]) -> JSONResponse:
    if run.status is RunStatus.completed:
        return JSONResponse({"status": "completed", "run_id": run.run_id, "result": run.result},
                            200, headers=headers)
    error = end_error(run.status, run.error, run.reason)
    assert error is not None  # only a completed run has none
    body = error_body(error.type, error.message, error.details, run_id=run.run_id,
                      status=run.status.value)
    return JSONResponse(body, FINISHED_STATUS.get(run.status, 500), headers=headers)
