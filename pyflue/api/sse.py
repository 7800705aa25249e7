"""Server-sent events: one frame per run event, heartbeat comments while idle."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from pyflue.events import Event
from pyflue.store.base import RunStore

_END = object()


def frame(event: Event) -> bytes:
    return (f"id: {event.event_index}\nevent: {event.type}\n"
            f"data: {event.model_dump_json()}\n\n").encode()


async def event_stream(store: RunStore, run_id: str, *, after: int, heartbeat: float
                       ) -> AsyncIterator[bytes]:
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
            yield frame(item)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
