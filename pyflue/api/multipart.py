"""A multipart invocation: a ``payload`` JSON part and archive parts, streamed to a spool.

``POST /workflows/{name}`` with ``Content-Type: multipart/form-data`` takes:

- ``payload`` (at most one): the payload JSON object, as a JSON body would be (at most
  PYFLUE_MAX_BODY_BYTES; none is ``{}``);
- ``upload`` or ``upload:DEST`` (any number up to :data:`MAX_ARCHIVES`): a tar, tar.gz or zip
  archive, unpacked at DEST in the workspace (``upload`` alone: the workspace itself).

Archive parts are written to spool files under the project's ``.pyflue/spool`` as they arrive
(never held whole in memory), then each is checked (:func:`pyflue.uploads.check_archive`)
before the caller creates the run; the spool files are removed when the request is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from pyflue.api.errors import HttpProblem
from pyflue.errors import ConfigError
from pyflue.sandbox.base import CopyLimits
from pyflue.uploads import StagedUpload, check_archive, check_dest

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

MAX_ARCHIVES = 20
UPLOAD_FIELD = "upload"


@dataclass
class _Part:
    name: str = ""
    filename: str | None = None
    file: IO[bytes] | None = None
    path: Path | None = None
    size: int = 0


@dataclass
class Received:
    """What a multipart invocation carried: the payload's JSON text and the archives."""

    payload: bytes = b""
    archives: list[tuple[str, str | None, Path]] = field(default_factory=list)  # dest, name, path
    uploads: list[StagedUpload] = field(default_factory=list)


class _Reader:
    """python-multipart's callbacks, writing archive parts to the spool."""

    def __init__(self, spool: Path, max_json: int, max_archive: int) -> None:
        self.spool, self.max_json, self.max_archive = spool, max_json, max_archive
        self.received = Received()
        self.part = _Part()
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._headers: dict[str, str] = {}
        self._pending: list[tuple[IO[bytes], bytes | None]] = []
        self._json = bytearray()
        self._seen_payload = False
        self._in_part = False

    def callbacks(self) -> dict[str, Any]:
        return {
            "on_part_begin": self._begin,
            "on_header_field": lambda d, s, e: self._header_field.extend(d[s:e]),
            "on_header_value": lambda d, s, e: self._header_value.extend(d[s:e]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._data,
            "on_part_end": self._end,
        }

    def _begin(self) -> None:
        self.part = _Part()
        self._headers = {}
        self._in_part = True

    def _header_end(self) -> None:
        self._headers[self._header_field.decode("latin-1").lower()] = \
            self._header_value.decode("latin-1")
        self._header_field.clear()
        self._header_value.clear()

    def _headers_finished(self) -> None:
        _kind, options = parse_options_header(self._headers.get("content-disposition", ""))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        filename = options.get(b"filename")
        self.part.name = name
        self.part.filename = filename.decode("utf-8", "replace") if filename else None
        if name == "payload":
            if self._seen_payload:
                raise HttpProblem(400, "invalid_parameter", "the body has two `payload` parts: "
                                  "send the payload once")
            self._seen_payload = True
        elif name == UPLOAD_FIELD or name.startswith(UPLOAD_FIELD + ":"):
            if len(self.received.archives) >= MAX_ARCHIVES:
                raise HttpProblem(400, "invalid_parameter", f"the body has more than "
                                  f"{MAX_ARCHIVES} archive parts: pack them into fewer")
            fd, spooled = tempfile.mkstemp(prefix="part-", dir=self.spool)
            self.part.file, self.part.path = os.fdopen(fd, "wb"), Path(spooled)
            self.received.archives.append(("", self.part.filename, self.part.path))
        else:
            raise HttpProblem(400, "invalid_parameter", f"unknown part {name!r}: a multipart "
                              "invocation has a `payload` part (JSON) and archive parts named "
                              "`upload` or `upload:DEST`")

    def _data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        self.part.size += len(chunk)
        if self.part.file is not None:
            if self.part.size > self.max_archive:
                raise HttpProblem(413, "payload_too_large", f"part {self.part.name!r} is over "
                                  f"{self.max_archive} bytes (PYFLUE_SANDBOX_COPY_MAX_BYTES)")
            self._pending.append((self.part.file, chunk))
        else:
            self._json += chunk
            if len(self._json) > self.max_json:
                raise HttpProblem(413, "payload_too_large", "the `payload` part is over "
                                  f"{self.max_json} bytes (PYFLUE_MAX_BODY_BYTES)")

    def _end(self) -> None:
        self._in_part = False
        if self.part.name == "payload":
            if not bytes(self._json).strip():
                raise HttpProblem(400, "invalid_json", "the `payload` part is empty: send a "
                                  "JSON object such as {} in it, or leave the part out")
            self.received.payload = bytes(self._json)
        elif self.part.file is not None:
            self._pending.append((self.part.file, None))  # closed after its last chunk
            dest = self.part.name[len(UPLOAD_FIELD) + 1:]
            try:
                dest = check_dest(dest)
            except ConfigError as exc:
                raise HttpProblem(400, "invalid_parameter", f"part {self.part.name!r}: "
                                  f"{exc.message}") from None
            self.received.archives[-1] = (dest, self.part.filename, self.received.archives[-1][2])

    @property
    def open_part(self) -> bool:
        """Whether the body ended inside a part (one begun and never ended)."""
        return self._in_part

    @property
    def pending(self) -> bool:
        """Whether data waits to be written (by :meth:`flush`)."""
        return bool(self._pending)

    def flush(self) -> None:
        """Writes the data received so far, closing finished parts (off the event loop)."""
        for file, chunk in self._pending:
            if chunk is None:
                file.close()
            else:
                file.write(chunk)
        self._pending.clear()

    def close(self) -> None:
        """Closes what is still open, and removes every spool file."""
        for file, _chunk in self._pending:
            file.close()
        if self.part.file is not None:
            self.part.file.close()
        for _dest, _name, path in self.received.archives:
            path.unlink(missing_ok=True)


def _boundary(content_type: str) -> bytes:
    _kind, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise HttpProblem(400, "invalid_parameter", "a multipart body needs a boundary in its "
                          "Content-Type (multipart/form-data; boundary=...)")
    return boundary


@contextlib.asynccontextmanager
async def received(request: Request, *, spool: Path, max_json: int,
                   limits: CopyLimits) -> AsyncIterator[Received]:
    """Reads a multipart invocation to its end, then checks every archive (UploadRefused
    naming the part, the member and why); the spool files go when the block ends."""
    await asyncio.to_thread(spool.mkdir, parents=True, exist_ok=True)
    reader = _Reader(spool, max_json, limits.total_bytes)
    parser = MultipartParser(_boundary(request.headers.get("content-type", "")),
                             cast("MultipartCallbacks", reader.callbacks()))
    try:
        try:
            async for chunk in request.stream():
                parser.write(chunk)
                if reader.pending:
                    await asyncio.to_thread(reader.flush)
            parser.finalize()
        except FormParserError as exc:
            raise HttpProblem(400, "invalid_parameter", f"the multipart body cannot be read "
                              f"({exc}); send multipart/form-data as curl -F does") from None
        if reader.open_part:
            raise HttpProblem(400, "invalid_parameter", "the multipart body ends inside a "
                              "part: send it whole")
        await asyncio.to_thread(reader.flush)
        for dest, filename, path in reader.received.archives:
            part = f"{UPLOAD_FIELD}{':' + dest if dest else ''}"
            part += f" ({filename})" if filename else ""
            info = await asyncio.to_thread(check_archive, path, dest=dest, part=part,
                                           filename=filename, limits=limits)
            reader.received.uploads.append(StagedUpload(path, info))
        yield reader.received
    finally:
        await asyncio.to_thread(reader.close)
