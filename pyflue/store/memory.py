"""An in-memory run store for pure-logic tests. Same contract as the SQL store."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Collection, Sequence
from datetime import datetime

from pyflue.errors import RunNotFound, RunStateConflict
from pyflue.events import Event, EventType
from pyflue.models import Run, RunStatus, utcnow
from pyflue.store.base import NewEvent, Notifier, QueueSignal, RunUpdate, follow
from pyflue.store.updates import conflict, update_fields
from pyflue.store.values import check_worker, new_events, new_run


class MemoryStore:
    def __init__(self) -> None:
        self._runs: dict[str, Run] = {}
        self._events: dict[str, list[Event]] = {}
        self._notifier = Notifier()
        self._workers: dict[str, datetime] = {}
        self._queue = QueueSignal()

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def create_run(self, run: Run) -> Run:
        stored = new_run(run)
        if stored.idempotency_key is not None and await self.find_run(
            stored.workflow, stored.idempotency_key
        ):
            raise RunStateConflict(
                f"a run with Idempotency-Key {stored.idempotency_key!r} exists")
        self._runs[stored.run_id] = stored
        self._events[stored.run_id] = []
        if stored.status is RunStatus.queued and stored.owner is None:
            self._queue.fire()
        return stored.model_copy()

    def on_queue_change(self, callback: Callable[[], None]) -> None:
        self._queue.listen(callback)

    async def get_run(self, run_id: str) -> Run:
        try:
            return self._runs[run_id].model_copy()
        except KeyError:
            raise RunNotFound(f"no run {run_id!r}: list runs with `pyflue runs`") from None

    async def list_runs(
        self,
        *,
        status: RunStatus | None = None,
        workflow: str | None = None,
        limit: int = 50,
        before: str | None = None,
        oldest_first: bool = False,
        owner: str | None = None,
    ) -> list[Run]:
        runs = sorted(self._runs.values(), key=lambda r: (r.created_at, r.run_id),
                      reverse=not oldest_first)
        if before is not None:
            pivot = self._runs.get(before)
            if pivot is not None:
                key = (pivot.created_at, pivot.run_id)
                runs = [r for r in runs
                        if ((r.created_at, r.run_id) > key if oldest_first
                            else (r.created_at, r.run_id) < key)]
        runs = [r for r in runs if status is None or r.status is status]
        runs = [r for r in runs if workflow is None or r.workflow == workflow]
        runs = [r for r in runs if owner is None or r.owner == owner]
        return [r.model_copy() for r in runs[:limit]]

    async def claim_runs(self, owner: str, limit: int,
                         exclude: Collection[str] = ()) -> list[Run]:
        check_worker(owner)
        if limit <= 0:
            return []
        free = sorted((r for r in self._runs.values()
                       if r.status is RunStatus.queued and r.owner is None
                       and r.run_id not in exclude),
                      key=lambda r: (r.created_at, r.run_id))
        now = utcnow()
        for run in free[:limit]:
            self._runs[run.run_id] = run.model_copy(update={
                "status": RunStatus.running, "owner": owner, "started_at": now})
        return [self._runs[r.run_id].model_copy() for r in free[:limit]]

    async def find_run(self, workflow: str, idempotency_key: str) -> Run | None:
        for run in self._runs.values():
            if run.workflow == workflow and run.idempotency_key == idempotency_key:
                return run.model_copy()
        return None

    async def update_run(self, run_id: str, update: RunUpdate) -> Run:
        fields = update_fields(update)
        told = new_events(update.events)
        run = await self.get_run(run_id)
        refused = conflict(run, update)
        if refused is not None:
            raise refused
        self._runs[run_id] = run.model_copy(update=fields)
        if told:
            await self.append_events(run_id, told)
        if update.status is RunStatus.queued:
            self._queue.fire()
        return self._runs[run_id].model_copy()

    async def delete_run(self, run_id: str) -> None:
        self._runs.pop(run_id, None)
        self._events.pop(run_id, None)

    async def append_events(self, run_id: str, events: Sequence[NewEvent]) -> list[Event]:
        told = new_events(events)
        run = await self.get_run(run_id)
        stored = self._events[run_id]
        out = [e.stored(run_id, len(stored) + i + 1) for i, e in enumerate(told)]
        stored.extend(out)
        self._runs[run_id] = run.model_copy(update={"event_count": len(stored)})
        self._notifier.publish(run_id)
        return out

    async def list_events(
        self,
        run_id: str,
        *,
        after: int = 0,
        limit: int | None = None,
        types: Sequence[EventType] | None = None,
    ) -> list[Event]:
        await self.get_run(run_id)
        events = [e for e in self._events[run_id][after:] if not types or e.type in types]
        return events if limit is None else events[:limit]

    async def heartbeat(self, worker: str) -> None:
        self._workers[check_worker(worker)] = utcnow()

    async def worker_age(self, worker: str) -> float | None:
        seen = self._workers.get(worker)
        return None if seen is None else (utcnow() - seen).total_seconds()

    async def remove_worker(self, worker: str) -> None:
        self._workers.pop(worker, None)

    def subscribe(self, run_id: str, *, after: int = 0) -> AsyncIterator[Event]:
        return follow(self, self._notifier, run_id, after)
