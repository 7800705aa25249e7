"""Server-sent events: one frame per run event, heartbeat comments while idle."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from pyflue.api.operator import public_event
from pyflue.events import Event
from pyflue.store.base import RunStore

_END = object()

# Stands for the event JSON schema in the document; pyflue.api.openapi puts the document's own
# event schema (the items of EventPage.events) in its place.
EVENT_SCHEMA: dict[str, Any] = {"x-pyflue-event": True}

# How an SSE answer is documented. Before OpenAPI 3.2 (`itemSchema`), the `schema` of a
# text/event-stream describes one event, as tools (Schemathesis, FastAPI's own) read it.
SSE_RESPONSE: dict[str, Any] = {
    "text": "a stream of server-sent events: a comment naming the run, then one frame per "
            "stored event (`id: <event_index>`, `event: <type>`, `data: <event JSON>`, a blank "
            "line) until `run_end`, with a `: keep-alive` comment every "
            "PYFLUE_HEARTBEAT_SECONDS while idle.",
    "content": {
        "schema": {
            "type": "object",
            "description": "one frame",
            "required": ["id", "event", "data"],
            "properties": {
                "id": {"type": "string", "pattern": "^[0-9]+$",
                       "description": "the event's event_index"},
                "event": {"type": "string", "description": "the event's type"},
                "data": {"type": "string", "contentMediaType": "application/json",
                         "contentSchema": EVENT_SCHEMA, "description": "the event JSON"},
            },
        },
        "example": ": stream of workflow:hello:01M8ASTXTS27GXX88XFYWA4J2S\n\n"
                   "id: 1\nevent: run_start\ndata: {\"run_id\": \"workflow:hello:"
                   "01M8ASTXTS27GXX88XFYWA4J2S\", \"event_index\": 1, \"type\": "
                   "\"run_start\", ...}\n\n",
    },
}


def frame(event: Event, debug: bool = False) -> bytes:
    sent = public_event(event, debug)
    return (f"id: {event.event_index}\nevent: {event.type}\n"
            f"data: {sent.model_dump_json()}\n\n").encode()


async def event_stream(store: RunStore, run_id: str, *, after: int, heartbeat: float,
                       debug: bool = False) -> AsyncIterator[bytes]:
    """Replays events after ``after``, then follows live until ``run_end``.

    Each event is sent only after it was stored, so a client resuming with ``Last-Event-ID``
    misses nothing and sees nothing twice.
    """
    queue: asyncio.Queue[object] = asyncio.Queue(maxsize=1000)

    async def pump() -> None:
        try:
            async for event in store.subscribe(run_id, after=after):
                await queue.put(event)
        finally:
            await queue.put(_END)

    task = asyncio.create_task(pump())
    try:
        yield b": stream of " + run_id.encode() + b"\n\n"
        while True:
            try:
                async with asyncio.timeout(heartbeat):
                    item = await queue.get()
            except TimeoutError:
                yield b": keep-alive\n\n"
                continue
            if item is _END:
                if task.done() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
                return
            assert isinstance(item, Event)
            yield frame(item, debug)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
