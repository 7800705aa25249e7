"""``FlueContext``: what a workflow's ``run(ctx)`` receives."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from pydantic_core import to_jsonable_python

if TYPE_CHECKING:
    from pyflue.agents import Agent
    from pyflue.harness import Harness
    from pyflue.recorder import RunRecorder


class RunLog:
    """``ctx.log``: structured lines stored as ``log`` events with the run.

    Safe to call from a synchronous workflow running on a worker thread.
    """

    def __init__(self, recorder: RunRecorder) -> None:
        self._recorder = recorder
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()

    def _emit(self, level: str, message: str, fields: dict[str, Any]) -> None:
        from pyflue.events import Log  # not at import: `import pyflue` stays cheap

        line = Log(level=level, message=str(message),
                   fields=to_jsonable_python(fields, fallback=repr))
        if threading.get_ident() == self._thread:
            self._recorder.emit(line)
        else:
            self._loop.call_soon_threadsafe(self._recorder.emit, line)

    def info(self, message: str, **fields: Any) -> None:
        self._emit("info", message, fields)

    def warn(self, message: str, **fields: Any) -> None:
        self._emit("warn", message, fields)

    warning = warn

    def error(self, message: str, **fields: Any) -> None:
        self._emit("error", message, fields)


class FlueContext:
    """The invocation: ``id`` (the run id), ``payload``, ``env``, ``req``, ``log``, ``init``;
    ``attempt`` is 1, or which attempt of a requeued run this is (``retry_interrupted``)."""

    def __init__(
        self,
        *,
        id: str,
        payload: dict[str, Any],
        env: Mapping[str, str],
        req: Any,
        log: RunLog,
        init: Callable[[Agent, FlueContext], Awaitable[Harness]],
        attempt: int = 1,
    ) -> None:
        self.id = id
        self.attempt = attempt
        self.payload = payload
        self.env = dict(env)
        self.req = req
        self.log = log
        self._init = init

    async def init(self, agent: Agent) -> Harness:
        """Initializes ``agent`` for this run and returns its harness over the run's container.

        The run's container is created on the first call; later calls share it.
        """
        return await self._init(agent, self)

    def __repr__(self) -> str:
        return f"FlueContext(id={self.id!r})"
