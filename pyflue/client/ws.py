"""The WebSocket side of :class:`pyflue.client.PyFlueClient` (see docs/websocket.md):
``client.workflows.connect(name)`` and ``client.runs.follow(run_id)``."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol
from urllib.parse import quote

import websockets
from pydantic import ValidationError
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake, WebSocketException

from pyflue.client.errors import (
    ApiError,
    AuthError,
    BadRequestError,
    NotFoundError,
    ServerUnreachable,
    unreadable_event,
)
from pyflue.errors import ConfigError, PyflueError
from pyflue.events import Event, EventType, parse_event


class PyFlueClient(Protocol):
    """What a socket needs of :class:`pyflue.client.PyFlueClient` (which imports this module)."""

    base_url: str
    auth_headers: dict[str, str]
    max_reconnects: int

# Close codes that mean "do not retry" (see pyflue.api.ws), and the HTTP status each matches.
_FINAL: dict[int, tuple[type[ApiError], int]] = {
    4400: (BadRequestError, 400), 4401: (AuthError, 401), 4404: (NotFoundError, 404),
    4413: (BadRequestError, 413),
}
# The same by the error frame's type, for a refusal read before the close arrived.
_KINDS: dict[str, int] = {
    "invalid_message": 4400, "invalid_payload": 4400, "invalid_parameter": 4400,
    "not_found": 4404, "payload_too_large": 4413,
}


@dataclass(frozen=True)
class Outcome:
    """The last frame of an invocation: ``type`` is ``result`` or ``error``."""

    type: str
    run_id: str | None
    result: Any = None
    error: dict[str, Any] | None = None
    status: str = "completed"

    @property
    def ok(self) -> bool:
        return self.type == "result"


def ws_url(client: PyFlueClient, path: str) -> str:
    base = client.base_url
    scheme = "wss://" if base.startswith("https://") else "ws://"
    return scheme + base.split("://", 1)[1] + path


def _headers(client: PyFlueClient) -> dict[str, str]:
    return dict(client.auth_headers)


async def _open(client: PyFlueClient, path: str) -> ClientConnection:
    url = ws_url(client, path)
    try:
        return await websockets.connect(url, additional_headers=_headers(client),
                                        max_size=16 * 2**20)
    except (OSError, InvalidHandshake, TimeoutError) as exc:
        raise ServerUnreachable(
            f"cannot open a WebSocket to {url} ({exc}): is `pyflue serve` running there?"
        ) from exc


def _refused(sock: ClientConnection, frame: dict[str, Any] | None) -> ApiError | None:
    """The typed error for a socket the server refused (by close code, else by error frame)."""
    error = (frame or {}).get("error")
    code = sock.close_code or (_KINDS.get(str(error.get("type"))) if isinstance(error, dict)
                               else None) or 0
    if code not in _FINAL:
        return None
    cls, status = _FINAL[code]
    if not isinstance(error, dict):
        error = {"type": "closed", "message": sock.close_reason or f"closed with {code}"}
    return cls(status, {"error": error})


def _event(sock: ClientConnection, frame: dict[str, Any]) -> Event:
    try:
        return parse_event(frame)
    except ValidationError as exc:
        raise unreadable_event(f"the WebSocket {sock.request.path if sock.request else ''}",
                               json.dumps(frame), exc) from None


class WorkflowConnection:
    """One invocation over ``WS /workflows/{name}``; use as ``async with``."""

    def __init__(self, client: PyFlueClient, name: str) -> None:
        self._client = client
        self._name = name
        self._sock: ClientConnection | None = None
        self.outcome: Outcome | None = None
        self.run_id: str | None = None

    async def __aenter__(self) -> WorkflowConnection:
        self._sock = await _open(self._client, f"/workflows/{quote(self._name, safe='')}")
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._sock is not None:
            with contextlib.suppress(WebSocketException, OSError):
                await self._sock.close()

    async def run(self, payload: dict[str, Any]) -> list[Event | Outcome]:
        """Sends the payload; returns every event, then the :class:`Outcome`."""
        return [message async for message in self.stream(payload)]

    async def stream(self, payload: dict[str, Any]) -> AsyncIterator[Event | Outcome]:
        """Sends the payload; yields each event as it arrives, then the :class:`Outcome`.
        The run does not stop if you stop reading: follow it again with ``runs.follow``."""
        if self._sock is None:
            raise ConfigError("use it inside `async with client.workflows.connect(name)`")
        if not isinstance(payload, dict):
            raise ConfigError(f"payload must be a dict, not {type(payload).__name__}")
        sock = self._sock
        frame: dict[str, Any] | None = None
        try:
            await sock.send(json.dumps({"payload": payload}))
            while True:
                frame = json.loads(await sock.recv())
                if frame.get("type") in ("result", "error"):
                    if "run_id" not in frame:  # refused before a run existed
                        raise await _refusal(sock, frame)
                    self.outcome = Outcome(frame["type"], frame.get("run_id"),
                                           frame.get("result"), frame.get("error"),
                                           frame.get("status", "completed"))
                    yield self.outcome
                    return
                event = _event(sock, frame)
                self.run_id = event.run_id
                yield event
        except (ConnectionClosed, WebSocketException, OSError):
            raise await _refusal(sock, frame) from None


async def _refusal(sock: ClientConnection, frame: dict[str, Any] | None) -> PyflueError:
    """Why the socket ended before the run's outcome: the server's refusal (AuthError,
    BadRequestError, NotFoundError) or ServerUnreachable."""
    refused = _refused(sock, frame)
    if refused is None:  # the close code may still be on its way
        with contextlib.suppress(WebSocketException, OSError, asyncio.TimeoutError):
            await asyncio.wait_for(sock.wait_closed(), 5)
        refused = _refused(sock, frame)
    if refused is not None:
        return refused
    run_id = (frame or {}).get("run_id")
    return ServerUnreachable(
        f"the WebSocket closed before the run's outcome ({sock.close_code} "
        f"{sock.close_reason or ''}); "
        + (f"follow it with runs.follow({run_id!r})" if run_id else "is the server still up?"))


async def follow(client: PyFlueClient, run_id: str, after: int) -> AsyncGenerator[Event, None]:
    """Events after ``after`` until ``run_end`` over ``WS /runs/{id}/stream``, reconnecting
    with the last index seen when the socket drops or is closed for reading too slowly."""
    last, failures = after, 0
    path = f"/runs/{quote(run_id, safe='')}/stream"
    while True:
        sock = await _open(client, f"{path}?after={last}")
        try:
            async for message in sock:
                frame = json.loads(message)
                if frame.get("type") == "error":
                    break  # the close code (4404, ...) says why
                event = _event(sock, frame)
                last, failures = event.event_index, 0
                yield event
                if event.type is EventType.run_end:
                    return
        except (ConnectionClosed, WebSocketException, OSError):
            pass
        finally:
            with contextlib.suppress(WebSocketException, OSError):
                await sock.close()
        refused = _refused(sock, None)
        if refused is not None:
            raise refused
        if sock.close_code == 1000:
            return  # the server says the run is over (nothing after `last`)
        failures += 1
        if failures > client.max_reconnects:
            raise ServerUnreachable(
                f"the WebSocket for {run_id} dropped {failures} times in a row (last close "
                f"{sock.close_code} {sock.close_reason or ''}); resume with after={last}")
        await asyncio.sleep(min(0.25 * 2 ** (failures - 1), 5.0))
