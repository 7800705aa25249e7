"""The thread bridge's pump: a stream is read ahead by a bounded window only."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

from pyflue._bridge import ThreadBridge


async def test_a_stream_nobody_reads_is_read_ahead_by_the_window_only() -> None:
    bridge = ThreadBridge(max_workers=1)
    produced: list[int] = []
    done = asyncio.Event()
    loop = asyncio.get_running_loop()

    def source() -> Iterator[int]:
        for i in range(1000):
            produced.append(i)
            yield i
        loop.call_soon_threadsafe(done.set)

    stream = bridge.pump(source(), window=8)
    assert await stream.__anext__() == 0
    await asyncio.sleep(0.2)  # give the thread every chance to run ahead
    assert len(produced) <= 8 + 2  # the window, the one handed out, the one waiting for room
    await stream.aclose()  # the reader stops: the thread drains the rest and keeps nothing
    await asyncio.wait_for(done.wait(), 5)
    assert len(produced) == 1000
    bridge.shutdown()


async def test_every_item_arrives_in_order_through_a_small_window() -> None:
    bridge = ThreadBridge(max_workers=1)
    assert [x async for x in bridge.pump(iter(range(500)), window=3)] == list(range(500))
    bridge.shutdown()
