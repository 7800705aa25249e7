"""The run recorder: the one way runtime code emits a run's events.

``emit`` never blocks the caller (``ctx.log.info`` is synchronous, and a shell call must not
wait on the database); a single writer task per run stores events in order, in batches, with
their gap-free indexes, a few milliseconds after they are emitted (LINGER_SECONDS), so that
what a short call emits is stored in one write. Subscribers see an event only after it is
stored. ``flush`` waits until everything emitted so far is stored (at once, without the
linger); ``close`` flushes and stops the writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Coroutine, Generator
from typing import Any

from pydantic_core import to_jsonable_python

from pyflue.events import Event, EventData, Log, SandboxLimit
from pyflue.models import utcnow
from pyflue.observe import RunWatch
from pyflue.secrets import Redactor
from pyflue.store.base import NewEvent, RunStore

log = logging.getLogger(__name__)

BATCH = 500
# The writer waits this long after the first new event before storing (unless someone
# flushes): a short command's `shell_start` and `shell_end` go in one write, made after the
# command rather than beside it, where it took the CPUs the command needed (measured: 1 ms
# more per `harness.shell("true")` on 2 vCPUs; docs/performance.md).
LINGER_SECONDS = 0.005

Listener = Callable[[Event], None]


class RunRecorder:
    def __init__(self, store: RunStore, run_id: str, watch: RunWatch | None = None) -> None:
        self.store = store
        self.run_id = run_id
        self.watch = watch  # told of every event emitted and every write (pyflue.observe)
        self._pending: list[NewEvent] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._flushing = 0
        self._flush_asked = asyncio.Event()
        self._closed = False
        self._ids: dict[str, int] = {}
        self.redactor = Redactor()  # secrets granted to the run never reach the store
        self.limit_reasons: list[str] = []
        self._error: BaseException | None = None
        self._writer = asyncio.create_task(self._write_loop(), name=f"recorder:{run_id}")

    def emit(self, data: EventData) -> None:
        """Queues one event (its payload model says its type); stored in emission order."""
        if self._closed:
            raise RuntimeError(f"recorder for {self.run_id} is closed")
        stored = self.stored(data)
        self._pending.append(stored)
        if self.watch is not None:
            self.watch.event(data, stored.data, stored.timestamp)
        self._idle.clear()
        self._wake.set()

    def stored(self, data: EventData) -> NewEvent:
        """The event of ``data`` as it may be stored: timestamped, the run's secrets redacted
        (its structure kept, so it is still a valid payload)."""
        clean = data.scrubbed(self.redactor.data) if self.redactor else data.wire
        return NewEvent(type=data.type, data=clean, timestamp=utcnow())

    def note_limit(self, kind: str, shell_id: str, message: str) -> None:
        """Records that the sandbox hit a limit (memory, pids): an event, and the run's reason."""
        self.emit(SandboxLimit(kind=kind, shell_id=shell_id, message=message))
        self.limit_reasons.append(message)

    def next_id(self, prefix: str) -> str:
        """A per-run sequence id such as ``sh-3``, to tie related events together."""
        self._ids[prefix] = self._ids.get(prefix, 0) + 1
        return f"{prefix}-{self._ids[prefix]}"

    async def flush(self) -> None:
        """Waits until every event emitted so far is stored; re-raises a store failure."""
        self._flushing += 1
        self._flush_asked.set()
        try:
            await self._idle.wait()
        finally:
            self._flushing -= 1
            if not self._flushing:
                self._flush_asked.clear()
        if self._error is not None:
            raise self._error

    async def close(self) -> None:
        try:
            await self.flush()
        finally:
            self._closed = True
            self._writer.cancel()
            try:
                await self._writer
            except asyncio.CancelledError:
                pass

    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            if not self._flushing:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(LINGER_SECONDS):
                        await self._flush_asked.wait()
            self._wake.clear()
            while self._pending:
                batch, self._pending = self._pending[:BATCH], self._pending[BATCH:]
                try:
                    started = time.perf_counter()
                    await self.store.append_events(self.run_id, batch)
                    if self.watch is not None:
                        self.watch.store_write("append_events", time.perf_counter() - started)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # surfaced by flush(); the run's end reports it
                    log.exception("storing events for %s failed", self.run_id)
                    self._error = exc
            if not self._pending:
                self._idle.set()


class Logged(Coroutine[Any, Any, None]):
    """What ``ctx.log.info(...)`` returns: the line is already recorded; awaiting this (as
    PyFlue 0.2 workflows do, ``await ctx.log.info(...)``) returns None at once. A coroutine that
    is already finished, so ``asyncio.run``, ``create_task`` and ``gather`` take it too, and
    leaving it unawaited (the plain call) warns about nothing."""

    __slots__ = ()

    def send(self, value: Any) -> Any:
        raise StopIteration

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        raise typ if val is None else val

    def close(self) -> None:
        pass

    def __await__(self) -> Generator[Any, None, None]:
        return
        yield  # a generator that finishes at once: `await` never suspends

    def __repr__(self) -> str:
        return "Logged()"


LOGGED = Logged()


class RunLog:
    """``ctx.log``: structured lines stored as ``log`` events with the run.

    Each method records the line when called and returns an awaitable that is already done,
    so both ``ctx.log.info(...)`` and PyFlue 0.2's ``await ctx.log.info(...)`` work. Safe to
    call from a synchronous workflow running on a worker thread.
    """

    def __init__(self, recorder: RunRecorder) -> None:
        self._recorder = recorder
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()

    def _emit(self, level: str, message: str, fields: dict[str, Any]) -> Logged:
        line = Log(level=level, message=str(message),
                   fields=to_jsonable_python(fields, fallback=repr))
        if threading.get_ident() == self._thread:
            self._recorder.emit(line)
        else:
            self._loop.call_soon_threadsafe(self._recorder.emit, line)
        return LOGGED

    def info(self, message: str, **fields: Any) -> Logged:
        """Records an ``info`` line with ``fields`` (values that are not JSON are stored as
        their repr)."""
        return self._emit("info", message, fields)

    def warn(self, message: str, **fields: Any) -> Logged:
        """Records a ``warn`` line."""
        return self._emit("warn", message, fields)

    warning = warn

    def error(self, message: str, **fields: Any) -> Logged:
        """Records an ``error`` line."""
        return self._emit("error", message, fields)
