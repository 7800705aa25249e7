"""An in-memory run store for pure-logic tests. Same contract as the SQL store."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from datetime import datetime

from pyflue.events import Event, EventType
from pyflue.models import Run, RunStatus, utcnow
from pyflue.store.base import (
    NewEvent,
    Notifier,
    QueueSignal,
    RunUpdate,
    follow,
    key_taken,
    missing_run,
    run_id_taken,
)
from pyflue.store.updates import conflict, update_fields
from pyflue.store.values import check_worker, new_events, new_run


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
        self._queue = QueueSignal()

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
        if told:
            self._append(run_id, told)
        if update.status is RunStatus.queued:
            self._queue.fire()
        return await self.get_run(run_id)

    async def delete_run(self, run_id: str) -> None:
        self._runs.pop(run_id, None)
        self._events.pop(run_id, None)
        self._notifier.publish(run_id)  # its followers look again, and find it gone

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
        self._workers[check_worker(worker)] = utcnow()

    async def worker_age(self, worker: str) -> float | None:
        seen = self._workers.get(worker)
        return None if seen is None else (utcnow() - seen).total_seconds()

    async def remove_worker(self, worker: str) -> None:
        self._workers.pop(worker, None)

    def subscribe(self, run_id: str, *, after: int = 0) -> AsyncIterator[Event]:
        return follow(self, self._notifier, run_id, after)


def _event(run_id: str, index: int, stored: NewEvent) -> Event:
    """A stored event as a new object: its data shares nothing with the store's."""
    return NewEvent(stored.type, copy.deepcopy(stored.data), stored.timestamp).stored(
        run_id, index)
