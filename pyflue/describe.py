"""One run, described: its record plus what its events add (the container id), found by its
id or by a prefix a user typed, in this machine's store or on a server.

A run id is ``workflow:NAME:ULID``. A reference names a run when it is its whole id, a prefix of
the id, or a prefix of its ULID part (any case); several runs matching is
:class:`~pyflue.errors.RunIdAmbiguous`, none :class:`~pyflue.errors.RunIdUnknown`.

Where the runs are read: :class:`StoreRuns` matches prefixes among every run of the store;
:class:`ServerRuns` among the server's :data:`SERVER_PREFIX_SCAN` most recent runs (the server
has no prefix search: an older run needs its whole id).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel

from pyflue.errors import RunIdAmbiguous, RunIdUnknown, RunNotFound
from pyflue.events import ContainerCreatedEvent, Event, EventType
from pyflue.models import Run

if TYPE_CHECKING:
    from pyflue.client import PyFlueClient
    from pyflue.store.base import RunStore

SERVER_PREFIX_SCAN = 1000
_SHOWN_CANDIDATES = 10


class RunDetails(BaseModel):
    """A run record and the id of its container (the last attempt's; None without one)."""

    run: Run
    container_id: str | None = None

    def document(self) -> dict[str, Any]:
        """The run record as JSON, plus ``container_id``."""
        return self.run.model_dump(mode="json") | {"container_id": self.container_id}


class RunSource(Protocol):
    """Where runs are read from: this machine's store or a server."""

    where: str

    async def get(self, run_id: str) -> Run | None: ...

    def run_ids(self) -> AsyncIterator[str]: ...

    async def events(self, run_id: str, kind: EventType) -> list[Event]: ...


def matches(ref: str, run_id: str) -> bool:
    """Whether ``ref`` names ``run_id``: a prefix of the id, or of its ULID part (any case)."""
    ulid = run_id.rsplit(":", 1)[-1]
    return run_id.startswith(ref) or ulid.upper().startswith(ref.upper())


def pick(ref: str, run_ids: Iterable[str], where: str) -> str:
    """The one run id ``ref`` names among ``run_ids``; RunIdUnknown or RunIdAmbiguous."""
    found = [run_id for run_id in run_ids if matches(ref, run_id)]
    if len(found) == 1:
        return found[0]
    if not found:
        raise RunIdUnknown(f"no run {ref!r} in {where}: `pyflue runs` lists the recent ones")
    shown = "".join(f"\n  {run_id}" for run_id in found[:_SHOWN_CANDIDATES])
    more = f"\n  ... and {len(found) - _SHOWN_CANDIDATES} more" \
        if len(found) > _SHOWN_CANDIDATES else ""
    raise RunIdAmbiguous(f"{ref!r} matches {len(found)} runs in {where}; give more of the id:"
                         f"{shown}{more}")


async def resolve(source: RunSource, ref: str) -> Run:
    """The run ``ref`` names in ``source`` (its whole id, or a prefix)."""
    exact = await source.get(ref) if ref else None
    if exact is not None:
        return exact
    ids = [run_id async for run_id in source.run_ids()]
    found = await source.get(pick(ref, ids, source.where))
    if found is None:  # deleted between the listing and now
        raise RunIdUnknown(f"no run {ref!r} in {source.where}: it was just deleted")
    return found


async def describe(source: RunSource, ref: str) -> RunDetails:
    """The run ``ref`` names, with its container id."""
    run = await resolve(source, ref)
    created = await source.events(run.run_id, EventType.container_created)
    ids = [e.data.container_id for e in created if isinstance(e, ContainerCreatedEvent)]
    return RunDetails(run=run, container_id=ids[-1] if ids else None)


class StoreRuns:
    """A run store as a :class:`RunSource`: prefixes match among all its runs."""

    def __init__(self, store: RunStore, where: str = "this machine's store") -> None:
        self.store, self.where = store, where

    async def get(self, run_id: str) -> Run | None:
        try:
            return await self.store.get_run(run_id)
        except RunNotFound:
            return None

    async def run_ids(self) -> AsyncIterator[str]:
        before: str | None = None
        while page := await self.store.list_runs(limit=500, before=before):
            for run in page:
                yield run.run_id
            before = page[-1].run_id

    async def events(self, run_id: str, kind: EventType) -> list[Event]:
        return await self.store.list_events(run_id, types=[kind])


class ServerRuns:
    """A server as a :class:`RunSource`: prefixes match among its most recent runs."""

    def __init__(self, client: PyFlueClient, where: str) -> None:
        self.client = client
        self.where = f"the {SERVER_PREFIX_SCAN} most recent runs on {where}"

    async def get(self, run_id: str) -> Run | None:
        from pyflue.client import NotFoundError

        try:
            return await self.client.runs.get(run_id)
        except NotFoundError:
            return None

    async def run_ids(self) -> AsyncIterator[str]:
        for run in await self.client.runs.recent(SERVER_PREFIX_SCAN):
            yield run.run_id

    async def events(self, run_id: str, kind: EventType) -> list[Event]:
        return await self.client.runs.events(run_id, types=[kind])
