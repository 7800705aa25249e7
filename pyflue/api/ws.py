"""WebSocket routes: one-shot invocation and following a run's events.

Frames are JSON text. Server to client: run events (the event JSON), then for an invocation
``{"type": "result", "run_id", "result"}`` or ``{"type": "error", "run_id", "error"}``.
Close codes: 1000 done; 4400 bad first message (or an ``?after=`` past the run's last event);
4401 unauthorized; 4404 unknown workflow or run (or another tenant's run); 4408 the client
fell too far behind (reconnect with ``?after=``); 4413 a first message over
``PYFLUE_MAX_BODY_BYTES`` (under ``pyflue serve`` refused before it is read in full, see
:mod:`pyflue.api.serving`); 1011 server error.

Each socket reads from the store through a small bounded queue (the store is the buffer), so a
slow reader never makes the server hold unbounded memory and never slows the run or the other
readers. A reader whose socket stays blocked for ``ws_send_timeout`` seconds has fallen too far
behind: it is closed with 4408 and the index to resume from.

The token is checked before a handler runs, by the app's own dependency (see
:mod:`pyflue.api.auth`: a header, the subprotocol ``pyflue.token.<token>``, or ``?token=``);
a handler takes the caller as ``caller: CallerDep``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from pyflue.api import auth
from pyflue.api.auth import CallerDep
from pyflue.api.operator import public_error, public_event
from pyflue.errors import ConfigError, InvalidPayload, PyflueError, RunNotFound, WorkflowNotFound
from pyflue.events import Event, EventType
from pyflue.models import Run, RunStatus, check_payload, end_error
from pyflue.scheduler import Scheduler
from pyflue.settings import Settings
from pyflue.status import MAX_EVENT_INDEX, parse_event_index, past_the_end

router = APIRouter()

CLOSE_DONE, CLOSE_BAD_MESSAGE, CLOSE_UNAUTHORIZED = 1000, 4400, 4401
CLOSE_NOT_FOUND, CLOSE_TOO_SLOW, CLOSE_TOO_LARGE, CLOSE_ERROR = 4404, 4408, 4413, 1011
FIRST_MESSAGE_TIMEOUT = 30.0


def too_large_message(limit: int) -> str:
    return (f"the message is over the limit of {limit} bytes (PYFLUE_MAX_BODY_BYTES on the "
            "server): send a smaller payload, or put large inputs in files the workflow fetches")


def _said(ws: WebSocket, exc: PyflueError) -> str:
    """An error's message for the client: without what is meant for the server's operator (a
    ``pyflue`` command, a server path) unless the server runs in debug mode, as over HTTP."""
    return exc.message if _settings(ws).server.debug else exc.public_message


def _settings(ws: WebSocket) -> Settings:
    settings: Settings = ws.app.state.settings
    return settings


def _scheduler(ws: WebSocket) -> Scheduler:
    scheduler: Scheduler = ws.app.state.scheduler
    return scheduler


async def _open(ws: WebSocket) -> None:
    """Accepts the socket (its token was checked already: pyflue.api.auth)."""
    await ws.accept(subprotocol=auth.subprotocol(ws))


async def _error_and_close(ws: WebSocket, code: int, kind: str, message: str,
                           run_id: str | None = None) -> None:
    frame: dict[str, Any] = {"type": "error", "error": {"type": kind, "message": message,
                                                        "details": None}}
    if run_id is not None:
        frame["run_id"] = run_id
    with contextlib.suppress(Exception):
        await ws.send_text(json.dumps(frame))
        await ws.close(code, message[:120])


@router.websocket("/workflows/{name}")
async def invoke(ws: WebSocket, name: str, caller: CallerDep) -> None:
    await _open(ws)
    scheduler = _scheduler(ws)
    try:
        async with asyncio.timeout(FIRST_MESSAGE_TIMEOUT):
            raw = await ws.receive_text()
        limit = _settings(ws).server.max_body_bytes
        if len(raw.encode()) > limit:  # another ASGI server than `pyflue serve` let it through
            return await _error_and_close(ws, CLOSE_TOO_LARGE, "payload_too_large",
                                          too_large_message(limit))
        payload = _payload(raw)
    except TimeoutError:
        return await _error_and_close(ws, CLOSE_BAD_MESSAGE, "invalid_message",
                                      'expected a first message {"payload": {...}} within '
                                      f"{FIRST_MESSAGE_TIMEOUT:g} s")
    except PyflueError as exc:
        return await _error_and_close(ws, CLOSE_BAD_MESSAGE, exc.type, _said(ws, exc))
    except ValueError as exc:
        return await _error_and_close(ws, CLOSE_BAD_MESSAGE, "invalid_message", str(exc))
    except WebSocketDisconnect:
        return
    try:
        run, _new = await scheduler.submit(name, payload, source="websocket",
                                           traceparent=ws.headers.get("traceparent"),
                                           tenant=caller.tenant, requested_by=caller.name)
    except WorkflowNotFound as exc:
        return await _error_and_close(ws, CLOSE_NOT_FOUND, "not_found", _said(ws, exc))
    except (InvalidPayload, ConfigError) as exc:
        return await _error_and_close(ws, CLOSE_BAD_MESSAGE, exc.type, _said(ws, exc))
    except PyflueError as exc:  # a broken module, the store: the server's fault, not the client's
        return await _error_and_close(ws, CLOSE_ERROR, exc.type, _said(ws, exc))
    if await _relay(ws, scheduler, run.run_id, 0):
        final = await scheduler.store.get_run(run.run_id)
        with contextlib.suppress(Exception):
            await ws.send_text(json.dumps(_outcome(final, _settings(ws).server.debug)))
            await ws.close(CLOSE_DONE, final.status.value)


def _payload(raw: str) -> dict[str, Any]:
    try:
        message = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f'the first message is not JSON ({exc.msg}); send {{"payload": '
                         "{...}}") from None
    if not isinstance(message, dict) or "payload" not in message:
        raise ValueError('expected a JSON object {"payload": {...}} as the first message')
    return check_payload(message["payload"])


def _outcome(run: Run, debug: bool) -> dict[str, Any]:
    if run.status is RunStatus.completed:
        return {"type": "result", "run_id": run.run_id, "result": run.result}
    error = public_error(end_error(run.status, run.error, run.reason), debug)
    return {"type": "error", "run_id": run.run_id, "status": run.status.value,
            "error": error.model_dump() if error is not None else None}


@router.websocket("/runs/{run_id}/stream")
async def follow(ws: WebSocket, run_id: str, caller: CallerDep) -> None:
    await _open(ws)
    after = parse_event_index(ws.query_params.get("after", "0"))
    if after is None:
        return await _error_and_close(ws, CLOSE_BAD_MESSAGE, "invalid_parameter",
                                      "query parameter 'after' must be an event index (an "
                                      f"integer from 0 to {MAX_EVENT_INDEX})")
    scheduler = _scheduler(ws)
    try:
        run = await auth.load_run(scheduler.store, run_id, caller)
    except RunNotFound as exc:
        return await _error_and_close(ws, CLOSE_NOT_FOUND, "not_found", _said(ws, exc))
    if problem := past_the_end(run.run_id, run.event_count, after):
        return await _error_and_close(ws, CLOSE_BAD_MESSAGE, "invalid_parameter",
                                      f"query parameter 'after': {problem}", run_id)
    if await _relay(ws, scheduler, run_id, after):
        with contextlib.suppress(Exception):
            await ws.close(CLOSE_DONE, "run_end")


async def _relay(ws: WebSocket, scheduler: Scheduler, run_id: str, after: int) -> bool:
    """Sends the run's events after ``after`` until run_end. False when the socket is gone or
    was closed for being too slow."""
    server = _settings(ws).server
    # The store is the buffer: the producer waits while the queue is full, so a socket holds
    # at most this queue plus the transport's own bounded write buffer.
    queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=server.ws_queue_events)
    last_sent = after

    async def produce() -> None:
        async for event in scheduler.store.subscribe(run_id, after=after):
            await queue.put(event)
            if event.type is EventType.run_end:
                return

    producer = asyncio.create_task(produce())
    try:
        while True:
            if producer.done() and producer.exception() is not None:
                raise producer.exception()  # type: ignore[misc]
            if queue.empty():
                if producer.done():
                    return True
                getter = asyncio.ensure_future(queue.get())
                await asyncio.wait({getter, producer}, return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    getter.cancel()
                    continue
                item = getter.result()
            else:
                item = queue.get_nowait()
            try:
                # A send blocks once the client stops reading and the transport's buffer is
                # full: a reader that stalls this long has fallen too far behind.
                async with asyncio.timeout(server.ws_send_timeout):
                    await ws.send_text(public_event(item, server.debug).model_dump_json())
            except TimeoutError:
                # The close frame queues behind what the reader has not read yet: give it a
                # while to get through (memory stays bounded meanwhile), then drop the socket.
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(max(30.0, 3 * server.ws_send_timeout)):
                        await ws.close(CLOSE_TOO_SLOW,
                                       f"too slow: reconnect with ?after={last_sent}")
                return False
            last_sent = item.event_index
    except (WebSocketDisconnect, RuntimeError, OSError):
        return False  # the client went away; the run goes on
    finally:
        producer.cancel()
        with contextlib.suppress(BaseException):
            await producer
