"""``/runs/{run_id}/artifacts``: list a run's artifacts, download one (ranges too) or a folder
of them as one tar."""

from __future__ import annotations

import re
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Header, Path, Request
from fastapi.responses import StreamingResponse

from pyflue.api import auth, deps
from pyflue.api.auth import CallerDep
from pyflue.api.errors import HttpProblem, documented
from pyflue.artifacts import ArtifactStore, pick
from pyflue.artifacts.archive import FolderArchive
from pyflue.models import Artifact
from pyflue.responses import ArtifactList

router = APIRouter(tags=["artifacts"])  # guarded by the app: see pyflue.api.auth

_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$")
_BINARY: dict[str, Any] = {"schema": {"type": "string", "format": "binary"}}
_DOWNLOAD: dict[int | str, dict[str, Any]] = {
    200: {"description": "the artifact's bytes (its `Content-Type`), or a folder of artifacts "
                         "as one `application/x-tar`; `X-Artifact-Sha256` and `ETag` carry a "
                         "file's SHA-256",
          "content": {"*/*": _BINARY}},
    206: {"description": "the bytes a `Range: bytes=START-END` asked for (`Content-Range`), "
                         "in the artifact's `Content-Type`",
          "content": {"*/*": _BINARY}},
}


def artifacts(request: Request) -> ArtifactStore:
    store: ArtifactStore = deps.scheduler(request).runner.artifacts
    return store


@router.get("/runs/{run_id}/artifacts", operation_id="list_artifacts",
            summary="List a run's artifacts", responses=documented(401, 404, 500, 503))
async def list_artifacts(run_id: str, request: Request, caller: CallerDep) -> ArtifactList:
    """The files the run saved (`harness.artifacts.save`, the agent's `artifacts` option),
    by name: size, sha256, content type, where in the workspace they came from, when."""
    await auth.load_run(deps.store(request), run_id, caller)  # another tenant's: 404
    return ArtifactList(run_id=run_id, artifacts=await artifacts(request).list(run_id))


@router.get("/runs/{run_id}/artifacts/{name:path}", operation_id="download_artifact",
            summary="Download an artifact", response_class=StreamingResponse,
            responses={**_DOWNLOAD, **documented(
                401, 404, 416, 500, 503,
                _404="`not_found`: no run of that id, or no artifact or folder of artifacts of "
                     "that name in it")})
async def download_artifact(
    run_id: str,
    request: Request,
    caller: CallerDep,
    name: Annotated[str, Path(description="the artifact's name (`reports/junit.xml`), or a "
                                          "folder of them (`reports`): a tar of its files")],
    range_: Annotated[str | None, Header(alias="Range", description="`bytes=START-END`, "
                                         "`bytes=START-` or `bytes=-LAST` (one range; a "
                                         "folder's tar is always sent whole)")] = None,
) -> StreamingResponse:
    """One artifact, streamed with `Content-Length`; `Range` gives part of it (206). A name
    that is a folder of artifacts answers with all of them as one tar."""
    await auth.load_run(deps.store(request), run_id, caller)  # another tenant's: 404
    store = artifacts(request)
    found = pick(await store.list(run_id), name, run_id)
    if isinstance(found, list):
        archive = FolderArchive(store, run_id, name, found)
        contents = await archive.check()
        return StreamingResponse(archive.stream(contents), media_type="application/x-tar",
                                 headers={"Content-Length": str(archive.size),
                                          "Accept-Ranges": "none",
                                          "Content-Disposition": _attachment(archive.filename)})
    return await _file(store, run_id, found, range_)


async def _file(store: ArtifactStore, run_id: str, artifact: Artifact,
                range_: str | None) -> StreamingResponse:
    size = artifact.size
    headers = {"Accept-Ranges": "bytes", "ETag": f'"{artifact.sha256}"',
               "X-Artifact-Sha256": artifact.sha256,
               "Content-Disposition": _attachment(artifact.name.rsplit("/", 1)[-1])}
    span = _span(range_, size)
    if span is None:
        body = await store.open(artifact, run_id)
        return StreamingResponse(body, media_type=artifact.content_type,
                                 headers={**headers, "Content-Length": str(size)})
    start, stop = span
    body = await store.open(artifact, run_id, start=start, stop=stop)
    return StreamingResponse(body, status_code=206, media_type=artifact.content_type, headers={
        **headers, "Content-Length": str(stop - start),
        "Content-Range": f"bytes {start}-{stop - 1}/{size}"})


def _span(header: str | None, size: int) -> tuple[int, int] | None:
    """(start, stop) of one byte range, or None to send it all (no header, or one this does
    not serve: several ranges, another unit). 416 when it starts past the end."""
    if header is None:
        return None
    found = _RANGE.match(header)
    if found is None or not (found[1] or found[2]):
        return None
    if not found[1]:  # the last N bytes
        last = int(found[2])
        if last == 0 or size == 0:
            raise _unsatisfiable(header, size)
        return max(size - last, 0), size
    start = int(found[1])
    if found[2] and int(found[2]) < start:
        return None  # not a valid range (RFC 9110 14.1.1): ignored
    if start >= size:
        raise _unsatisfiable(header, size)
    return start, (min(int(found[2]) + 1, size) if found[2] else size)


def _unsatisfiable(header: str, size: int) -> HttpProblem:
    return HttpProblem(416, "range_not_satisfiable",
                       f"header 'Range' ({header.strip()[:100]}) asks for bytes the artifact "
                       f"does not have: it is {size} bytes", headers={
                           "Content-Range": f"bytes */{size}"})


def _attachment(filename: str) -> str:
    return f"attachment; filename*=UTF-8''{quote(filename, safe='')}"

