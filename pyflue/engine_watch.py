"""Whether the sandbox engine answers, learnt from failures and pings, and told to subscribers.

The scheduler admits no run while the engine is down (runs stay queued, for a worker whose
engine answers), ``/health`` answers 503, and subscribers (the warm pool) hear of every change.
The watch knows the engine only through a ``ping`` coroutine (the Docker provider's), so the
core never imports docker:

- it is told of failures: :meth:`EngineWatch.failed` (a run that ended ``engine_unavailable``,
  a reaper pass that could not reach the engine) marks it down at once;
- it pings: every ``down_interval`` seconds while down (to see it come back), every
  ``up_interval`` while up (to notice a death while nothing runs).

Subscribers are coroutines taking the new :class:`EngineState`, called in order of the changes
(down, then up, ...) one at a time, from one task; a failing subscriber is logged and skipped.
Everything here runs on the event loop (call :meth:`EngineWatch.failed` from it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

from pyflue.models import utcnow

log = logging.getLogger(__name__)

Ping = Callable[[], Awaitable[None]]
Listener = Callable[["EngineState"], Awaitable[None]]


@dataclass(frozen=True)
class EngineState:
    """The engine as last seen: ``up``, since when (UTC), and why it is down."""

    up: bool
    since: datetime
    engine: str  # where it is, for messages (e.g. unix:///var/run/docker.sock)
    reason: str | None = None  # the last failure seen while down


class EngineWatch:
    """Up or down, for one engine. :meth:`start` pings once (a server started while the engine
    is down says so at once) and then keeps pinging until :meth:`stop`."""

    def __init__(self, ping: Ping, *, engine: str, up_interval: float = 5.0,
                 down_interval: float = 1.0, ping_timeout: float = 10.0) -> None:
        self._ping = ping
        self.up_interval, self.down_interval = up_interval, down_interval
        self.ping_timeout = ping_timeout
        self._state = EngineState(up=True, since=utcnow(), engine=engine)
        self._down_at = 0.0  # monotonic, when it went down
        self._listeners: list[Listener] = []
        self._changes: asyncio.Queue[EngineState] = asyncio.Queue()
        self._poke = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def state(self) -> EngineState:
        return self._state

    @property
    def up(self) -> bool:
        return self._state.up

    def down_for(self) -> float:
        """Seconds the engine has been down (0 while up)."""
        return 0.0 if self._state.up else time.monotonic() - self._down_at

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Calls ``listener(state)`` on every change from now on; returns the unsubscriber."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def failed(self, reason: str) -> None:
        """The engine failed a call (``engine_unavailable``): down now; a ping says when it is
        back."""
        self._set(False, reason)
        self._poke.set()

    async def check(self) -> EngineState:
        """Pings the engine now and returns the state that follows."""
        try:
            async with asyncio.timeout(self.ping_timeout):
                await self._ping()
        except TimeoutError:
            self._set(False, f"the engine did not answer a ping within {self.ping_timeout:g} s")
        except Exception as exc:  # EngineUnavailable, or any other way of not answering
            self._set(False, _why(exc))
        else:
            self._set(True, None)
        return self._state

    async def start(self) -> None:
        await self.check()
        self._tasks = [asyncio.create_task(self._ping_loop(), name="pyflue-engine-watch"),
                       asyncio.create_task(self._tell_loop(), name="pyflue-engine-tell")]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    def _set(self, up: bool, reason: str | None) -> None:
        if up == self._state.up:
            if not up and reason:  # still down: keep the latest reason
                self._state = EngineState(False, self._state.since, self._state.engine, reason)
            return
        self._state = EngineState(up, utcnow(), self._state.engine, reason)
        if up:
            log.warning("the sandbox engine at %s answers again: admitting runs",
                        self._state.engine)
        else:
            self._down_at = time.monotonic()
            log.warning("the sandbox engine at %s does not answer (%s): runs stay queued until "
                        "it does", self._state.engine, reason)
        self._changes.put_nowait(self._state)

    async def _ping_loop(self) -> None:
        while True:
            interval = self.up_interval if self._state.up else self.down_interval
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._poke.wait()
                    await asyncio.sleep(self.down_interval)  # told of a failure: ping soon
            self._poke.clear()
            await self.check()

    async def _tell_loop(self) -> None:
        while True:
            state = await self._changes.get()
            for listener in list(self._listeners):
                try:
                    await listener(state)
                except Exception:
                    log.exception("an engine watch subscriber failed on %s",
                                  "up" if state.up else "down")


def _why(exc: BaseException) -> str:
    """The first line of what went wrong underneath (the SDK's or the socket's own words),
    else of the error itself."""
    text = str(exc.__cause__ or getattr(exc, "public_message", None) or exc).strip()
    return (text.splitlines()[0][:300] if text else "") or type(exc).__name__
