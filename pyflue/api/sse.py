"""Server-sent events: one frame per run event, heartbeat comments while idle.

Each stream reads from the store through a bounded queue (the store is the buffer), and every
send to the client may block at most ``PYFLUE_WS_SEND_TIMEOUT`` seconds (the WebSocket's
setting): a reader that stalls longer has fallen too far behind and its connection is dropped,
without slowing the run or the other readers; it resumes with ``Last-Event-ID``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import StreamingResponse
from starlette.types import Message, Send

from pyflue.api.operator import public_event
from pyflue.events import Event
from pyflue.store.base import RunStore

_END = object()
log = logging.getLogger(__name__)

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


class EventStreamResponse(StreamingResponse):
    """An SSE answer whose every send may block at most ``send_timeout`` seconds; past that
    the stream ends without its last chunk, so the server closes the connection (the client
    sees a cut stream, and resumes from the last ``id:`` it got)."""

    def __init__(self, content: AsyncIterator[bytes], *, send_timeout: float,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(content, media_type="text/event-stream", headers=headers)
        self.send_timeout = send_timeout

    async def stream_response(self, send: Send) -> None:
        async def timed(message: Message) -> None:
            async with asyncio.timeout(self.send_timeout):
                await send(message)

        try:
            await super().stream_response(timed)
        except TimeoutError:
            log.warning("an SSE reader stalled for %g s: its connection is dropped",
                        self.send_timeout)
            close = getattr(self.body_iterator, "aclose", None)
            if close is not None:
                await close()
