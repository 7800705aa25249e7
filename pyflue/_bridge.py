"""The one bridge between async code and blocking SDKs (the Docker SDK).

``call`` runs a blocking function on a dedicated, bounded thread pool (not the loop's default
executor, which a few dozen concurrent runs would starve). ``pump`` reads a blocking iterator on
a thread of its own and hands each item to the loop, so a long-running stream never holds a pool
thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, TypeVar

T = TypeVar("T")

_DONE = object()
PUMP_WINDOW = 64  # items of one stream waiting for the loop, at most


class ThreadBridge:
    def __init__(self, max_workers: int = 64, name: str = "pyflue-docker") -> None:
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=name)
        self._name = name

    async def call(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, partial(fn, *args, **kwargs))

    async def pump(self, source: Iterator[T], *, window: int = PUMP_WINDOW) -> AsyncIterator[T]:
        """Yields the items of a blocking iterator; the iterator runs on its own thread.

        At most ``window`` items wait for the loop at once: past that the thread stops
        reading, so the engine's stream (and the command writing it) waits, and the memory a
        stream can take here is bounded (``docker exec`` frames are at most 1 MiB each). The
        caller is still the one place that decides what to keep (shell output is capped
        there); a caller that stops reading releases the thread, which drops what follows.
        """
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        room = threading.Semaphore(window)
        closed = threading.Event()

        def hand(item: Any) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                closed.set()

        def reader() -> None:
            try:
                for item in source:
                    if not closed.is_set():
                        room.acquire()
                    if closed.is_set():
                        continue  # nobody reads any more: drain the source, keep nothing
                    hand(item)
                hand(_DONE)
            except BaseException as exc:  # handed to the async side, raised there
                hand(_Failure(exc))

        threading.Thread(target=reader, name=f"{self._name}-stream", daemon=True).start()
        try:
            while True:
                item = await queue.get()
                if item is _DONE:
                    return
                if isinstance(item, _Failure):
                    raise item.exc
                room.release()
                yield item
        finally:
            closed.set()
            room.release(window + 1)  # a reader waiting for room goes on (and keeps nothing)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def stop(self) -> None:
        """Lets the calls handed over so far finish, then stops the threads."""
        await asyncio.to_thread(self._pool.shutdown, wait=True)


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


async def in_daemon_thread(fn: Callable[..., T], /, *args: Any) -> T:
    """Runs ``fn`` on a new daemon thread. Cancelling the await abandons the thread."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(setter: Callable[[Any], None], value: Any) -> None:
        if not future.done():
            setter(value)

    def target() -> None:
        try:
            result = fn(*args)
        except BaseException as exc:
            outcome: tuple[Callable[[Any], None], Any] = (future.set_exception, exc)
        else:
            outcome = (future.set_result, result)
        try:
            loop.call_soon_threadsafe(settle, *outcome)
        except RuntimeError:  # the loop is gone: nobody waits for this any more
            pass

    threading.Thread(target=target, name="pyflue-workflow", daemon=True).start()
    return await future


async def run_to_completion(coro: Coroutine[Any, Any, T]) -> T:
    """Runs cleanup to its end even if the caller is cancelled meanwhile, then re-cancels."""
    task = asyncio.ensure_future(coro)
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(task)
            break
        except asyncio.CancelledError:
            if task.done():
                raise
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    return result
