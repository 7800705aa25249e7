"""The run store port: runs, their events, and live subscription.

Adapters: :mod:`pyflue.store.sql` (SQLAlchemy 2 async; SQLite by default, PostgreSQL) and
:mod:`pyflue.store.memory` (pure-logic tests). Every adapter answers every call the same way,
errors included (``tests/unit/test_store.py`` runs one contract suite over all of them):

- What is stored is what :mod:`pyflue.store.values` keeps (JSON values in their JSON form,
  timestamps in UTC, text and integers that fit the SQL columns); what is returned is a new
  object each time, so changing it changes nothing stored.
- Event indexes are gap-free per run, assigned inside the same write that stores the event;
  subscribers are woken only after that write.
- A run id that no run has is :class:`pyflue.errors.RunNotFound` wherever it names the run
  to use (:func:`missing_run`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterable, AsyncIterator, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from pyflue.errors import RunNotFound, RunStateConflict
from pyflue.events import Event, EventData, EventType, parse_event
from pyflue.models import Artifact, ErrorInfo, Run, RunStatus, UploadInfo, utcnow

log = logging.getLogger(__name__)


def missing_run(run_id: str) -> RunNotFound:
    """The error for a run id no run has: one message, in every adapter and every call."""
    return RunNotFound(f"no run {run_id!r}", hint="list runs with `pyflue runs`")


def run_id_taken(run_id: str) -> RunStateConflict:
    """The error for creating a run under an id a run already has."""
    return RunStateConflict(f"a run {run_id!r} exists: give the new run an id of its own "
                            "(pyflue.models.new_run_id)")


def key_taken(idempotency_key: str) -> RunStateConflict:
    """The error for creating a second run of a workflow with the same Idempotency-Key."""
    return RunStateConflict(f"a run with Idempotency-Key {idempotency_key!r} exists")


@dataclass(frozen=True)
class NewEvent:
    """An event before the store gives it an index: its type and its payload as stored."""

    type: EventType
    data: dict[str, Any]
    timestamp: datetime

    @classmethod
    def of(cls, data: EventData) -> NewEvent:
        """The event of a payload model, timestamped now."""
        return cls(data.type, data.wire, utcnow())

    def stored(self, run_id: str, index: int) -> Event:
        """The typed event this becomes once stored at ``index``."""
        return parse_event({"run_id": run_id, "event_index": index, "type": self.type,
                            "timestamp": self.timestamp, "data": self.data})


@dataclass
class RunUpdate:
    """Fields to change on a run; ``None`` leaves a field as it is."""

    status: RunStatus | None = None
    result: Any = None
    has_result: bool = False
    error: ErrorInfo | None = None
    reason: str | None = None
    image: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_ms: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # Only update when the run is in this status, else RunStateConflict (claims, cancels).
    expect_status: RunStatus | None = None
    # ... and at this attempt: a worker that was taken for lost cannot end (or requeue) the
    # next attempt of its run, which another worker may be running by then.
    expect_attempt: int | None = None
    # ... and with no cancel asked of it through another worker (``cancel_requested``).
    expect_no_cancel: bool = False
    # Stored in the same write, only if the update applies: a status change and the event
    # that tells of it (run_end, run_requeued) are never seen one without the other.
    events: Sequence[NewEvent] = ()
    # The run's resource samples, kept (as :meth:`RunStore.put_samples`) in the same write.
    samples: Sequence[Mapping[str, Any]] | None = None


@dataclass(frozen=True)
class WorkerSeen:
    """A worker as its heartbeats tell of it."""

    worker: str
    started_at: datetime
    seen_at: datetime
    age_seconds: float


class RunStore(Protocol):
    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def create_run(self, run: Run) -> Run:
        """Stores a new run with no events (``event_count`` 0, whatever ``run`` says) and
        returns it as :meth:`get_run` will. A queued run no process owns is signalled
        (:meth:`on_queue_change`).

        Raises RunStateConflict when a run with this id exists, or one of the same tenant and
        workflow with the same ``idempotency_key`` (the message says which); ConfigError for a value
        the store cannot keep (:mod:`pyflue.store.values`).
        """
        ...

    async def get_run(self, run_id: str) -> Run:
        """Raises :class:`pyflue.errors.RunNotFound`."""
        ...

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
        """Newest first (or oldest first) by ``created_at``, runs created at the same instant
        by ``run_id`` (code point order); at most ``limit`` of them (none for a ``limit``
        below 1). ``before`` is the run id to page after, in that order: RunNotFound when no
        run has it. ``status``, ``workflow``, ``owner`` and ``tenant`` filter, together, and so
        do ``created_after`` (inclusive), ``created_before`` (exclusive; naive times are UTC)
        and ``id_contains`` (a part of the run id, letter case ignored)."""
        ...

    async def claim_runs(self, owner: str, limit: int, exclude: Collection[str] = (),
                         only: Collection[str] | None = None) -> list[Run]:
        """Takes up to ``limit`` of the oldest queued runs that no process owns yet (a
        server's), as ``running`` under ``owner``, in one write: two workers never take the
        same run, and neither waits for the other (PostgreSQL: ``FOR UPDATE SKIP LOCKED``).
        Runs in ``exclude`` are left alone; with ``only``, just those runs are candidates (the
        scheduler's fair pick across tenants); a ``limit`` below 1 takes none. Returns the runs
        taken, oldest first (in :meth:`list_runs` order). ConfigError for an ``owner`` the
        store cannot keep."""
        ...

    async def find_run(self, workflow: str, idempotency_key: str,
                       tenant: str = "default") -> Run | None:
        """The run created for ``workflow`` with this Idempotency-Key by ``tenant``, if any
        (a key is unique per tenant and workflow)."""
        ...

    async def update_run(self, run_id: str, update: RunUpdate) -> Run:
        """Changes the given fields and stores ``update.events`` (as :meth:`append_events`
        does) in one write, then returns the run as it is.

        The update itself is checked first: ValueError when ``extra`` names a field the
        caller does not set (``run_id``, ``event_count``, not a :class:`Run` field) or holds a
        value of the wrong type; ConfigError for a value the store cannot keep. Then a missing
        run is RunNotFound, whatever the ``expect_*`` say; an ``expect_*`` that does not hold
        is RunStateConflict, and nothing is written.
        """
        ...

    async def delete_run(self, run_id: str) -> None:
        """Deletes a run and everything the store keeps of it (its events, its uploads) in
        one write; a missing run is not an error (its uploads, if any, go all the same). Its
        followers (:meth:`subscribe`) are woken, and raise RunNotFound. What lives outside the
        store (artifacts) is deleted first by :func:`pyflue.retention.forget_run`."""
        ...

    async def add_upload(self, run_id: str, info: UploadInfo,
                         chunks: AsyncIterable[bytes]) -> int:
        """Stores an archive sent with the invocation of ``run_id``, as its next upload, and
        returns its position (0, 1, ...). Called before the run's record is created, so the
        run need not exist yet; all of it is stored in one write, or nothing."""
        ...

    async def list_uploads(self, run_id: str) -> list[UploadInfo]:
        """The run's uploads, by position (none for an unknown run)."""
        ...

    def read_upload(self, run_id: str, position: int) -> AsyncIterator[bytes]:
        """The bytes of one upload, in the chunks it was stored in; RunNotFound (at the first
        iteration) when there is no such upload."""
        ...

    async def copy_uploads(self, from_run: str, to_run: str) -> int:
        """Gives ``to_run`` (not created yet) the uploads of ``from_run`` (a rerun sends the
        same files); returns how many."""
        ...

    async def put_artifact(self, run_id: str, artifact: Artifact) -> None:
        """Records an artifact of the run (its content is the artifact store's), replacing
        one of the same name. RunNotFound for a missing run."""
        ...

    async def list_artifacts(self, run_id: str) -> list[Artifact]:
        """The run's artifacts by name (code point order). RunNotFound for a missing run."""
        ...

    async def delete_artifacts(self, run_id: str) -> None:
        """Forgets the run's artifacts (:meth:`delete_run` does too); no run is not an
        error."""
        ...

    async def put_samples(self, run_id: str, samples: Sequence[Mapping[str, Any]]) -> None:
        """Keeps the run's resource samples (:mod:`pyflue.resources`), replacing those kept
        before; deleted with the run. RunNotFound for a missing run."""
        ...

    async def get_samples(self, run_id: str) -> list[dict[str, Any]]:
        """The run's resource samples as last kept (empty when none were). RunNotFound for a
        missing run."""
        ...

    async def append_events(self, run_id: str, events: Sequence[NewEvent]) -> list[Event]:
        """Stores events with the next gap-free indexes, then wakes subscribers; returns them
        as :meth:`list_events` will. RunNotFound for a missing run, even with no events."""
        ...

    async def list_events(
        self,
        run_id: str,
        *,
        after: int = 0,
        limit: int | None = None,
        types: Sequence[EventType] | None = None,
    ) -> list[Event]:
        """The run's events in index order: those after ``after`` (any integer: below 1 is
        from the first), of ``types`` (None or empty: every type), at most ``limit`` (None:
        all; below 1: none). RunNotFound for a missing run."""
        ...

    async def heartbeat(self, worker: str) -> None:
        """Records that ``worker`` (a scheduler's owner id) is alive now. ConfigError for a
        worker id the store cannot keep."""
        ...

    async def worker_age(self, worker: str) -> float | None:
        """Seconds since ``worker``'s last heartbeat, by the store's own clock (so hosts with
        skewed clocks agree); None if it never sent one (or signed off)."""
        ...

    async def remove_worker(self, worker: str) -> None:
        """Forgets a worker that stopped cleanly; an unknown worker is not an error."""
        ...

    async def list_workers(self) -> list[WorkerSeen]:
        """The workers that sent a heartbeat and did not sign off, by id; each with its
        first and last heartbeat and the seconds since the last (by the store's clock, as
        :meth:`worker_age`)."""
        ...

    def subscribe(self, run_id: str, *, after: int = 0) -> AsyncIterator[Event]:
        """Replays events after ``after``, then follows live; ends after ``run_end`` (at once
        when the run has finished and its ``run_end`` is at or before ``after``).
        The call itself never raises: a missing run is RunNotFound at the first iteration,
        and a run deleted while followed is RunNotFound at the next one."""
        ...

    def on_queue_change(self, callback: Callable[[], None]) -> None:
        """Calls ``callback`` (on the store's loop) when a run any process can take was
        queued: submitted to a server, or put back in the queue. PostgreSQL tells every
        process sharing the store (NOTIFY); the other adapters tell this process only. A
        callback that raises is logged: the write it tells of stands, and the other
        callbacks are still called."""
        ...


class QueueSignal:
    """The callbacks of :meth:`RunStore.on_queue_change` in this process."""

    def __init__(self) -> None:
        self._callbacks: list[Callable[[], None]] = []

    def listen(self, callback: Callable[[], None]) -> None:
        self._callbacks.append(callback)

    def fire(self) -> None:
        for callback in self._callbacks:
            try:
                callback()
            except Exception:  # the write it tells of is done; one listener's fault is its own
                log.exception("run store: a queue-change callback failed")


class Notifier:
    """Wakes in-process subscribers of a run after new events were stored.

    A waiter registers *before* it reads the store, so no wake-up falls between its read
    and its wait.
    """

    def __init__(self) -> None:
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}

    def register(self, run_id: str) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(run_id, set()).add(fut)
        return fut

    def discard(self, run_id: str, fut: asyncio.Future[None]) -> None:
        waiters = self._waiters.get(run_id)
        if waiters is not None:
            waiters.discard(fut)
            if not waiters:
                del self._waiters[run_id]

    def publish(self, run_id: str) -> None:
        for fut in self._waiters.pop(run_id, ()):
            if not fut.done():
                fut.set_result(None)


async def _ended_before(store: RunStore, run_id: str, after: int) -> bool:
    """Whether the run's run_end is stored at or before ``after`` (nothing more will come)."""
    run = await store.get_run(run_id)
    if not run.status.finished or run.event_count > after:
        return False
    ends = await store.list_events(run_id, types=[EventType.run_end], limit=1)
    return bool(ends) and ends[0].event_index <= after


async def follow(
    store: RunStore, notifier: Notifier, run_id: str, after: int,
    poll: float | Callable[[], float] | None = None,
) -> AsyncIterator[Event]:
    """The shared subscribe loop: page through stored events, wait for more, stop at run_end.

    In-process writers wake the loop at once; with ``poll`` set it also looks again every
    ``poll`` seconds, for writers in other processes sharing the database.
    """
    await store.get_run(run_id)  # RunNotFound before anything else
    while True:
        waiter = notifier.register(run_id)
        try:
            events = await store.list_events(run_id, after=after, limit=500)
            for event in events:
                after = event.event_index
                yield event
                if event.type is EventType.run_end:
                    return
            if not events and await _ended_before(store, run_id, after):
                return
            if not events:
                if poll is None:
                    await waiter
                else:
                    await asyncio.wait([waiter], timeout=poll() if callable(poll) else poll)
        finally:
            notifier.discard(run_id, waiter)
