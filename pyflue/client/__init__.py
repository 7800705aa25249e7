"""The Python client of ``pyflue serve``: HTTP (:mod:`.http`), WebSocket (:mod:`.ws`) and the
errors both raise (:mod:`.errors`).

::

    async with PyFlueClient("http://127.0.0.1:2024", token=None) as client:
        body = await client.workflows.invoke("hello", {"name": "Ada"})   # waits for the result
        async for event in client.runs.stream(body["run_id"]):          # replays the events
            print(event.event_index, event.type)
"""

from __future__ import annotations

from pyflue.client.errors import (
    ApiError,
    AuthError,
    BadRequestError,
    ConflictError,
    NotFoundError,
    ServerError,
    ServerUnreachable,
)
from pyflue.client.http import PyFlueClient, RunPage, WorkflowInfo
from pyflue.client.ws import Outcome, WorkflowConnection

__all__ = [
    "ApiError",
    "AuthError",
    "BadRequestError",
    "ConflictError",
    "NotFoundError",
    "Outcome",
    "PyFlueClient",
    "RunPage",
    "ServerError",
    "ServerUnreachable",
    "WorkflowConnection",
    "WorkflowInfo",
]
