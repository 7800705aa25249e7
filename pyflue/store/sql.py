"""The SQL run store: SQLAlchemy 2 async, SQLite by default, any async URL by setting.

The schema is created and upgraded by alembic migrations on :meth:`SqlStore.open`.
Event indexes come from ``runs.event_count``, incremented in the same transaction that inserts
the events, so indexes are gap-free per run even with several writers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Callable,
    Collection,
    Iterator,
    Mapping,
    Sequence,
)
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from alembic.util import CommandError
from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    and_,
    create_engine,
    delete,
    event,
    func,
    insert,
    literal,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from pyflue._bridge import ThreadBridge, run_to_completion
from pyflue.errors import RunNotFound, RunStateConflict, StoreError
from pyflue.events import Event, EventType, parse_event
from pyflue.models import Artifact, ErrorInfo, ResourceSummary, Run, RunStatus, UploadInfo, utcnow
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
from pyflue.store.schema import (
    artifacts,
    events,
    run_samples,
    runs,
    upload_chunks,
    uploads,
    workers,
)
from pyflue.store.updates import conflict, update_fields
from pyflue.store.values import (
    MAX_BOUND,
    check_upload_owner,
    check_worker,
    json_form,
    new_events,
    new_run,
    utc,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

# How often a follower looks for events written by other processes (another `pyflue run`).
POLL_SECONDS = 0.5
SQLITE_READERS = 4  # threads reading an SQLite store at once (WAL: readers never wait)
# With PostgreSQL, other processes' writes arrive by LISTEN/NOTIFY; polling is a safety net.
LISTENING_POLL_SECONDS = 5.0
EVENTS_CHANNEL = "pyflue_events"
QUEUE_CHANNEL = "pyflue_queue"  # a run any worker can take was queued


def _aware(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _maybe_aware(value: datetime | None) -> datetime | None:
    return None if value is None else _aware(value)


def _absent(*keys: str | None) -> bool:
    """Whether no row can have these keys: no stored text holds NUL (PostgreSQL's cannot, so
    no adapter keeps it), and asking PostgreSQL about one would be an error, not a miss."""
    return any(key is not None and "\x00" in key for key in keys)


def _run_from_row(row: Any) -> Run:
    m = row._mapping
    return Run(
        run_id=m["run_id"],
        workflow=m["workflow"],
        status=RunStatus(m["status"]),
        payload=m["payload"],
        result=m["result"],
        error=ErrorInfo(**m["error"]) if m["error"] else None,
        reason=m["reason"],
        image=m["image"],
        source=m["source"],
        owner=m["owner"],
        created_at=_aware(m["created_at"]),
        started_at=_maybe_aware(m["started_at"]),
        finished_at=_maybe_aware(m["finished_at"]),
        duration_ms=m["duration_ms"],
        event_count=m["event_count"],
        idempotency_key=m["idempotency_key"],
        cancel_requested=m["cancel_requested"],
        attempt=m["attempt"],
        container_id=m["container_id"],
        container_removed_at=_maybe_aware(m["container_removed_at"]),
        trace_id=m["trace_id"],
        traceparent=m["traceparent"],
        resources=ResourceSummary(**m["resources"]) if m["resources"] else None,
        tenant=m["tenant"],
        requested_by=m["requested_by"],
    )


def _event_from_row(row: Any) -> Event:
    m = row._mapping
    return parse_event({"run_id": m["run_id"], "event_index": m["event_index"],
                        "type": m["type"], "timestamp": _aware(m["timestamp"]),
                        "data": m["data"]})


def _run_migrations(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        # Workers starting together on an empty database: one migrates, the others wait for
        # it (the lock ends with this transaction), then find nothing left to do.
        connection.execute(text("SELECT pg_advisory_xact_lock(7295102211)"))
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, "head")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


NOT_OPEN = "the run store is not open: call `await store.open()` first"


def _in_transaction(engine: Engine, body: Callable[[Connection], T]) -> T:
    with engine.begin() as conn:
        return body(conn)


def _on_connection(engine: Engine, body: Callable[[Connection], T]) -> T:
    with engine.connect() as conn:
        return body(conn)


def _count_events(run_id: str, n: int) -> Any:
    """Makes room for ``n`` more events of a run; returns its new count (None: no such run)."""
    return (update(runs).where(runs.c.run_id == run_id)
            .values(event_count=runs.c.event_count + n).returning(runs.c.event_count))


def _event_rows(run_id: str, first: int, new: Sequence[NewEvent]) -> list[dict[str, Any]]:
    return [{"run_id": run_id, "event_index": first + i, "type": e.type.value,
             "timestamp": e.timestamp, "data": e.data} for i, e in enumerate(new)]


class SqlStore:
    """Run store over SQLAlchemy.

    ``url`` is an async SQLAlchemy URL such as ``sqlite+aiosqlite:///path/pyflue.db`` or
    ``postgresql+asyncpg://user@host/db``. Each read and write is a synchronous body over a
    ``Connection``: for SQLite on a file it runs on the store's own threads (one writer, a few
    readers) through a synchronous engine, one hop from the loop; otherwise through the async
    engine's ``run_sync``. Migrations and uploads (streamed in) use the async engine.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._url = make_url(url)
        self._is_sqlite = self._url.get_backend_name() == "sqlite"
        self._is_postgres = self._url.get_backend_name() == "postgresql"
        self._engine: AsyncEngine | None = None
        self._notifier = Notifier()
        self._listener: Any = None  # PostgreSQL: a connection of its own, LISTENing
        self._relisten_task: asyncio.Task[None] | None = None
        self._queue = QueueSignal()
        # SQLite has one writer at a time; queueing writers here avoids busy-waiting on its lock.
        self._write_lock = asyncio.Lock() if self._is_sqlite else None
        # SQLite, on a file: every read and write runs as one synchronous transaction on the
        # store's own threads (one writer, a few readers), one hop each. Through aiosqlite each
        # statement, cursor, commit and pool reset is a hop between the loop and its thread:
        # about 1 ms of the loop's CPU per write (see docs/performance.md).
        self._sync_engine: Engine | None = None
        self._writer: ThreadBridge | None = None
        self._readers: ThreadBridge | None = None

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            raise StoreError(NOT_OPEN)
        return self._engine

    async def open(self) -> None:
        if self._engine is not None:
            return
        if self._is_sqlite and self._url.database not in (None, "", ":memory:"):
            path = Path(self._url.database)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(
                    f"cannot create the run store folder {path.parent}: {exc.strerror}; "
                    "set PYFLUE_STORE_URL to a writable location"
                ) from exc
        try:
            engine = create_async_engine(self.url)
        except (SQLAlchemyError, ImportError, ValueError) as exc:
            raise StoreError(f"cannot use store URL {self._safe_url()}: {exc}") from exc
        if self._is_sqlite:
            event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        try:
            async with engine.begin() as conn:
                await conn.run_sync(_run_migrations)
        except (SQLAlchemyError, OSError, CommandError) as exc:
            await engine.dispose()
            hint = ("check the path is writable" if self._is_sqlite else
                    "check the database server is running and reachable, and the user and "
                    "password in PYFLUE_STORE_URL / PYFLUE_STORE_PASSWORD")
            raise StoreError(
                f"cannot open the run store: {exc.__class__.__name__}: "
                f"{str(exc).splitlines()[0]}; {hint}",
                hint=f"the store is {self._safe_url()}; try `pyflue doctor`",
            ) from exc
        self._engine = engine
        if self._is_sqlite and self._url.database not in (None, "", ":memory:"):
            self._sync_engine = create_engine(self._url.set(drivername="sqlite"),
                                              pool_size=SQLITE_READERS + 1)
            event.listen(self._sync_engine, "connect", _sqlite_pragmas)
            self._writer = ThreadBridge(max_workers=1, name="pyflue-sqlite-write")
            self._readers = ThreadBridge(max_workers=SQLITE_READERS, name="pyflue-sqlite-read")
        if self._is_postgres:
            await self._listen()

    async def _listen(self) -> None:
        """Wakes this process's followers when any process stores events (NOTIFY on append).

        If the listening connection cannot be made or drops, followers poll every
        POLL_SECONDS instead: slower to see other processes' events, never blind to them.
        """
        import asyncpg  # the PostgreSQL driver; only needed here

        # The engine's own connect arguments, so URL options such as ?ssl=require hold here too;
        # minus the ones SQLAlchemy's adapter consumes itself.
        _, params = self.engine.dialect.create_connect_args(self._url)
        for adapter_only in ("prepared_statement_cache_size", "prepared_statement_name_func",
                             "async_creator_fn"):
            params.pop(adapter_only, None)
        try:
            conn = await asyncpg.connect(**params)
            await conn.add_listener(EVENTS_CHANNEL, self._on_notify)
            await conn.add_listener(QUEUE_CHANNEL, self._on_queue_notify)
        except (OSError, TypeError, asyncpg.PostgresError) as exc:
            log.warning("run store: LISTEN failed (%s); followers will poll", exc)
            return
        conn.add_termination_listener(self._on_listener_lost)
        self._listener = conn

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, run_id: str) -> None:
        self._notifier.publish(run_id)

    def _on_queue_notify(self, _conn: Any, _pid: int, _channel: str, _run_id: str) -> None:
        self._queue.fire()

    def on_queue_change(self, callback: Callable[[], None]) -> None:
        self._queue.listen(callback)

    def _queued_here(self) -> None:
        if self._listener is None:  # else this process's own NOTIFY comes back to it
            self._queue.fire()

    def _tell_queue(self, conn: Connection, run_id: str) -> None:
        """Within a write that queued a run: every worker is told when it commits."""
        if self._is_postgres:
            conn.execute(select(func.pg_notify(QUEUE_CHANNEL, run_id)))

    def _on_listener_lost(self, conn: Any) -> None:
        if conn is self._listener:  # not a close of ours
            log.warning("run store: the LISTEN connection dropped; polling until it is back")
            self._listener = None
            self._relisten_task = asyncio.get_running_loop().create_task(self._relisten())

    async def _relisten(self) -> None:
        """Reopens the LISTEN connection with backoff (1 s doubling to 30 s) while open."""
        delay = 1.0
        while self._engine is not None and self._listener is None:
            await asyncio.sleep(delay)
            await self._listen()
            delay = min(delay * 2, 30.0)

    async def close(self) -> None:
        if self._relisten_task is not None:
            self._relisten_task.cancel()
            self._relisten_task = None
        if self._listener is not None:
            listener, self._listener = self._listener, None
            with contextlib.suppress(Exception):
                await listener.close(timeout=5)
        if self._writer is not None and self._readers is not None and self._sync_engine:
            assert self._write_lock is not None
            async with self._write_lock:  # the write under way ends first
                writer, readers, engine = self._writer, self._readers, self._sync_engine
                self._writer = self._readers = self._sync_engine = None
                await readers.stop()  # the reads under way end too
                await writer.call(engine.dispose)
                await writer.stop()
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None

    def _safe_url(self) -> str:
        return self._url.render_as_string(hide_password=True)

    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        lock = self._write_lock or contextlib.nullcontext()
        async with lock:
            with self._translated("writing to"):
                async with self.engine.begin() as conn:
                    yield conn

    @contextlib.asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncConnection]:
        with self._translated("reading"):
            async with self.engine.connect() as conn:
                yield conn

    async def _in_write(self, body: Callable[[Connection], T]) -> T:
        """Runs ``body`` as one write transaction: on SQLite's writer thread (one hop), or
        through the async engine (PostgreSQL, an in-memory SQLite).

        On the thread, a write runs to its end (and commits) even when its caller is
        cancelled meanwhile; the caller is cancelled once it has, and the lock is held until
        then, so the next write never finds the database locked by it."""
        if self._writer is not None and self._write_lock is not None:
            async with self._write_lock:
                writer, engine = self._writer, self._sync_engine
                if writer is None or engine is None:  # closed while this waited
                    raise StoreError(NOT_OPEN)
                with self._translated("writing to"):
                    return await run_to_completion(writer.call(_in_transaction, engine, body))
        async with self._write() as conn:
            return await conn.run_sync(body)

    async def _in_read(self, body: Callable[[Connection], T]) -> T:
        """Runs ``body`` on a connection of its own: on an SQLite reader thread, or through
        the async engine."""
        readers, engine = self._readers, self._sync_engine
        if readers is not None and engine is not None:
            with self._translated("reading"):
                return await readers.call(_on_connection, engine, body)
        async with self._read() as conn:
            return await conn.run_sync(body)

    async def _all(self, query: Any) -> list[Any]:
        return await self._in_read(lambda conn: list(conn.execute(query).all()))

    async def _first(self, query: Any) -> Any:
        return await self._in_read(lambda conn: conn.execute(query).first())

    async def _scalar(self, query: Any) -> Any:
        return await self._in_read(lambda conn: conn.execute(query).scalar())

    @contextlib.contextmanager
    def _translated(self, what: str) -> Iterator[None]:
        try:
            yield
        except (SQLAlchemyError, OSError) as exc:
            cause = getattr(exc, "orig", None) or exc
            text = (str(cause).strip().splitlines() or [type(cause).__name__])[0][:300]
            raise StoreError(
                f"{what} the run store failed: {text}; check it is reachable and writable",
                hint=f"the store is {self._safe_url()}; try `pyflue doctor`",
            ) from exc

    async def create_run(self, run: Run) -> Run:
        stored = new_run(run)
        values = stored.model_dump(mode="json")
        values.update(
            status=stored.status.value,
            created_at=stored.created_at,
            started_at=stored.started_at,
            finished_at=stored.finished_at,
        )
        takeable = stored.status is RunStatus.queued and stored.owner is None
        def body(conn: Connection) -> None:
            conn.execute(insert(runs).values(**values))
            if takeable:
                self._tell_queue(conn, stored.run_id)

        try:
            await self._in_write(body)
        except StoreError as exc:
            if isinstance(exc.__cause__, IntegrityError):
                raise await self._clash(stored) from exc
            raise
        if takeable:
            self._queued_here()
        return stored

    async def _clash(self, run: Run) -> Exception:
        """Which unique key a run that could not be inserted shares with a stored one."""
        same_id = await self._first(select(runs.c.run_id).where(runs.c.run_id == run.run_id))
        if same_id is not None or run.idempotency_key is None:
            return run_id_taken(run.run_id)
        return key_taken(run.idempotency_key)

    async def get_run(self, run_id: str) -> Run:
        if _absent(run_id):
            raise missing_run(run_id)
        row = await self._first(select(runs).where(runs.c.run_id == run_id))
        if row is None:
            raise missing_run(run_id)
        return _run_from_row(row)

    def _run_id_order(self) -> ColumnElement[str]:
        """``run_id`` compared by code point, as in every adapter (PostgreSQL would otherwise
        use the database's collation, which may sort 'A' after 'a')."""
        return runs.c.run_id.collate("C") if self._is_postgres else runs.c.run_id

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
        if limit <= 0 or _absent(workflow, owner, id_contains, tenant):
            if before is not None:
                await self.get_run(before)  # an unknown cursor is RunNotFound all the same
            return []
        run_id = self._run_id_order()
        if oldest_first:
            order = (runs.c.created_at.asc(), run_id.asc())
        else:
            order = (runs.c.created_at.desc(), run_id.desc())
        query = select(runs).order_by(*order).limit(min(limit, MAX_BOUND))
        if status is not None:
            query = query.where(runs.c.status == status.value)
        if workflow is not None:
            query = query.where(runs.c.workflow == workflow)
        if owner is not None:
            query = query.where(runs.c.owner == owner)
        if created_after is not None:
            query = query.where(runs.c.created_at >= utc(created_after))
        if created_before is not None:
            query = query.where(runs.c.created_at < utc(created_before))
        if id_contains is not None:
            query = query.where(func.lower(runs.c.run_id).contains(id_contains.lower(),
                                                                  autoescape=True))
        if tenant is not None:
            query = query.where(runs.c.tenant == tenant)
        if before is not None:
            pivot = (await self.get_run(before)).created_at
            if oldest_first:
                query = query.where(or_(
                    runs.c.created_at > pivot,
                    and_(runs.c.created_at == pivot, run_id > before),
                ))
            else:
                query = query.where(or_(
                    runs.c.created_at < pivot,
                    and_(runs.c.created_at == pivot, run_id < before),
                ))
        return [_run_from_row(r) for r in await self._all(query)]

    async def claim_runs(self, owner: str, limit: int, exclude: Collection[str] = (),
                         only: Collection[str] | None = None) -> list[Run]:
        check_worker(owner)
        if only is not None:
            only = [run_id for run_id in only if not _absent(run_id)]
        if limit <= 0 or only == []:
            return []
        pick = (select(runs.c.run_id)
                .where(runs.c.status == RunStatus.queued.value, runs.c.owner.is_(None))
                .order_by(runs.c.created_at.asc(), self._run_id_order().asc())
                .limit(min(limit, MAX_BOUND)))
        exclude = [run_id for run_id in exclude if not _absent(run_id)]
        if exclude:
            pick = pick.where(runs.c.run_id.not_in(exclude))
        if only is not None:
            pick = pick.where(runs.c.run_id.in_(only))
        if self._is_postgres:  # rows another worker is claiming are passed over, not waited on
            pick = pick.with_for_update(skip_locked=True)
        # A CTE, evaluated once: as an IN (subquery), PostgreSQL may run a SKIP LOCKED
        # subquery again per row and take more than `limit` runs.
        picked = pick.cte("picked")
        query = (update(runs)
                 .where(runs.c.run_id == picked.c.run_id,
                        runs.c.status == RunStatus.queued.value)  # rechecked under the lock
                 .values(status=RunStatus.running.value, owner=owner, started_at=utcnow())
                 .returning(*runs.c))
        rows = await self._in_write(lambda conn: list(conn.execute(query).all()))
        return sorted((_run_from_row(r) for r in rows), key=lambda r: (r.created_at, r.run_id))

    async def find_run(self, workflow: str, idempotency_key: str,
                       tenant: str = "default") -> Run | None:
        if _absent(workflow, idempotency_key, tenant):
            return None
        query = select(runs).where(
            runs.c.workflow == workflow, runs.c.idempotency_key == idempotency_key,
            runs.c.tenant == tenant,
        )
        row = await self._first(query)
        return None if row is None else _run_from_row(row)

    async def update_run(self, run_id: str, update_: RunUpdate) -> Run:
        fields = update_fields(update_)
        told = new_events(update_.events)
        samples = (None if update_.samples is None
                   else json_form(list(update_.samples), "a run's resource samples"))
        if _absent(run_id):
            raise missing_run(run_id)
        if "status" in fields:
            fields["status"] = RunStatus(fields["status"]).value
        if fields.get("error") is not None:
            fields["error"] = fields["error"].model_dump()
        if fields.get("resources") is not None:
            fields["resources"] = fields["resources"].model_dump(mode="json")
        if not fields:  # still checked and applied as one write: its expectations, its events
            fields = {"event_count": runs.c.event_count}
        query = update(runs).where(runs.c.run_id == run_id).values(**fields)
        if update_.expect_status is not None:
            query = query.where(runs.c.status == update_.expect_status.value)
        if update_.expect_attempt is not None:
            query = query.where(runs.c.attempt == update_.expect_attempt)
        if update_.expect_no_cancel:
            query = query.where(runs.c.cancel_requested.is_(None))
        def body(conn: Connection) -> bool:
            if conn.execute(query).rowcount == 0:
                return False
            if told:
                self._append(conn, run_id, told)
            if samples is not None:
                conn.execute(delete(run_samples).where(run_samples.c.run_id == run_id))
                conn.execute(insert(run_samples).values(run_id=run_id, samples=samples))
            if update_.status is RunStatus.queued:
                self._tell_queue(conn, run_id)
            return True

        applied = await self._in_write(body)
        if not applied:
            run = await self.get_run(run_id)  # RunNotFound when it does not exist
            refused = conflict(run, update_)
            if refused is None:  # it changed back meanwhile: still not applied
                refused = RunStateConflict(f"run {run_id} changed while it was updated")
            raise refused
        if update_.events:
            self._notifier.publish(run_id)
        if update_.status is RunStatus.queued:
            self._queued_here()
        return await self.get_run(run_id)

    async def delete_run(self, run_id: str) -> None:
        if _absent(run_id):
            return
        def body(conn: Connection) -> None:
            for table in (events, artifacts, upload_chunks, uploads, run_samples, runs):
                conn.execute(delete(table).where(table.c.run_id == run_id))
            if self._is_postgres:  # followers in other processes look again, and find it gone
                conn.execute(select(func.pg_notify(EVENTS_CHANNEL, run_id)))

        await self._in_write(body)
        self._notifier.publish(run_id)

    async def put_artifact(self, run_id: str, artifact: Artifact) -> None:
        if _absent(run_id):
            raise missing_run(run_id)
        await self.get_run(run_id)
        row = artifact.model_dump()
        def body(conn: Connection) -> None:  # replaced in one write: never two of one name
            conn.execute(delete(artifacts).where(artifacts.c.run_id == run_id,
                                                 artifacts.c.name == artifact.name))
            conn.execute(insert(artifacts).values(run_id=run_id, **row))

        await self._in_write(body)

    async def list_artifacts(self, run_id: str) -> list[Artifact]:
        await self.get_run(run_id)
        name = artifacts.c.name.collate("C") if self._is_postgres else artifacts.c.name
        query = select(artifacts).where(artifacts.c.run_id == run_id).order_by(name)
        rows = await self._all(query)
        return [Artifact(name=r.name, size=r.size, sha256=r.sha256,
                         content_type=r.content_type, path=r.path,
                         saved_at=_aware(r.saved_at)) for r in rows]

    async def delete_artifacts(self, run_id: str) -> None:
        if _absent(run_id):
            return
        await self._in_write(
            lambda conn: conn.execute(delete(artifacts).where(artifacts.c.run_id == run_id)))

    async def add_upload(self, run_id: str, info: UploadInfo,
                         chunks: AsyncIterable[bytes]) -> int:
        check_upload_owner(run_id)
        async with self._write() as conn:
            position = (await conn.execute(
                select(func.count()).select_from(uploads).where(uploads.c.run_id == run_id)
            )).scalar_one()
            await conn.execute(insert(uploads).values(
                run_id=run_id, position=position, info=info.model_dump(mode="json")))
            seq = 0
            async for chunk in chunks:
                await conn.execute(insert(upload_chunks).values(
                    run_id=run_id, position=position, seq=seq, data=chunk))
                seq += 1
        return int(position)

    async def list_uploads(self, run_id: str) -> list[UploadInfo]:
        if _absent(run_id):
            return []
        query = select(uploads.c.info).where(uploads.c.run_id == run_id).order_by(
            uploads.c.position)
        return [UploadInfo.model_validate(r[0]) for r in await self._all(query)]

    async def read_upload(self, run_id: str, position: int) -> AsyncIterator[bytes]:
        if not 0 <= position < len(await self.list_uploads(run_id)):
            raise RunNotFound(f"run {run_id!r} has no upload {position}")
        seq = 0
        while True:  # one chunk per query: a large upload is never held whole
            query = select(upload_chunks.c.data).where(
                upload_chunks.c.run_id == run_id, upload_chunks.c.position == position,
                upload_chunks.c.seq == seq)
            data = await self._scalar(query)
            if data is None:
                return
            yield bytes(data)
            seq += 1

    async def copy_uploads(self, from_run: str, to_run: str) -> int:
        check_upload_owner(to_run)
        if _absent(from_run):
            return 0
        def body(conn: Connection) -> int:
            done = conn.execute(insert(uploads).from_select(
                ["run_id", "position", "info"],
                select(literal(to_run, runs.c.run_id.type), uploads.c.position, uploads.c.info)
                .where(uploads.c.run_id == from_run)))
            conn.execute(insert(upload_chunks).from_select(
                ["run_id", "position", "seq", "data"],
                select(literal(to_run, runs.c.run_id.type), upload_chunks.c.position,
                       upload_chunks.c.seq, upload_chunks.c.data)
                .where(upload_chunks.c.run_id == from_run)))
            return max(done.rowcount, 0)

        return await self._in_write(body)

    async def put_samples(self, run_id: str, samples: Sequence[Mapping[str, Any]]) -> None:
        values = json_form(list(samples), "a run's resource samples")
        if _absent(run_id):
            raise missing_run(run_id)
        await self.get_run(run_id)  # RunNotFound
        def body(conn: Connection) -> None:
            conn.execute(delete(run_samples).where(run_samples.c.run_id == run_id))
            conn.execute(insert(run_samples).values(run_id=run_id, samples=values))

        await self._in_write(body)

    async def get_samples(self, run_id: str) -> list[dict[str, Any]]:
        if _absent(run_id):
            raise missing_run(run_id)
        row = await self._first(select(run_samples.c.samples).where(
            run_samples.c.run_id == run_id))
        if row is None:
            await self.get_run(run_id)  # RunNotFound
            return []
        return list(row[0])

    async def append_events(self, run_id: str, new: Sequence[NewEvent]) -> list[Event]:
        told = new_events(new)
        if not told:
            await self.get_run(run_id)  # an unknown run is RunNotFound, with events or without
            return []
        if _absent(run_id):
            raise missing_run(run_id)
        first = await self._in_write(lambda conn: self._append(conn, run_id, told))
        self._notifier.publish(run_id)
        return [e.stored(run_id, first + i) for i, e in enumerate(told)]

    def _append(self, conn: Connection, run_id: str, new: Sequence[NewEvent]) -> int:
        """Stores events with the next indexes inside the caller's transaction; returns the
        index of the first."""
        last = conn.execute(_count_events(run_id, len(new))).scalar()
        if last is None:
            raise missing_run(run_id)
        first = int(last) - len(new) + 1
        conn.execute(insert(events), _event_rows(run_id, first, new))
        if self._is_postgres:  # delivered to every listener when this commits
            conn.execute(select(func.pg_notify(EVENTS_CHANNEL, run_id)))
        return first

    async def list_events(
        self,
        run_id: str,
        *,
        after: int = 0,
        limit: int | None = None,
        types: Sequence[EventType] | None = None,
    ) -> list[Event]:
        if _absent(run_id):
            raise missing_run(run_id)
        if limit is not None and limit <= 0:
            await self.get_run(run_id)
            return []
        # Any cursor: past the last index any database holds is past every event.
        cursor = literal(min(max(after, 0), MAX_BOUND), BigInteger)
        query = (
            select(events)
            .where(events.c.run_id == run_id, events.c.event_index > cursor)
            .order_by(events.c.event_index)
        )
        if types:
            query = query.where(events.c.type.in_([t.value for t in types]))
        if limit is not None:
            query = query.limit(min(limit, MAX_BOUND))
        rows = await self._all(query)
        if not rows:
            await self.get_run(run_id)  # an unknown run is RunNotFound, as in every store
        return [_event_from_row(r) for r in rows]

    async def heartbeat(self, worker: str) -> None:
        check_worker(worker)
        # PostgreSQL: its clock, for every worker alike. SQLite is one machine's anyway.
        now: Any = func.now() if self._is_postgres else utcnow()
        def body(conn: Connection) -> None:
            done = conn.execute(
                update(workers).where(workers.c.worker == worker).values(seen_at=now))
            if done.rowcount == 0:  # a worker's id is its own: no one else inserts it
                conn.execute(insert(workers).values(worker=worker, started_at=now, seen_at=now))

        await self._in_write(body)

    async def worker_age(self, worker: str) -> float | None:
        if _absent(worker):
            return None
        query = select(workers.c.seen_at).where(workers.c.worker == worker)
        if self._is_postgres:
            query = select(func.extract("epoch", func.now() - workers.c.seen_at)).where(
                workers.c.worker == worker)
        value = await self._scalar(query)
        if value is None:
            return None
        if self._is_postgres:
            return float(value)
        return (utcnow() - _aware(value)).total_seconds()

    async def remove_worker(self, worker: str) -> None:
        if _absent(worker):
            return
        await self._in_write(
            lambda conn: conn.execute(delete(workers).where(workers.c.worker == worker)))

    async def list_workers(self) -> list[WorkerSeen]:
        columns: list[Any] = [workers.c.worker, workers.c.started_at, workers.c.seen_at]
        if self._is_postgres:
            columns.append(func.extract("epoch", func.now() - workers.c.seen_at))
        query = select(*columns).order_by(workers.c.worker)
        rows = await self._all(query)
        now = utcnow()
        return [WorkerSeen(row[0], _aware(row[1]), _aware(row[2]),
                           float(row[3]) if self._is_postgres
                           else (now - _aware(row[2])).total_seconds())
                for row in rows]

    def subscribe(self, run_id: str, *, after: int = 0) -> AsyncIterator[Event]:
        return follow(self, self._notifier, run_id, after, poll=self._poll_seconds)

    def _poll_seconds(self) -> float:
        """Asked on every wait, so followers speed up when the LISTEN connection drops."""
        return LISTENING_POLL_SECONDS if self._listener is not None else POLL_SECONDS
