"""An in-memory run store for pure-logic tests. Same contract as the SQL store."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterable, AsyncIterator, Callable, Collection, Mapping, Sequence
from datetime import datetime
from typing import Any

from pyflue.errors import RunNotFound
from pyflue.events import Event, EventType
from pyflue.models import Artifact, Run, RunStatus, UploadInfo, utcnow
from pyflue.store.base import (
    NewEvent,
    Notifier,
    QueueSignal,
    RunUpdate,
    WorkerSeen,
    follow,
    key_taken,
    missing_run,
    run_id_taken,
)
from pyflue.store.updates import conflict, update_fields
from pyflue.store.values import (
    check_upload_owner,
    check_worker,
    json_form,
    new_events,
    new_run,
    utc,
)


def _order(run: Run) -> tuple[datetime, str]:
    """Where a run sorts: by creation, then by id (code point order, as the SQL store)."""
    return run.created_at, run.run_id


class MemoryStore:
    def __init__(self) -> None:
        # Kept as stored (pyflue.store.values); callers only ever get copies.
        self._runs: dict[str, Run] = {}
        self._events: dict[str, list[NewEvent]] = {}
        self._notifier = Notifier()
        self._workers: dict[str, datetime] = {}
        self._started: dict[str, datetime] = {}
        self._queue = QueueSignal()
        self._artifacts: dict[str, dict[str, Artifact]] = {}
        self._uploads: dict[str, list[tuple[UploadInfo, list[bytes]]]] = {}
        self._samples: dict[str, list[dict[str, Any]]] = {}

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def create_run(self, run: Run) -> Run:
        stored = new_run(run)
        if stored.run_id in self._runs:
            raise run_id_taken(stored.run_id)
        if stored.idempotency_key is not None and await self.find_run(
            stored.workflow, stored.idempotency_key, stored.tenant
        ):
            raise key_taken(stored.idempotency_key)
        self._runs[stored.run_id] = stored
        self._events[stored.run_id] = []
        if stored.status is RunStatus.queued and stored.owner is None:
            self._queue.fire()
        return stored.model_copy(deep=True)

    def on_queue_change(self, callback: Callable[[], None]) -> None:
        self._queue.listen(callback)

    def _run(self, run_id: str) -> Run:
        """The stored run itself (not a copy): for this store's own use."""
        try:
            return self._runs[run_id]
        except KeyError:
            raise missing_run(run_id) from None

    async def get_run(self, run_id: str) -> Run:
        return self._run(run_id).model_copy(deep=True)

    async def list_runs(
        self,
        *,
        status: RunStatus | None = None,
        workflow: str | None = None,
        limit: int = 50,
        before: str | None = None,
        oldest_first: bool = False,
        owner: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        id_contains: str | None = None,
        tenant: str | None = None,
    ) -> list[Run]:
        runs = sorted(self._runs.values(), key=_order, reverse=not oldest_first)
        if before is not None:
            pivot = _order(self._run(before))
            runs = [r for r in runs
                    if (_order(r) > pivot if oldest_first else _order(r) < pivot)]
        runs = [r for r in runs if status is None or r.status is status]
        runs = [r for r in runs if workflow is None or r.workflow == workflow]
        runs = [r for r in runs if owner is None or r.owner == owner]
        if created_after is not None:
            runs = [r for r in runs if r.created_at >= utc(created_after)]
        if created_before is not None:
            runs = [r for r in runs if r.created_at < utc(created_before)]
        if id_contains is not None:
            runs = [r for r in runs if id_contains.lower() in r.run_id.lower()]
        runs = [r for r in runs if tenant is None or r.tenant == tenant]
        return [r.model_copy(deep=True) for r in runs[:max(limit, 0)]]

    async def claim_runs(self, owner: str, limit: int, exclude: Collection[str] = (),
                         only: Collection[str] | None = None) -> list[Run]:
        check_worker(owner)
        if limit <= 0:
            return []
        free = sorted((r for r in self._runs.values()
                       if r.status is RunStatus.queued and r.owner is None
                       and r.run_id not in exclude
                       and (only is None or r.run_id in only)),
                      key=_order)
        now = utcnow()
        for run in free[:limit]:
            self._runs[run.run_id] = run.model_copy(update={
                "status": RunStatus.running, "owner": owner, "started_at": now})
        return [self._runs[r.run_id].model_copy(deep=True) for r in free[:limit]]

    async def find_run(self, workflow: str, idempotency_key: str,
                       tenant: str = "default") -> Run | None:
        for run in self._runs.values():
            if (run.workflow, run.idempotency_key, run.tenant) == (workflow, idempotency_key,
                                                                   tenant):
                return run.model_copy(deep=True)
        return None

    async def update_run(self, run_id: str, update: RunUpdate) -> Run:
        fields = update_fields(update)
        told = new_events(update.events)
        run = self._run(run_id)
        refused = conflict(run, update)
        if refused is not None:
            raise refused
        self._runs[run_id] = run.model_copy(update=fields)
        if update.samples is not None:
            self._samples[run_id] = json_form(list(update.samples), "a run's resource samples")
        if told:
            self._append(run_id, told)
        if update.status is RunStatus.queued:
            self._queue.fire()
        return await self.get_run(run_id)

    async def delete_run(self, run_id: str) -> None:
        self._runs.pop(run_id, None)
        self._events.pop(run_id, None)
        self._artifacts.pop(run_id, None)
        self._uploads.pop(run_id, None)
        self._samples.pop(run_id, None)
        self._notifier.publish(run_id)  # its followers look again, and find it gone

    async def put_artifact(self, run_id: str, artifact: Artifact) -> None:
        self._run(run_id)
        self._artifacts.setdefault(run_id, {})[artifact.name] = artifact.model_copy()

    async def list_artifacts(self, run_id: str) -> list[Artifact]:
        self._run(run_id)
        kept = self._artifacts.get(run_id, {})
        return [kept[name].model_copy() for name in sorted(kept)]

    async def delete_artifacts(self, run_id: str) -> None:
        self._artifacts.pop(run_id, None)

    async def add_upload(self, run_id: str, info: UploadInfo,
                         chunks: AsyncIterable[bytes]) -> int:
        check_upload_owner(run_id)
        data = [bytes(chunk) async for chunk in chunks]
        stored = self._uploads.setdefault(run_id, [])
        stored.append((info.model_copy(deep=True), data))
        return len(stored) - 1

    async def list_uploads(self, run_id: str) -> list[UploadInfo]:
        return [info.model_copy(deep=True) for info, _ in self._uploads.get(run_id, [])]

    async def read_upload(self, run_id: str, position: int) -> AsyncIterator[bytes]:
        stored = self._uploads.get(run_id, [])
        if not 0 <= position < len(stored):
            raise RunNotFound(f"run {run_id!r} has no upload {position}")
        for chunk in stored[position][1]:
            yield chunk

    async def copy_uploads(self, from_run: str, to_run: str) -> int:
        check_upload_owner(to_run)
        copied = [(info.model_copy(deep=True), list(data))
                  for info, data in self._uploads.get(from_run, [])]
        if copied:
            self._uploads.setdefault(to_run, []).extend(copied)
        return len(copied)

    async def put_samples(self, run_id: str, samples: Sequence[Mapping[str, Any]]) -> None:
        values = json_form(list(samples), "a run's resource samples")
        self._run(run_id)
        self._samples[run_id] = values

    async def get_samples(self, run_id: str) -> list[dict[str, Any]]:
        self._run(run_id)
        return copy.deepcopy(self._samples.get(run_id, []))

    async def append_events(self, run_id: str, events: Sequence[NewEvent]) -> list[Event]:
        told = new_events(events)
        self._run(run_id)
        return self._append(run_id, told) if told else []

    def _append(self, run_id: str, told: list[NewEvent]) -> list[Event]:
        stored = self._events[run_id]
        first = len(stored) + 1
        stored.extend(told)
        self._runs[run_id] = self._runs[run_id].model_copy(update={"event_count": len(stored)})
        self._notifier.publish(run_id)
        return [_event(run_id, first + i, e) for i, e in enumerate(told)]

    async def list_events(
        self,
        run_id: str,
        *,
        after: int = 0,
        limit: int | None = None,
        types: Sequence[EventType] | None = None,
    ) -> list[Event]:
        self._run(run_id)
        start = max(after, 0)
        picked = [(index, e) for index, e in enumerate(self._events[run_id][start:], start + 1)
                  if not types or e.type in types]
        if limit is not None:
            picked = picked[:max(limit, 0)]
        return [_event(run_id, index, e) for index, e in picked]

    async def heartbeat(self, worker: str) -> None:
        now = utcnow()
        self._workers[check_worker(worker)] = now
        self._started.setdefault(worker, now)

    async def worker_age(self, worker: str) -> float | None:
        seen = self._workers.get(worker)
        return None if seen is None else (utcnow() - seen).total_seconds()

    async def remove_worker(self, worker: str) -> None:
        self._workers.pop(worker, None)
        self._started.pop(worker, None)

    async def list_workers(self) -> list[WorkerSeen]:
        now = utcnow()
        return [WorkerSeen(worker, self._started[worker], seen, (now - seen).total_seconds())
                for worker, seen in sorted(self._workers.items())]

    def subscribe(self, run_id: str, *, after: int = 0) -> AsyncIterator[Event]:
        return follow(self, self._notifier, run_id, after)


def _event(run_id: str, index: int, stored: NewEvent) -> Event:
    """A stored event as a new object: its data shares nothing with the store's."""
    return NewEvent(stored.type, copy.deepcopy(stored.data), stored.timestamp).stored(
        run_id, index)
