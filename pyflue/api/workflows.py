"""``/workflows``: list them; invoke one (202, ``?wait=result``, or SSE)."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.types import Message

from pyflue.api import auth, deps, multipart
from pyflue.api.auth import CallerDep
from pyflue.api.errors import HttpProblem, documented, reply
from pyflue.api.operator import public_message
from pyflue.api.sse import SSE_RESPONSE, EventStreamResponse, event_stream
from pyflue.models import Run, RunStatus, check_payload, end_error
from pyflue.responses import Accepted, Completed, WorkflowInfo, WorkflowList, error_body

router = APIRouter(tags=["workflows"])  # guarded by the app: see pyflue.api.auth

# How a run that did not complete answers a ?wait=result request.
FINISHED_STATUS = {
    RunStatus.failed: 500,
    RunStatus.timed_out: 504,
    RunStatus.cancelled: 409,
    RunStatus.interrupted: 503,
}

RUN_ID_HEADER = {"X-Flue-Run-Id": {"description": "the run's id", "schema": {"type": "string"}}}
_RUN_ID_IF_RUN = {"X-Flue-Run-Id": {"description": "the run's id, when the answer is about a "
                                                   "run (?wait=result)",
                                    "schema": {"type": "string"}}}
# What a client can do next with the run id of an answer (OpenAPI links).
_RUN_LINKS = {
    op: {"operationId": op, "parameters": {"run_id": "$response.body#/run_id"}}
    for op in ("get_run", "list_events", "stream_run", "cancel_run")
}

# The body: documented here, read by the route itself (so the size limit holds while it
# streams in). `{"payload": X}` alone is unwrapped, and then X must be an object too.
_BODY = {
    "required": False,
    "description": "The payload: a JSON object, either the payload itself or "
                   "`{\"payload\": {...}}` (unwrapped when `payload` is its only key). No body "
                   "is `{}`. At most PYFLUE_MAX_BODY_BYTES (413 above); other media types than "
                   "JSON (`application/json`, `*/*+json`) are refused with 415.",
    "content": {"application/json": {
        "schema": {
            "type": "object",
            "if": {"required": ["payload"], "maxProperties": 1},
            "then": {"properties": {"payload": {"type": "object"}}},
        },
        "examples": {"payload": {"value": {"name": "Ada"}},
                     "wrapped": {"value": {"payload": {"name": "Ada"}}}},
    }, "multipart/form-data": {
        "schema": {
            "type": "object",
            "description": "Files sent with the invocation: a `payload` part (the payload "
                           "JSON object) and archive parts `upload:DEST` (tar, tar.gz or zip; "
                           "`upload` alone: the workspace itself), unpacked into the run's "
                           "workspace at DEST before its workflow gets its container. Each "
                           "archive is checked before the run is created: a member with `..` "
                           "or an absolute name, a link leaving the tree, a device, too many "
                           "members or bytes is a 400 `upload_refused` naming it, and no run "
                           "is created (docs/ci.md, \"Sending files\").",
            "properties": {"payload": {"type": "object",
                                       "description": "the payload, a JSON object"}},
            "patternProperties": {"^upload(:.*)?$": {"type": "string", "format": "binary"}},
            "additionalProperties": False,
        },
        "encoding": {"payload": {"contentType": "application/json"}},
    }},
}

_INVOKE_RESPONSES: dict[int | str, dict[str, Any]] = {
    202: {"model": Accepted, "headers": RUN_ID_HEADER, "links": _RUN_LINKS,
          "description": "The run is recorded: queued, or already started."},
    200: {"model": Completed, "headers": RUN_ID_HEADER, "links": _RUN_LINKS,
          "description": "`?wait=result`: the run completed; `result` is what `run(ctx)` "
                         "returned. With `Accept: text/event-stream`: " + SSE_RESPONSE["text"],
          "content": {"text/event-stream": SSE_RESPONSE["content"]}},
    **documented(400, 401, 404, 413, 415, 429, _400=(
        "`invalid_json` (the body is not JSON), `invalid_payload` (not an object), "
        "`invalid_parameter` (`wait`, `Idempotency-Key`; `details` lists them; a multipart "
        "body that cannot be read, an unknown part, a DEST outside the workspace), "
        "`upload_refused` (an archive part that is unsafe, too large or unreadable: the "
        "message names the part, the member and why), `config_error`"),
        _404="`not_found`: no workflow of that name (the message lists them), or no run "
             "`uploads_from` names",
        _413="`payload_too_large`: the body (or a multipart `payload` part) is over "
             "PYFLUE_MAX_BODY_BYTES, or an archive part is over PYFLUE_SANDBOX_COPY_MAX_BYTES"),
    # A run that did not complete, answering ?wait=result (its run id in body and header).
    **{status: entry | {"headers": _RUN_ID_IF_RUN} for status, entry in documented(
        409, 500, 503, 504,
        _409="`?wait=result` and the run was cancelled: `error.type` `cancelled`, with `run_id` "
             "and `status`",
        _500="`?wait=result` and the run failed: `error.type` is the workflow's exception class "
             "name (or a pyflue error type), `details` its traceback (only when the server runs "
             "with PYFLUE_DEBUG=1, else null), with `run_id` and "
             "`status`; or `workflow_load_error`, `internal_error`",
        _503="`?wait=result` and the run was interrupted (its server stopped): `error.type` "
             "`interrupted`, with `run_id` and `status`; or `store_error`, `engine_unavailable`",
        _504="`?wait=result` and the run passed its deadline: `error.type` `timed_out`, with "
             "`run_id` and `status`",
    ).items()},
}


@router.get("/workflows", operation_id="list_workflows", summary="List the workflows",
            responses=documented(401, 500, 503))
async def list_workflows(request: Request) -> WorkflowList:
    """The workflows the server discovered; `error` says why one cannot be loaded."""
    found = deps.scheduler(request).runner.registry.summaries()
    debug = deps.settings(request).server.debug
    return WorkflowList(workflows=[WorkflowInfo(name=w.name, description=w.description,
                                                error=w.error if debug else w.public_error)
                                   for w in found])


async def read_body(request: Request, limit: int) -> bytes:
    """The request's body, refused with 413 as soon as it is over ``limit`` bytes."""
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
    return bytes(body)


def parse_payload(body: bytes, content_type: str) -> dict[str, Any]:
    """The payload of an invocation: the JSON body, or its ``payload`` member."""
    if not body.strip():
        return {}
    kind = content_type.split(";")[0].strip().lower()
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


def replayed(request: Request, body: bytes) -> Request:
    """A request like ``request`` whose body reads as ``body`` again, for the workflow's
    ``ctx.req.body()`` / ``.json()`` after the route has consumed the stream; after the body,
    it receives what the connection receives (so ``is_disconnected()`` still tells)."""
    pending: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> Message:
        return pending.pop() if pending else await request.receive()

    return Request(request.scope, receive)


@router.post("/workflows/{name}", status_code=202, response_model=None,
             responses=_INVOKE_RESPONSES, openapi_extra={"requestBody": _BODY},
             operation_id="invoke", summary="Invoke a workflow")
async def invoke(
    name: str,
    request: Request,
    caller: CallerDep,
    wait: Annotated[Literal["result"] | None, Query(
        description="`result`: hold the request until the run ends and answer with its "
                    "outcome")] = None,
    idempotency_key: Annotated[str | None, Header(
        alias="Idempotency-Key", max_length=300,
        description="a second invocation of the workflow with the same key starts nothing "
                    "and answers about the first one's run")
    ] = None,
    uploads_from: Annotated[str | None, Query(
        description="the id of an earlier run whose uploads this run gets too (a rerun "
                    "sends the same files); 404 when no run has it")] = None,
) -> Response:
    """Start a run of the workflow. 202 at once; `?wait=result` answers with the outcome;
    `Accept: text/event-stream` streams the run's events instead."""
    settings = deps.settings(request)
    scheduler = deps.scheduler(request)
    scheduler.runner.registry.get(name)  # 404 before an upload is read
    if uploads_from is not None:
        # 404 for a run that is not here, or that is another tenant's (its files are theirs)
        await auth.load_run(scheduler.store, uploads_from, caller)
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() == "multipart/form-data":
        async with multipart.received(request, spool=settings.spool_dir,
                                      max_json=settings.server.max_body_bytes,
                                      limits=settings.sandbox.copy_limits) as got:
            payload = parse_payload(got.payload, "application/json")
            run, _new = await scheduler.submit(
                name, payload, req=replayed(request, got.payload),
                idempotency_key=idempotency_key, uploads=got.uploads,
                uploads_from=uploads_from, traceparent=request.headers.get("traceparent"),
                tenant=caller.tenant, requested_by=caller.name)
    else:
        body = await read_body(request, settings.server.max_body_bytes)
        payload = parse_payload(body, content_type)
        run, _new = await scheduler.submit(name, payload, req=replayed(request, body),
                                           idempotency_key=idempotency_key,
                                           uploads_from=uploads_from,
                                           traceparent=request.headers.get("traceparent"),
                                           tenant=caller.tenant, requested_by=caller.name)
    headers = {"X-Flue-Run-Id": run.run_id}
    if "text/event-stream" in request.headers.get("accept", ""):
        stream = event_stream(scheduler.store, run.run_id, after=0,
                              heartbeat=settings.server.heartbeat_seconds,
                              debug=settings.server.debug)
        return EventStreamResponse(stream, send_timeout=settings.server.ws_send_timeout,
                                   headers={**headers, "Cache-Control": "no-cache"})
    if wait == "result":
        final = await scheduler.wait(run.run_id)
        return _result_response(final, headers, debug=settings.server.debug)
    return JSONResponse(Accepted(run_id=run.run_id).model_dump(mode="json"), 202,
                        headers=headers)


def _result_response(run: Run, headers: dict[str, str], *, debug: bool) -> JSONResponse:
    if run.status is RunStatus.completed:
        body = Completed(run_id=run.run_id, result=run.result)
        return JSONResponse(body.model_dump(mode="json"), 200, headers=headers)
    error = end_error(run.status, run.error, run.reason)
    assert error is not None  # only a completed run has none
    # The traceback of the workflow's code is for the server's log and `pyflue logs`, not for
    # every API client (PYFLUE_DEBUG=1 shows it).
    return reply(error_body(error.type, public_message(error, debug),
                            error.details if debug else None,
                            run_id=run.run_id,
                            status=run.status), FINISHED_STATUS.get(run.status, 500), headers)
