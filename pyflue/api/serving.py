"""How ``pyflue serve`` runs the app under uvicorn: one place for the server's options.

A WebSocket message is held to ``PYFLUE_MAX_BODY_BYTES``, the same limit as an HTTP body.
uvicorn's own refusal of a larger message is a bare close 1009; :class:`LimitedWebSocketProtocol`
answers it the documented way instead (docs/websocket.md): the error frame
``{"type": "error", "error": {"type": "payload_too_large", ...}}``, then close code 4413. The
limit is checked on each frame's header before its data is read, so the server never holds more
than the limit of one message.

Tokens stay out of the server's log: uvicorn logs each request's path with its query string
(the access log, and the "WebSocket ... [accepted]" line), and a WebSocket client may still
send its token as ``?token=``. :class:`ScrubQuery`, installed on uvicorn's log handlers by
:func:`log_config`, replaces the value of every ``token`` (and ``ticket``) query parameter
with ``[redacted]`` before a line is written.
"""

from __future__ import annotations

import copy
import json
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from uvicorn.config import LOGGING_CONFIG
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.exceptions import PayloadTooBig
from websockets.frames import Close, Frame, Opcode

from pyflue.api.ws import CLOSE_TOO_LARGE, too_large_message
from pyflue.settings import Settings
from pyflue.workflows import ROOTS

if TYPE_CHECKING:
    from fastapi import FastAPI


class LimitedWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websockets protocol, refusing an oversized message with pyflue's error frame
    and close code 4413 rather than a bare 1009."""

    _refused = False

    def handle_parser_exception(self) -> None:
        if self._refused:
            return  # the parser discards what the client still sends; wait for its close
        if not isinstance(self.conn.parser_exc, PayloadTooBig):
            super().handle_parser_exception()
            return
        self._refused = True
        self.conn.data_to_send()  # drop the bare 1009 close websockets queued
        message = too_large_message(self.config.ws_max_size)
        frame = json.dumps({"type": "error", "error": {
            "type": "payload_too_large", "message": message, "details": None}})
        close = Close(CLOSE_TOO_LARGE, "payload too large").serialize()
        self.transport.write(
            Frame(Opcode.TEXT, frame.encode()).serialize(mask=False, extensions=[])
            + Frame(Opcode.CLOSE, close).serialize(mask=False, extensions=[]))
        self.queue.put_nowait({"type": "websocket.disconnect", "code": CLOSE_TOO_LARGE,
                               "reason": "payload too large"})
        self.close_sent = True
        # Half-close: the client sees our frames and EOF while we go on reading (and dropping)
        # the rest of its message, so closing never resets the connection under its feet.
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.close_timer = self.loop.call_later(self.close_timeout, self.transport.close)


_SECRET_QUERY = re.compile(r"([?&](?:token|ticket)=)[^&\s\"]*", re.IGNORECASE)


def scrub(text: str) -> str:
    """``text`` with the values of ``token``/``ticket`` query parameters redacted."""
    return _SECRET_QUERY.sub(r"\1[redacted]", text)


class ScrubQuery(logging.Filter):
    """Redacts tokens in query strings from a log record (its message and arguments)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = scrub(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(scrub(a) if isinstance(a, str) else a for a in record.args)
        return True


def log_config() -> dict[str, Any]:
    """uvicorn's own logging configuration, with :class:`ScrubQuery` on every handler."""
    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["scrub_query"] = {"()": ScrubQuery}
    for handler in config["handlers"].values():
        handler.setdefault("filters", []).append("scrub_query")
    return config


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """The keyword arguments ``uvicorn.run``/``uvicorn.Config`` take for this server."""
    server = settings.server
    return {
        "host": server.host, "port": server.port, "log_config": log_config(),
        "ws": LimitedWebSocketProtocol, "ws_max_size": server.max_body_bytes,
        # Attached clients (SSE, ?wait=result) must not hold a shutdown until their runs end.
        "timeout_graceful_shutdown": 5,
    }


def settings_environment(settings: Settings) -> dict[str, str]:
    """The ``PYFLUE_*`` variables that rebuild these settings' command-line choices in another
    process (``--reload`` runs the app in a child process that reads its settings anew)."""
    server = settings.server
    env = {"PYFLUE_PROJECT_DIR": str(settings.project_dir), "PYFLUE_HOST": server.host,
           **({"PYFLUE_TOKENS_FILE": str(server.tokens_file)} if server.tokens_file else {}),
           "PYFLUE_PORT": str(server.port), "PYFLUE_MAX_CONCURRENCY": str(server.max_concurrency),
           "PYFLUE_ALLOW_INSECURE_BIND": str(server.allow_insecure_bind).lower()}
    if settings.store_url:
        env["PYFLUE_STORE_URL"] = settings.store_url
    return env


def reload_dirs(settings: Settings) -> list[str]:
    """What ``pyflue serve --reload`` watches: the project's workflow folders (so helper
    modules count too), else the project folder."""
    found = [settings.project_dir / root for root in ROOTS]
    return [str(p) for p in found if p.is_dir()] or [str(Path(settings.project_dir))]


def app_from_environment() -> FastAPI:
    """The app factory ``pyflue serve --reload`` hands uvicorn (as an import string, so each
    restart imports it afresh): settings from the environment, as :func:`settings_environment`
    left them."""
    from pyflue.api.app import create_app
    from pyflue.settings import load_settings

    return create_app(load_settings())  # the project's settings file too
