"""``PyFlueClient``: the HTTP API of ``pyflue serve`` from Python (async, on httpx).

::

    async with PyFlueClient("http://127.0.0.1:2024", token=None) as client:
        body = await client.workflows.invoke("hello", {"name": "Ada"})   # waits for the result
        async for event in client.runs.stream(body["run_id"]):          # replays the events
            print(event.event_index, event.type)

Answers are validated into the models of :mod:`pyflue.responses`, the ones the server declares
in its OpenAPI document. Methods that returned the JSON body as a dict still do (``invoke``,
``cancel``, ``health``: ``body["run_id"]`` keeps working), after checking it against its model
(:class:`~pyflue.responses.Completed` / :class:`~pyflue.responses.Accepted`,
:class:`~pyflue.responses.CancelAnswer`, :class:`~pyflue.responses.Health`); the others return
the models themselves.

Errors: :mod:`pyflue.client.errors`. WebSockets: :mod:`pyflue.client.ws`.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import functools
import hashlib
import os
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError

from pyflue.client.errors import (
    ApiError,
    ConflictError,
    ServerError,
    ServerUnreachable,
    error_from,
    unreadable_event,
)
from pyflue.client.uploads import Uploads, multipart_body
from pyflue.client.ws import WorkflowConnection, follow
from pyflue.events import AnyEvent, Event, EventType, parse_event_json
from pyflue.models import Artifact, Run, RunStatus
from pyflue.responses import (
    Accepted,
    ArtifactList,
    CancelAnswer,
    Completed,
    EventPage,
    Health,
    RunMetrics,
    RunPage,
    WorkflowInfo,
    WorkflowList,
)

DEFAULT_URL = "http://127.0.0.1:2024"
SSE = "text/event-stream"
EVENTS_PAGE = 1000

__all__ = ["PyFlueClient", "RunPage", "WorkflowInfo"]

M = TypeVar("M", bound=BaseModel)


class _EventPage(EventPage):
    """An :class:`EventPage` as a reader takes it: an event of a type a newer server added
    parses too (as :class:`pyflue.events.UnknownEvent`)."""

    events: builtins.list[AnyEvent]  # type: ignore[assignment]


def _iso(when: datetime | None) -> str | None:
    """A time as the API takes it: ISO 8601 with its offset (a naive time is UTC)."""
    if when is None:
        return None
    return (when.replace(tzinfo=UTC) if when.tzinfo is None else when).isoformat()


def _run_path(run_id: str, suffix: str = "") -> str:
    return f"/runs/{quote(run_id, safe=':')}{suffix}"


async def _sse_events(response: httpx.Response) -> AsyncGenerator[Event, None]:
    """Events from an SSE body: ``data:`` lines up to a blank line; ``:`` lines are comments.

    A frame cut off by a dropped connection is never yielded (it has no blank line yet).
    """
    data: list[str] = []
    async for line in response.aiter_lines():
        if not line:
            if data:
                frame = "\n".join(data)
                try:
                    yield parse_event_json(frame)
                except ValidationError as exc:
                    raise unreadable_event(str(response.request.url), frame, exc) from None
            data = []
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            if name == "data":
                data.append(value[1:] if value.startswith(" ") else value)


class PyFlueClient:
    """An async client for a pyflue server.

    ``token`` is sent as ``Authorization: Bearer <token>``. ``timeout`` bounds connecting and
    every read, except a ``wait=True`` invocation, which waits as long as the run takes; keep it
    above the server's SSE heartbeat (15 s) so a silent stream is noticed and resumed. A dropped
    stream is resumed ``max_reconnects`` times in a row. ``transport`` is handed to httpx (for
    tests: ``httpx.ASGITransport(app)``). Close it with ``aclose()`` or ``async with``.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        token: str | None = None,
        *,
        timeout: float | httpx.Timeout | None = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        max_reconnects: int = 5,
    ) -> None:
        from pyflue import __version__

        self.base_url = base_url.rstrip("/")
        self.max_reconnects = max_reconnects
        # Sent with every request and WebSocket handshake.
        self.auth_headers: dict[str, str] = {"Authorization": f"Bearer {token}"} if token else {}
        headers = {"User-Agent": f"pyflue-client/{__version__}", **self.auth_headers}
        self.timeout = timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout)
        self._http = httpx.AsyncClient(base_url=self.base_url, headers=headers,
                                      timeout=self.timeout, transport=transport)
        self.workflows = Workflows(self)
        self.runs = Runs(self)

    async def __aenter__(self) -> PyFlueClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def list_artifacts(self, run_id: str) -> builtins.list[Artifact]:
        """:meth:`Runs.list_artifacts`."""
        return await self.runs.list_artifacts(run_id)

    async def download_artifact(self, run_id: str, name: str,
                                dest: str | os.PathLike[str]) -> Path:
        """:meth:`Runs.download_artifact`."""
        return await self.runs.download_artifact(run_id, name, dest)

    async def health(self) -> dict[str, Any]:
        """``GET /health``: ``{"ok", "version", "running", "max_concurrency", "reason",
        "engine"}`` (a :class:`~pyflue.responses.Health`, as a dict). A server whose Docker
        engine does not answer (HTTP 503) gives its body too: ``ok`` false, and why in
        ``reason``."""
        try:
            response = await self._http.request("GET", "/health", timeout=self.timeout)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc
        try:
            body: dict[str, Any] = response.json()
        except ValueError:
            body = {}
        # An error, or a 503 that is not the server's own (a proxy's): raised as usual.
        if response.is_error and not (response.status_code == 503 and "ok" in body):
            raise error_from(response)
        if not body:
            raise self._invalid(response, "is not JSON", response.text[:200] or None)
        self._validated(Health, response, body)
        return body

    async def _answer(self, model: type[M], method: str, path: str, **kwargs: Any) -> M:
        """Sends one request; returns its body validated into ``model``."""
        return self._validated(model, *await self._exchange(method, path, **kwargs))

    async def _body(self, model: type[BaseModel], method: str, path: str, **kwargs: Any
                    ) -> dict[str, Any]:
        """Sends one request; returns its JSON body as it came, once it validates as ``model``
        (for the methods that have always returned the body as a dict)."""
        response, body = await self._exchange(method, path, **kwargs)
        self._validated(model, response, body)
        checked: dict[str, Any] = body
        return checked

    def _validated(self, model: type[M], response: httpx.Response, body: Any) -> M:
        try:
            return model.model_validate(body)
        except ValidationError as exc:
            raise self._invalid(response, f"is not a {model.__name__} ({exc.error_count()} "
                                          "problem(s))", str(exc)) from None

    async def _exchange(
        self, method: str, path: str, *, params: Mapping[str, Any] | None = None,
        json: Any = None, headers: Mapping[str, str] | None = None,
        timeout: httpx.Timeout | None = None, files: Any = None,
    ) -> tuple[httpx.Response, Any]:
        try:
            response = await self._http.request(
                method, path, params=_params(params), json=json, headers=headers,
                timeout=timeout if timeout is not None else self.timeout, files=files,
            )
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc
        if response.is_error:
            raise error_from(response)
        try:
            return response, response.json()
        except ValueError:
            raise self._invalid(response, "is not JSON", response.text[:200] or None) from None

    def _invalid(self, response: httpx.Response, what: str, details: str | None) -> ApiError:
        return ApiError(response.status_code, {"error": {
            "type": "invalid_response", "details": details,
            "message": f"HTTP {response.status_code} from {response.request.url} {what}: is "
                       f"{self.base_url} a pyflue server of this version?"}})

    def _stream(self, method: str, path: str, **kwargs: Any
               ) -> AbstractAsyncContextManager[httpx.Response]:
        return self._http.stream(method, path, **kwargs)

    def _unreachable(self, exc: httpx.TransportError) -> ServerUnreachable:
        reason = str(exc) or type(exc).__name__
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
            return ServerUnreachable(
                f"pyflue server not reachable at {self.base_url} ({reason}): start it with "
                "`pyflue serve`, or point --server / PYFLUE_SERVER_URL at a running one")
        if isinstance(exc, httpx.TimeoutException):
            return ServerUnreachable(f"no answer from the pyflue server at {self.base_url} in "
                                     f"time ({type(exc).__name__}); raise the client timeout")
        return ServerUnreachable(f"lost the connection to the pyflue server at {self.base_url}: "
                                 f"{reason}")

    async def _follow(
        self, run_id: str | None, after: int,
        first: Callable[[], AbstractAsyncContextManager[httpx.Response]],
    ) -> AsyncGenerator[Event, None]:
        """Events after ``after`` until ``run_end``, from ``first()`` and then, when the
        connection drops, from ``GET /runs/{id}/stream`` with ``Last-Event-ID``: each event
        once, in order."""
        last, failures, opened, opener = after, 0, False, first
        while True:
            try:
                async with opener() as response:
                    if response.is_error:
                        await response.aread()
                        raise error_from(response)
                    opened = True
                    run_id = run_id or response.headers.get("x-flue-run-id")
                    async with contextlib.aclosing(_sse_events(response)) as events:
                        async for event in events:
                            if event.event_index <= last:
                                continue
                            last, failures, run_id = event.event_index, 0, event.run_id
                            yield event
                            if event.type is EventType.run_end:
                                return
                problem: Exception | None = None  # ended without run_end: resume...
                if run_id is not None and await self._nothing_after(run_id, last):
                    return  # ...unless the run is over and everything was seen
            except httpx.TransportError as exc:
                if not opened:
                    raise self._unreachable(exc) from exc
                problem = exc
            except ServerError as exc:  # a proxy or a restarting server, while resuming
                if opener is first:
                    raise
                problem = exc
            failures += 1
            if run_id is None or failures > self.max_reconnects:
                raise ServerUnreachable(
                    f"the event stream from {self.base_url} dropped {failures} time(s) in a row "
                    f"({problem or 'closed before run_end'}); last event seen: {last}"
                    + (f"; resume with runs.stream({run_id!r}, after={last})" if run_id else ""))
            await asyncio.sleep(min(0.25 * 2 ** (failures - 1), 5.0))
            opener = functools.partial(self._resume, run_id, last)

    async def _nothing_after(self, run_id: str, last: int) -> bool:
        run = await self._answer(Run, "GET", _run_path(run_id))
        return run.status.finished and run.event_count <= last

    def _resume(self, run_id: str, after: int) -> AbstractAsyncContextManager[httpx.Response]:
        return self._stream("GET", _run_path(run_id, "/stream"),
                           headers={"Accept": SSE, "Last-Event-ID": str(after)})


def _params(params: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if params is None:
        return None
    return {k: v for k, v in params.items() if v is not None}


class Workflows:
    """``client.workflows``: list and invoke."""

    def __init__(self, client: PyFlueClient) -> None:
        self._client = client

    async def list(self) -> builtins.list[WorkflowInfo]:
        """``GET /workflows``: the workflows the server discovered."""
        return (await self._client._answer(WorkflowList, "GET", "/workflows")).workflows

    async def invoke(
        self, name: str, payload: Mapping[str, Any] | None = None, *, wait: bool = True,
        idempotency_key: str | None = None, upload: Uploads = (),
        uploads_from: str | None = None,
    ) -> dict[str, Any]:
        """``POST /workflows/{name}``.

        With ``wait=True`` (``?wait=result``) waits for the run and returns ``{"status":
        "completed", "run_id", "result"}``; a run that did not complete raises
        :class:`ServerError` (failed, timed out, interrupted) or :class:`ConflictError`
        (cancelled), both carrying ``run_id`` and ``run_status``. With ``wait=False`` returns
        ``{"status": "accepted", "run_id"}`` at once. The same ``idempotency_key`` for the same
        workflow returns the run it started first. Unknown workflow: :class:`NotFoundError`.
        The body is returned as a dict, once it validates as
        :class:`~pyflue.responses.Completed` (or :class:`~pyflue.responses.Accepted`).

        ``upload``: folders (each a path, unpacked under its own name, or ``(path, dest)``)
        or archive files (``.tar``, ``.tar.gz``/``.tgz``, ``.zip``, sent as they are) that the
        server unpacks into the run's workspace before it starts; a folder is packed into a
        temporary tar.gz first, and everything is streamed from disk (a multipart body).
        ``uploads_from``: an earlier run whose uploads the new run gets too.
        """
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        timeout = self._client.timeout
        if wait:  # the run's own deadline bounds the wait, not the client's read timeout
            timeout = httpx.Timeout(connect=timeout.connect, read=None, write=timeout.write,
                                    pool=timeout.pool)
        params = {"wait": "result" if wait else None, "uploads_from": uploads_from}
        async with multipart_body(payload, upload) as body:
            return await self._client._body(
                Completed if wait else Accepted,
                "POST", f"/workflows/{quote(name)}", params=params, headers=headers,
                timeout=timeout, **body,
            )

    async def stream(
        self, name: str, payload: Mapping[str, Any] | None = None, *,
        idempotency_key: str | None = None, upload: Uploads = (),
        uploads_from: str | None = None,
    ) -> AsyncGenerator[Event, None]:
        """Invokes the workflow and yields its events (``Accept: text/event-stream``) from
        ``run_start`` to ``run_end``; resumes through ``GET /runs/{id}/stream`` if the
        connection drops. Break out early inside ``contextlib.aclosing(...)``. ``upload``
        and ``uploads_from`` as in :meth:`invoke`."""
        headers = {"Accept": SSE}
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        async with multipart_body(payload, upload) as body:

            def first() -> AbstractAsyncContextManager[httpx.Response]:
                return self._client._stream(
                    "POST", f"/workflows/{quote(name)}", headers=headers,
                    params=_params({"uploads_from": uploads_from}), **body)

            async for event in self._client._follow(None, 0, first):
                yield event

    async def run(
        self, name: str, payload: Mapping[str, Any] | None = None, *,
        idempotency_key: str | None = None, on_event: Callable[[Event], None] | None = None,
        upload: Uploads = (), uploads_from: str | None = None,
    ) -> Run:
        """Invokes the workflow, waits for its end and returns its final record, whatever the
        outcome (check ``run.status``: a failed or cancelled run raises nothing here). With
        ``on_event``, each of the run's events is handed to it live as it comes (SSE).
        ``upload`` and ``uploads_from`` as in :meth:`invoke`."""
        sent: dict[str, Any] = {"upload": upload, "uploads_from": uploads_from}
        if on_event is not None:
            run_id = None
            async for event in self.stream(name, payload, idempotency_key=idempotency_key,
                                           **sent):
                run_id = event.run_id
                on_event(event)
            if run_id is None:
                raise ServerUnreachable(f"the server at {self._client.base_url} sent no "
                                        "events for the run")
            return await self._client.runs.get(run_id)
        try:
            body = await self.invoke(name, payload, wait=True, idempotency_key=idempotency_key,
                                     **sent)
        except (ServerError, ConflictError) as exc:
            if exc.run_id is None:  # no run came of it: the server's own failure
                raise
            return await self._client.runs.get(exc.run_id)
        return await self._client.runs.get(body["run_id"])

    def connect(self, name: str) -> WorkflowConnection:
        """``WS /workflows/{name}``: one invocation over a WebSocket::

            async with client.workflows.connect("summarize") as conn:
                messages = await conn.run({"text": "..."})   # events, then the outcome
        """
        return WorkflowConnection(self._client, name)


class Runs:
    """``client.runs``: records, events, live streams, cancel."""

    def __init__(self, client: PyFlueClient) -> None:
        self._client = client

    async def get(self, run_id: str) -> Run:
        """``GET /runs/{id}``: the run record. Unknown id: :class:`NotFoundError`."""
        return await self._client._answer(Run, "GET", _run_path(run_id))

    async def metrics(self, run_id: str) -> RunMetrics:
        """``GET /runs/{id}/metrics``: the resource samples of the run's container (E2B's
        shape) and, once it has ended, its ``resources`` summary."""
        return await self._client._answer(RunMetrics, "GET", _run_path(run_id, "/metrics"))

    async def rerun(self, run_id: str, *, on_event: Callable[[Event], None] | None = None
                    ) -> Run:
        """Invokes ``run_id``'s workflow again with the same payload and waits for the new
        run's end, as :meth:`Workflows.run` does (``on_event`` gets its events live). The new
        run's image is the one the workflow asks for now: the HTTP API takes no image. The
        earlier run's uploads go with it (the server copies them: ``?uploads_from=``)."""
        original = await self.get(run_id)
        return await self._client.workflows.run(original.workflow, original.payload,
                                                on_event=on_event, uploads_from=run_id)

    async def list(
        self, status: RunStatus | str | None = None, workflow: str | None = None,
        limit: int = 50, cursor: str | None = None, *,
        created_after: datetime | None = None, created_before: datetime | None = None,
        run_id: str | None = None,
    ) -> RunPage:
        """``GET /runs``: one page of runs, newest first (``limit`` 1 to 500); created from
        ``created_after`` (inclusive) to ``created_before`` (exclusive), whose id contains
        ``run_id`` (letter case ignored), when given. Naive times are UTC."""
        params = {"status": status, "workflow": workflow, "limit": limit, "cursor": cursor,
                  "created_after": _iso(created_after), "created_before": _iso(created_before),
                  "run_id": run_id}
        return await self._client._answer(RunPage, "GET", "/runs", params=params)

    async def recent(
        self, limit: int = 50, *, status: RunStatus | str | None = None,
        workflow: str | None = None,
    ) -> builtins.list[Run]:
        """Up to ``limit`` runs, newest first, paging through ``GET /runs`` as needed."""
        found: builtins.list[Run] = []
        cursor: str | None = None
        while len(found) < limit:
            page = await self.list(status=status, workflow=workflow, cursor=cursor,
                                   limit=min(limit - len(found), 500))
            found += page.runs
            cursor = page.next_cursor
            if cursor is None:
                break
        return found

    async def events(
        self, run_id: str, after: int = 0, limit: int | None = None,
        types: Sequence[EventType | str] | None = None,
    ) -> builtins.list[Event]:
        """``GET /runs/{id}/events``: the stored events after index ``after``, only ``types``
        if given; at most ``limit`` of them, or all of them (paging) when ``limit`` is None."""
        wanted = ",".join(str(t) for t in types) if types else None
        out: builtins.list[Event] = []
        while limit is None or len(out) < limit:
            size = EVENTS_PAGE if limit is None else min(limit - len(out), 5000)
            page = await self._client._answer(_EventPage, "GET", _run_path(run_id, "/events"),
                                              params={"after": after, "limit": size,
                                                      "types": wanted})
            out += page.events
            after = page.next_after
            if len(page.events) < size:
                break
        return out

    async def stream(self, run_id: str, after: int = 0) -> AsyncGenerator[Event, None]:
        """``GET /runs/{id}/stream``: the events after ``after`` (stored ones first, then live)
        until ``run_end``. A dropped connection is resumed with ``Last-Event-ID``, so no event
        is missed or repeated. Break out early inside ``contextlib.aclosing(...)``."""

        def first() -> AbstractAsyncContextManager[httpx.Response]:
            return self._client._stream("GET", _run_path(run_id, "/stream"),
                                       params={"after": after}, headers={"Accept": SSE})

        async for event in self._client._follow(run_id, after, first):
            yield event

    async def cancel(self, run_id: str) -> dict[str, Any]:
        """``POST /runs/{id}/cancel``: ``{"status": "cancelled" | "cancelling", "run_id"}``.

        A queued run is cancelled at once; a running one is stopped (its command and container
        killed) and ends ``cancelled`` shortly after. Finished run: :class:`ConflictError`.
        The body is returned as a dict, once it validates as
        :class:`~pyflue.responses.CancelAnswer`.
        """
        return await self._client._body(CancelAnswer, "POST", _run_path(run_id, "/cancel"))

    def follow(self, run_id: str, after: int = 0) -> AsyncGenerator[Event, None]:
        """``WS /runs/{id}/stream``: like :meth:`stream`, over a WebSocket. A dropped socket
        (or one closed for reading too slowly) is reopened with ``?after=`` the last index."""
        return follow(self._client, run_id, after)

    async def list_artifacts(self, run_id: str) -> builtins.list[Artifact]:
        """``GET /runs/{id}/artifacts``: the files the run saved, by name."""
        page = await self._client._answer(ArtifactList, "GET", _run_path(run_id, "/artifacts"))
        return page.artifacts

    async def download_artifact(self, run_id: str, name: str,
                                dest: str | os.PathLike[str]) -> Path:
        """``GET /runs/{id}/artifacts/{name}`` streamed into the new local file ``dest``
        (a folder of artifacts arrives as one tar), checked against its ``Content-Length``
        and SHA-256; returns ``dest``. A transfer cut short or not matching leaves nothing
        behind and raises :class:`ServerError`. Unknown run or name: :class:`NotFoundError`."""
        target = Path(dest)
        part = target.with_name(f".{target.name}.part")
        path = _run_path(run_id, "/artifacts/" + quote(name, safe="/"))
        try:
            async with self._client._stream("GET", path) as response:
                if response.is_error:
                    await response.aread()
                    raise error_from(response)
                expected = response.headers.get("X-Artifact-Sha256")
                length = response.headers.get("Content-Length")
                digest, size = hashlib.sha256(), 0
                with part.open("wb") as out:
                    async for chunk in response.aiter_bytes():
                        digest.update(chunk)
                        size += len(chunk)
                        out.write(chunk)
        except httpx.TransportError as exc:
            part.unlink(missing_ok=True)
            raise self._client._unreachable(exc) from exc
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        wrong = ((length is not None and int(length) != size and f"{size} bytes, not {length}")
                 or (expected and digest.hexdigest() != expected
                     and f"sha256 {digest.hexdigest()}, not {expected}"))
        if wrong:
            part.unlink(missing_ok=True)
            raise ServerError(502, {"error": {
                "type": "invalid_response", "details": None,
                "message": f"artifact {name!r} of {run_id} arrived as {wrong}: download it "
                           "again"}})
        os.replace(part, target)
        return target

    async def wait(self, run_id: str) -> Run:
        """Follows the run until ``run_end`` and returns its final record."""
        async with contextlib.aclosing(self.stream(run_id)) as events:
            async for _ in events:
                pass
        return await self.get(run_id)
