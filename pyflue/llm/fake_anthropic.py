"""A fake Anthropic Messages API for tests and offline demos, driven by scripted replies.

:class:`FakeAnthropic` is an ASGI app that speaks the real wire protocol at ``POST
/v1/messages``: a JSON message when the request's ``stream`` is false, otherwise
``text/event-stream`` with the real events (``message_start``, ``content_block_start``,
``ping``, ``content_block_delta``, ``content_block_stop``, ``message_delta``,
``message_stop``). Errors carry the real status codes and ``{"type": "error", "error": ...}``
bodies, and every response a ``request-id`` header. Each scripted reply answers exactly one
request, in order; every request is recorded, so tests can assert what the SDK sent::

    fake = FakeAnthropic()
    fake.fail(529, "overloaded_error", "Overloaded").reply_text("Hello there.")
    with serve_fake_anthropic(fake) as base_url:
        client = AnthropicClient("sk-test", base_url=base_url)
        ...  # the first request gets a 529, the SDK retries, the retry gets the text
    assert len(fake.requests) == 2

A request that finds the script empty gets a 500 ``api_error`` with ``x-should-retry:
false``, so a missing reply fails fast instead of being retried.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import socket
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

JSON = dict[str, Any]

# What the real API sends for a status when a script does not say otherwise.
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


@dataclass(frozen=True)
class RecordedRequest:
    """One request the fake received: its parsed JSON body and its headers (names lowercased)."""

    body: JSON
    headers: dict[str, str]

    @property
    def api_key(self) -> str | None:
        """The key the client sent, from ``x-api-key`` or an ``Authorization: Bearer`` header."""
        bearer = self.headers.get("authorization", "")
        return self.headers.get("x-api-key") or bearer.removeprefix("Bearer ") or None


@dataclass(frozen=True)
class _Reply:
    content: tuple[JSON, ...]
    stop_reason: str
    usage: Mapping[str, int] | None
    text_chunks: tuple[tuple[str, ...], ...]  # per content block: the text deltas to stream


@dataclass(frozen=True)
class _Failure:
    status: int
    error_type: str
    message: str
    headers: Mapping[str, str] = field(default_factory=dict)
    in_stream: bool = False


class FakeAnthropic:
    """A scripted Messages API. Queue replies with :meth:`reply_text`, :meth:`reply_tool_use`
    and :meth:`fail` (each returns the fake, so calls chain); read :attr:`requests` afterwards.

    The fake is itself the ASGI app: serve it with :func:`serve_fake_anthropic`, or mount it
    in-process with ``httpx.ASGITransport(app=fake)``. It is thread-safe, so a test may script
    and inspect it while uvicorn serves it from another thread.
    """

    def __init__(self) -> None:
        self._script: deque[_Reply | _Failure] = deque()
        self._requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._app = Starlette(routes=[Route("/v1/messages", self._messages, methods=["POST"])])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._app(scope, receive, send)

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every ``POST /v1/messages`` received so far, oldest first (a copy)."""
        with self._lock:
            return list(self._requests)

    @property
    def pending(self) -> int:
        """How many scripted replies no request has consumed yet."""
        with self._lock:
            return len(self._script)

    def reply_text(
        self,
        text: str | Sequence[str],
        *,
        stop_reason: str = "end_turn",
        usage: Mapping[str, int] | None = None,
    ) -> FakeAnthropic:
        """Answer one request with a text message.

        ``text`` is streamed word by word, or as the given chunks when it is a sequence.
        ``usage`` overrides any of ``input_tokens``, ``output_tokens``,
        ``cache_creation_input_tokens``, ``cache_read_input_tokens`` (estimated otherwise).
        """
        chunks = _words(text) if isinstance(text, str) else tuple(text)
        block = {"type": "text", "text": "".join(chunks)}
        return self._push(_Reply((block,), stop_reason, usage, (chunks,)))

    def reply_tool_use(
        self,
        name: str,
        input: Mapping[str, Any],
        *,
        text: str | None = None,
        id: str | None = None,
        usage: Mapping[str, int] | None = None,
    ) -> FakeAnthropic:
        """Answer one request with a call of tool ``name`` (stop reason ``tool_use``), after
        ``text`` when given. ``id`` defaults to a fresh ``toolu_...`` id."""
        tool = {"type": "tool_use", "id": id or f"toolu_fake{next(self._ids):04d}",
                "name": name, "input": dict(input)}
        blocks: tuple[JSON, ...] = (tool,)
        chunks: tuple[tuple[str, ...], ...] = ((),)
        if text is not None:
            blocks = ({"type": "text", "text": text}, tool)
            chunks = (_words(text), ())
        return self._push(_Reply(blocks, "tool_use", usage, chunks))

    def fail(
        self,
        status: int,
        error_type: str | None = None,
        message: str = "Fake failure",
        *,
        headers: Mapping[str, str] | None = None,
    ) -> FakeAnthropic:
        """Answer one request with an error: ``status``, the API's ``error_type`` (by default
        the one the real API uses for that status) and ``message``. 429 and 529 also send
        ``retry-after-ms: 10`` so the SDK's retry comes quickly; ``headers`` adds or overrides."""
        extra = {"retry-after-ms": "10"} if status in (429, 529) else {}
        extra.update(headers or {})
        kind = error_type or _ERROR_TYPES.get(status, "api_error")
        return self._push(_Failure(status, kind, message, extra))

    def fail_mid_stream(
        self, error_type: str = "overloaded_error", message: str = "Overloaded"
    ) -> FakeAnthropic:
        """Answer one streamed request with a 200 whose stream breaks off with an ``error``
        event after ``message_start``, as the real API does when it fails mid-response (the SDK
        cannot retry this). A non-streamed request gets the usual status for ``error_type``."""
        status = {v: k for k, v in _ERROR_TYPES.items()}.get(error_type, 500)
        return self._push(_Failure(status, error_type, message, in_stream=True))

    def _push(self, item: _Reply | _Failure) -> FakeAnthropic:
        with self._lock:
            self._script.append(item)
        return self

    async def _messages(self, request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except ValueError:
            return self._error(400, "invalid_request_error", "The request body is not valid JSON")
        problem = _invalid(body)
        if problem:
            return self._error(400, "invalid_request_error", problem)
        with self._lock:
            self._requests.append(RecordedRequest(body, dict(request.headers)))
            item = self._script.popleft() if self._script else None
        if item is None:
            return self._error(500, "api_error", "FakeAnthropic: no scripted reply left for "
                               "this request", {"x-should-retry": "false"})
        if isinstance(item, _Failure) and item.in_stream and body.get("stream"):
            return StreamingResponse(_broken_events(body, item), headers=self._headers(),
                                     media_type="text/event-stream; charset=utf-8")
        if isinstance(item, _Failure):
            return self._error(item.status, item.error_type, item.message, item.headers)
        message = self._message(body, item)
        if body.get("stream"):
            return StreamingResponse(_events(message, item), headers=self._headers(),
                                     media_type="text/event-stream; charset=utf-8")
        return JSONResponse(message, headers=self._headers())

    def _message(self, body: JSON, reply: _Reply) -> JSON:
        output = sum(len(json.dumps(b)) for b in reply.content) // 4
        usage = {"input_tokens": max(1, len(json.dumps(body["messages"])) // 4),
                 "output_tokens": max(1, output),
                 "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
                 **(reply.usage or {})}
        return {"id": f"msg_fake{next(self._ids):04d}", "type": "message", "role": "assistant",
                "model": body["model"], "content": list(reply.content),
                "stop_reason": reply.stop_reason, "stop_sequence": None, "usage": usage}

    def _error(self, status: int, kind: str, message: str,
               headers: Mapping[str, str] | None = None) -> Response:
        body = {"type": "error", "error": {"type": kind, "message": message}}
        return JSONResponse(body, status, headers={**self._headers(), **(headers or {})})

    def _headers(self) -> dict[str, str]:
        return {"request-id": f"req_fake{next(self._ids):04d}"}


def _invalid(body: object) -> str | None:
    """Why the real API would refuse this body with a 400, for the few checks worth making."""
    if not isinstance(body, dict):
        return "The request body must be a JSON object"
    if not isinstance(body.get("model"), str):
        return "model: Field required"
    if not isinstance(body.get("max_tokens"), int):
        return "max_tokens: Field required"
    if not isinstance(body.get("messages"), list):
        return "messages: Field required"
    return None


def _words(text: str) -> tuple[str, ...]:
    return tuple(re.findall(r"\S+\s*|\s+", text))


async def _events(message: JSON, reply: _Reply) -> AsyncIterator[str]:
    usage = message["usage"]
    start = {**message, "content": [], "stop_reason": None,
             "usage": {**usage, "output_tokens": 1}}
    yield _sse("message_start", {"type": "message_start", "message": start})
    for index, (block, chunks) in enumerate(zip(reply.content, reply.text_chunks, strict=True)):
        empty = {**block, "text": ""} if block["type"] == "text" else {**block, "input": {}}
        yield _sse("content_block_start",
                   {"type": "content_block_start", "index": index, "content_block": empty})
        if index == 0:
            yield _sse("ping", {"type": "ping"})
        for delta in _deltas(block, chunks):
            yield _sse("content_block_delta",
                       {"type": "content_block_delta", "index": index, "delta": delta})
        yield _sse("content_block_stop", {"type": "content_block_stop", "index": index})
    yield _sse("message_delta", {
        "type": "message_delta",
        "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
        "usage": {"output_tokens": usage["output_tokens"]},
    })
    yield _sse("message_stop", {"type": "message_stop"})


async def _broken_events(body: JSON, failure: _Failure) -> AsyncIterator[str]:
    usage = {"input_tokens": 1, "output_tokens": 1}
    start = {"id": "msg_fake_broken", "type": "message", "role": "assistant",
             "model": body["model"], "content": [], "stop_reason": None,
             "stop_sequence": None, "usage": usage}
    yield _sse("message_start", {"type": "message_start", "message": start})
    yield _sse("ping", {"type": "ping"})
    error = {"type": failure.error_type, "message": failure.message}
    yield _sse("error", {"type": "error", "error": error})


def _deltas(block: JSON, chunks: tuple[str, ...]) -> Iterator[JSON]:
    if block["type"] == "text":
        yield from ({"type": "text_delta", "text": chunk} for chunk in chunks)
        return
    # Like the real API: an empty partial first, then the JSON in a few pieces.
    raw = json.dumps(block["input"])
    pieces = [""] + [raw[i : i + 16] for i in range(0, len(raw), 16)]
    yield from ({"type": "input_json_delta", "partial_json": piece} for piece in pieces)


def _sse(event: str, data: JSON) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


@contextlib.contextmanager
def serve_fake_anthropic(fake: FakeAnthropic, *, timeout: float = 10.0) -> Iterator[str]:
    """Serve ``fake`` with uvicorn on 127.0.0.1 (a free port) from a background thread.

    Yields the base URL to give the SDK (``http://127.0.0.1:PORT``); on exit the server stops
    and the thread is joined. Raises ``RuntimeError`` if the server does not start within
    ``timeout`` seconds.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(fake, lifespan="off", ws="none", log_level="warning",
                            access_log=False, timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]},
                              name=f"fake-anthropic-{port}", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the fake Anthropic server did not start on port {port}")
            time.sleep(0.005)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()


__all__ = ["FakeAnthropic", "RecordedRequest", "serve_fake_anthropic"]
