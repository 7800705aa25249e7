"""The run store contract, against the in-memory store, real SQLite and real PostgreSQL."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Awaitable
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import asyncpg
import pytest
from pydantic import ValidationError
from sqlalchemy import text
from sqlalchemy.engine import make_url

from pyflue.errors import ConfigError, RunNotFound, RunStateConflict, StoreError
from pyflue.events import EventType, Log, RunEnd, RunRequeued, ShellStart
from pyflue.models import ErrorInfo, Run, RunStatus, UploadInfo, new_run_id, utcnow
from pyflue.retention import Retention
from pyflue.settings import Settings
from pyflue.status import MAX_EVENT_INDEX
from pyflue.store import MemoryStore, NewEvent, RunStore, RunUpdate, SqlStore


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[RunStore]:
    s: RunStore
    if request.param == "memory":
        s = MemoryStore()
    elif request.param == "sqlite":
        s = SqlStore(f"sqlite+aiosqlite:///{tmp_path / 'runs.db'}")
    else:
        s = SqlStore(request.getfixturevalue("postgres_url"))
    await s.open()
    yield s
    await s.close()


def _run(workflow: str = "w", offset: int = 0) -> Run:
    return Run(run_id=new_run_id(workflow), workflow=workflow, status=RunStatus.queued,
               payload={"k": [1, "two"]}, created_at=utcnow() + timedelta(seconds=offset))


def _ev(i: int, type: EventType = EventType.log) -> NewEvent:
    """An event of ``type`` that carries ``i`` (a log line's message, a command's id)."""
    data = {
        EventType.log: lambda: Log(level="info", message=str(i)),
        EventType.shell_start: lambda: ShellStart(shell_id=f"sh-{i}", command="true",
                                                  cwd="/workspace", timeout=1),
        EventType.run_end: lambda: RunEnd.of(RunStatus.completed),
    }[type]()
    return NewEvent.of(data)


async def test_a_run_round_trips_with_its_payload(store: RunStore) -> None:
    run = await store.create_run(_run())
    got = await store.get_run(run.run_id)
    assert got.payload == {"k": [1, "two"]} and got.status is RunStatus.queued
    assert got.created_at == run.created_at


async def test_an_unknown_run_is_run_not_found(store: RunStore) -> None:
    with pytest.raises(RunNotFound, match=r"^no run 'workflow:x:nope'$") as raised:
        await store.get_run("workflow:x:nope")
    assert raised.value.hint == "list runs with `pyflue runs`"  # for the CLI, kept apart
    assert raised.value.message.endswith("; list runs with `pyflue runs`")


async def test_updates_change_only_the_given_fields(store: RunStore) -> None:
    run = await store.create_run(_run())
    await store.update_run(run.run_id, RunUpdate(status=RunStatus.running))
    done = await store.update_run(
        run.run_id, RunUpdate(status=RunStatus.completed, result={"ok": 1}, has_result=True)
    )
    assert done.status is RunStatus.completed and done.result == {"ok": 1}
    assert done.payload == run.payload


async def test_concurrent_appends_get_gap_free_indexes(store: RunStore) -> None:
    run = await store.create_run(_run())
    await asyncio.gather(
        *(store.append_events(run.run_id, [_ev(i), _ev(i)]) for i in range(25))
    )
    events = await store.list_events(run.run_id)
    assert [e.event_index for e in events] == list(range(1, 51))
    assert (await store.get_run(run.run_id)).event_count == 50


async def test_events_filter_by_index_type_and_limit(store: RunStore) -> None:
    run = await store.create_run(_run())
    await store.append_events(run.run_id, [_ev(1), _ev(2, EventType.shell_start), _ev(3)])
    assert [e.event_index for e in await store.list_events(run.run_id, after=1)] == [2, 3]
    assert [e.event_index for e in await store.list_events(run.run_id, limit=1)] == [1]
    typed = await store.list_events(run.run_id, types=[EventType.shell_start])
    assert [e.data["shell_id"] for e in typed] == ["sh-2"]


async def test_runs_list_newest_first_with_filters_and_paging(store: RunStore) -> None:
    runs = [await store.create_run(_run("a" if i % 2 else "b", offset=i)) for i in range(5)]
    listed = await store.list_runs()
    assert [r.run_id for r in listed] == [r.run_id for r in reversed(runs)]
    assert {r.workflow for r in await store.list_runs(workflow="a")} == {"a"}
    page = await store.list_runs(limit=2, before=listed[1].run_id)
    assert [r.run_id for r in page] == [listed[2].run_id, listed[3].run_id]
    await store.update_run(runs[0].run_id, RunUpdate(extra={"owner": "h:1:x"}))
    assert [r.run_id for r in await store.list_runs(owner="h:1:x")] == [runs[0].run_id]


async def test_runs_list_filters_by_creation_time_and_a_part_of_the_id(
    store: RunStore,
) -> None:
    runs = [await store.create_run(_run(offset=-3600 * h)) for h in (30, 3, 0)]
    now = utcnow()
    since = now - timedelta(hours=5)
    assert [r.run_id for r in await store.list_runs(created_after=since)] == [
        runs[2].run_id, runs[1].run_id]
    # naive times are UTC; the upper bound is exclusive
    naive = (now - timedelta(hours=1)).replace(tzinfo=None)
    assert [r.run_id for r in await store.list_runs(created_before=naive)] == [
        runs[1].run_id, runs[0].run_id]
    assert await store.list_runs(created_before=runs[0].created_at) == []
    part = runs[1].run_id[-10:].lower()
    assert [r.run_id for r in await store.list_runs(id_contains=part)] == [runs[1].run_id]
    assert await store.list_runs(id_contains="%") == []  # no wildcard: matched as text
    assert await store.list_runs(id_contains="\x00") == []


async def test_workers_are_listed_with_their_heartbeats(store: RunStore) -> None:
    assert await store.list_workers() == []
    await store.heartbeat("h:2:b")
    await store.heartbeat("h:1:a")
    await store.heartbeat("h:1:a")
    seen = await store.list_workers()
    assert [w.worker for w in seen] == ["h:1:a", "h:2:b"]
    assert all(0 <= w.age_seconds < 5 and w.started_at <= w.seen_at for w in seen)
    await store.remove_worker("h:1:a")
    assert [w.worker for w in await store.list_workers()] == ["h:2:b"]


async def test_subscribe_replays_then_follows_live_until_run_end(store: RunStore) -> None:
    run = await store.create_run(_run())
    await store.append_events(run.run_id, [_ev(1), _ev(2)])

    async def collect() -> list[int]:
        return [e.event_index async for e in store.subscribe(run.run_id, after=1)]

    task = asyncio.create_task(collect())
    await asyncio.sleep(0.05)
    await store.append_events(run.run_id, [_ev(3)])
    await asyncio.sleep(0.05)
    await store.append_events(run.run_id, [_ev(4, EventType.run_end), _ev(5)])
    assert await asyncio.wait_for(task, 5) == [2, 3, 4]


async def test_delete_removes_a_run_and_its_events(store: RunStore) -> None:
    run = await store.create_run(_run())
    await store.append_events(run.run_id, [_ev(1)])
    await store.delete_run(run.run_id)
    with pytest.raises(RunNotFound):
        await store.get_run(run.run_id)


def _shared_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgres":
        url: str = request.getfixturevalue("postgres_url")
        return url
    return f"sqlite+aiosqlite:///{tmp_path / 'a' / 'runs.db'}"


@pytest.fixture(params=["sqlite", "postgres"])
def sql_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database two SqlStore instances (two processes, as far as they know) can share."""
    return _shared_url(request, tmp_path)


async def test_sql_store_survives_a_reopen(sql_url: str) -> None:
    url = sql_url
    first = SqlStore(url)
    await first.open()
    run = await first.create_run(_run())
    await first.append_events(run.run_id, [_ev(1), _ev(2)])
    await first.close()
    second = SqlStore(url)
    await second.open()  # migrations are idempotent
    assert [e.event_index for e in await second.list_events(run.run_id)] == [1, 2]
    await second.close()


async def test_a_follower_sees_events_written_by_another_process(sql_url: str) -> None:
    url = sql_url
    reader, writer = SqlStore(url), SqlStore(url)  # two stores: nothing shared in memory
    await reader.open()
    await writer.open()
    run = await writer.create_run(_run())

    async def collect() -> list[int]:
        return [e.event_index async for e in reader.subscribe(run.run_id)]

    task = asyncio.create_task(collect())
    await asyncio.sleep(0.1)
    await writer.append_events(run.run_id, [_ev(1), _ev(2, EventType.run_end)])
    assert await asyncio.wait_for(task, 5) == [1, 2]
    await reader.close()
    await writer.close()


async def test_a_conditional_update_refuses_a_run_in_another_status(store: RunStore) -> None:
    from pyflue.errors import RunStateConflict

    run = await store.create_run(_run())
    await store.update_run(run.run_id, RunUpdate(status=RunStatus.cancelled))
    with pytest.raises(RunStateConflict, match="is cancelled, not queued"):
        await store.update_run(
            run.run_id, RunUpdate(status=RunStatus.running, expect_status=RunStatus.queued)
        )
    assert (await store.get_run(run.run_id)).status is RunStatus.cancelled


async def test_following_a_finished_run_past_its_end_returns_at_once(store: RunStore) -> None:
    run = await store.create_run(_run())
    await store.update_run(run.run_id, RunUpdate(status=RunStatus.completed))
    await store.append_events(run.run_id, [_ev(1), _ev(2, EventType.run_end)])

    async def collect(after: int) -> list[int]:
        return [e.event_index async for e in store.subscribe(run.run_id, after=after)]

    assert await asyncio.wait_for(collect(2), 5) == []
    assert await asyncio.wait_for(collect(1), 5) == [2]


async def _notify_reaches(reader: SqlStore, writer: SqlStore) -> None:
    """The reader's own notifier is woken by the writer's NOTIFY: no poll is involved."""
    run = await writer.create_run(_run())
    woken = reader._notifier.register(run.run_id)
    await writer.append_events(run.run_id, [_ev(1)])
    await asyncio.wait_for(woken, 10)


@pytest.fixture
async def pg_pair(postgres_url: str) -> AsyncIterator[tuple[SqlStore, SqlStore]]:
    """Two stores on one PostgreSQL database, as two workers would have: (reader, writer)."""
    reader, writer = SqlStore(postgres_url), SqlStore(postgres_url)
    await reader.open()
    await writer.open()
    yield reader, writer
    await reader.close()
    await writer.close()


async def test_postgres_wakes_followers_of_other_processes_by_notify(
    pg_pair: tuple[SqlStore, SqlStore],
) -> None:
    await _notify_reaches(*pg_pair)


async def test_postgres_password_setting_and_url_options_reach_both_connections(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A password with URL-reserved characters, given apart from the URL (PYFLUE_STORE_PASSWORD),
    # and a URL option (?ssl=disable) that the LISTEN connection must honour as the pool does.
    url = make_url(postgres_url)
    role, password = f"{url.database}_pw", "p@ss:/w%rd?#"
    admin = SqlStore(postgres_url)
    await admin.open()
    try:
        async with admin.engine.begin() as conn:
            await conn.execute(text(f'CREATE ROLE "{role}" LOGIN PASSWORD \'{password}\''))
    except StoreError as exc:  # ./scripts/postgres grants CREATEROLE; a server of your own may not
        await admin.close()
        pytest.skip(f"the test role cannot create a role: {exc}")
    try:
        async with admin.engine.begin() as conn:
            await conn.execute(text(f'GRANT ALL ON SCHEMA public TO "{role}"'))
            for kind in ("TABLES", "SEQUENCES"):
                await conn.execute(text(f'GRANT ALL ON ALL {kind} IN SCHEMA public TO "{role}"'))
        bare = url.set(username=role, password=None).update_query_dict({"ssl": "disable"})
        settings = Settings(store_url=bare.render_as_string(), store_password=password)
        stores = [SqlStore(settings.resolved_store_url()) for _ in range(2)]
        connects: list[dict[str, object]] = []
        real_connect = asyncpg.connect

        async def observed(*args: object, **kwargs: object) -> object:
            connects.append(kwargs)
            return await real_connect(*args, **kwargs)

        monkeypatch.setattr(asyncpg, "connect", observed)  # SQLAlchemy's pool calls it too
        try:
            for store in stores:
                await store.open()
                assert store._listener is not None
            await _notify_reaches(*stores)
            # The pool's connections and the LISTEN ones alike: the option, the decoded password.
            assert len(connects) >= 4
            assert all(c.get("ssl") == "disable" and c.get("password") == password
                       for c in connects), connects
        finally:
            for store in stores:
                await store.close()
    finally:
        async with admin.engine.begin() as conn:
            for kind in ("TABLES", "SEQUENCES"):
                await conn.execute(text(f'REVOKE ALL ON ALL {kind} IN SCHEMA public FROM "{role}"'))
            await conn.execute(text(f'REVOKE ALL ON SCHEMA public FROM "{role}"'))
            await conn.execute(text(f'DROP ROLE "{role}"'))
        await admin.close()


def test_a_store_password_needs_a_store_url() -> None:
    with pytest.raises(ValidationError, match="PYFLUE_STORE_URL is not"):
        Settings(store_password="x")
    with pytest.raises(ValidationError, match="not a database URL"):
        Settings(store_url="not a url", store_password="x")


async def test_an_update_can_be_fenced_by_attempt(store: RunStore) -> None:
    run = await store.create_run(_run())
    await store.update_run(run.run_id, RunUpdate(status=RunStatus.running))
    await store.update_run(run.run_id, RunUpdate(
        status=RunStatus.queued, extra={"attempt": 2}, expect_status=RunStatus.running,
        expect_attempt=1))
    await store.update_run(run.run_id, RunUpdate(status=RunStatus.running))
    with pytest.raises(RunStateConflict, match="at attempt 2, not 1"):
        await store.update_run(run.run_id, RunUpdate(
            status=RunStatus.completed, expect_status=RunStatus.running, expect_attempt=1))
    kept = await store.get_run(run.run_id)
    assert kept.status is RunStatus.running and kept.attempt == 2


async def test_an_update_can_be_refused_to_a_run_asked_to_cancel(store: RunStore) -> None:
    run = await store.create_run(_run())
    await store.update_run(run.run_id, RunUpdate(
        status=RunStatus.running, extra={"cancel_requested": "cancelled by request"}))
    told = NewEvent.of(RunRequeued(reason="its worker stopped", attempt=2))
    with pytest.raises(RunStateConflict, match="was asked to cancel"):
        await store.update_run(run.run_id, RunUpdate(
            status=RunStatus.queued, expect_no_cancel=True, events=[told]))
    assert (await store.get_run(run.run_id)).status is RunStatus.running
    assert await store.list_events(run.run_id) == []  # the events only go with the update
    await store.update_run(run.run_id, RunUpdate(
        status=RunStatus.cancelled, expect_status=RunStatus.running, events=[
            NewEvent.of(RunEnd.of(RunStatus.cancelled, reason="cancelled by request"))]))
    [end] = await store.list_events(run.run_id)
    assert end.type is EventType.run_end and end.event_index == 1


async def test_claiming_takes_the_oldest_unowned_queued_runs(store: RunStore) -> None:
    runs = [await store.create_run(_run(offset=i)) for i in range(4)]
    mine = await store.create_run(_run(offset=-1).model_copy(update={"owner": "cli:1:a"}))
    done = await store.create_run(_run(offset=-2))
    await store.update_run(done.run_id, RunUpdate(status=RunStatus.cancelled))
    assert await store.claim_runs("w:1:a", 10, exclude={r.run_id for r in runs}) == []
    first = await store.claim_runs("w:1:a", 2, exclude={runs[3].run_id})
    assert [r.run_id for r in first] == [r.run_id for r in runs[:2]]
    assert all(r.status is RunStatus.running and r.owner == "w:1:a" and r.started_at
               for r in first)
    rest = await store.claim_runs("w:2:b", 10)
    assert [r.run_id for r in rest] == [r.run_id for r in runs[2:]]
    assert await store.claim_runs("w:1:a", 10) == []
    assert (await store.get_run(mine.run_id)).status is RunStatus.queued  # `pyflue run`'s own


async def test_postgres_workers_claiming_together_never_take_the_same_run(
    postgres_url: str,
) -> None:
    stores = [SqlStore(postgres_url) for _ in range(4)]
    for s in stores:
        await s.open()
    try:
        queued = {(await stores[0].create_run(_run(offset=i))).run_id for i in range(40)}

        async def worker(i: int) -> list[str]:
            taken: list[str] = []
            while batch := await stores[i].claim_runs(f"w:{i}:x", 3):
                taken += [r.run_id for r in batch]
            return taken

        takes = await asyncio.gather(*(worker(i) for i in range(4)))
        every = [run_id for taken in takes for run_id in taken]
        assert sorted(every) == sorted(queued)  # each run once: no run taken twice
    finally:
        for s in stores:
            await s.close()


async def test_the_queue_signal_fires_for_runs_any_worker_can_take(store: RunStore) -> None:
    fired: list[int] = []
    store.on_queue_change(lambda: fired.append(1))

    async def fires(change: Awaitable[object]) -> bool:
        fired.clear()
        await change
        await asyncio.sleep(0.3)  # PostgreSQL's signal is its NOTIFY, coming back
        return bool(fired)

    assert not await fires(store.create_run(_run().model_copy(update={"owner": "cli:1:a"})))
    run = _run()
    assert await fires(store.create_run(run))
    assert not await fires(store.update_run(run.run_id, RunUpdate(status=RunStatus.running)))
    assert await fires(store.update_run(run.run_id, RunUpdate(status=RunStatus.queued)))


async def test_postgres_tells_other_processes_when_a_run_is_queued(
    pg_pair: tuple[SqlStore, SqlStore],
) -> None:
    reader, writer = pg_pair
    queued = asyncio.Event()
    reader.on_queue_change(queued.set)  # only NOTIFY can reach it: the write is the writer's
    await writer.create_run(_run())
    await asyncio.wait_for(queued.wait(), 10)


async def test_workers_heartbeat_and_sign_off(store: RunStore) -> None:
    assert await store.worker_age("h:1:a") is None
    await store.heartbeat("h:1:a")
    await asyncio.sleep(0.3)
    aged = await store.worker_age("h:1:a")
    assert aged is not None and aged >= 0.25  # by the store's clock
    await store.heartbeat("h:1:a")
    fresh = await store.worker_age("h:1:a")
    assert fresh is not None and fresh < aged
    await store.remove_worker("h:1:a")
    assert await store.worker_age("h:1:a") is None


async def test_a_cancel_request_is_recorded_on_a_running_run(store: RunStore) -> None:
    run = await store.create_run(_run())
    await store.update_run(run.run_id, RunUpdate(status=RunStatus.running))
    asked = await store.update_run(run.run_id, RunUpdate(
        extra={"cancel_requested": "cancelled by request"}, expect_status=RunStatus.running))
    assert asked.cancel_requested == "cancelled by request"
    assert (await store.get_run(run.run_id)).cancel_requested == "cancelled by request"


async def test_postgres_listen_comes_back_after_its_connection_is_killed(
    pg_pair: tuple[SqlStore, SqlStore],
) -> None:
    reader, writer = pg_pair
    first = reader._listener
    assert first is not None
    async with writer.engine.begin() as conn:  # as a DBA or a failover would
        await conn.execute(text("SELECT pg_terminate_backend(:pid)"),
                           {"pid": first.get_server_pid()})
    for _ in range(150):  # the reconnect backs off from 1 s
        if reader._listener is not None and reader._listener is not first:
            break
        await asyncio.sleep(0.1)
    assert reader._listener is not None and reader._listener is not first
    await _notify_reaches(reader, writer)


# -- the contract, edge by edge: every adapter answers alike -----------------------------------


async def test_creating_a_run_under_an_id_already_used_is_a_conflict(store: RunStore) -> None:
    run = await store.create_run(_run())
    await store.append_events(run.run_id, [_ev(1)])
    again = _run().model_copy(update={"run_id": run.run_id, "idempotency_key": "fresh"})
    with pytest.raises(RunStateConflict, match="exists: give the new run an id of its own"):
        await store.create_run(again)
    assert (await store.get_run(run.run_id)).event_count == 1  # the first run is untouched


async def test_a_second_run_with_the_same_idempotency_key_is_a_conflict(store: RunStore) -> None:
    await store.create_run(_run().model_copy(update={"idempotency_key": "k"}))
    with pytest.raises(RunStateConflict, match="Idempotency-Key 'k' exists"):
        await store.create_run(_run().model_copy(update={"idempotency_key": "k"}))


async def test_an_idempotency_key_is_per_tenant(store: RunStore) -> None:
    mine = await store.create_run(_run().model_copy(update={"idempotency_key": "k",
                                                            "tenant": "a"}))
    theirs = await store.create_run(_run().model_copy(update={"idempotency_key": "k",
                                                              "tenant": "b"}))
    found = await store.find_run("w", "k", "b")
    assert found is not None and found.run_id == theirs.run_id != mine.run_id
    assert await store.find_run("w", "k") is None  # the default tenant has none
    with pytest.raises(RunStateConflict, match="Idempotency-Key 'k'"):
        await store.create_run(_run().model_copy(update={"idempotency_key": "k",
                                                         "tenant": "a"}))


async def test_a_run_keeps_its_tenant_and_who_asked_and_lists_filter_by_tenant(
    store: RunStore,
) -> None:
    a = await store.create_run(_run(offset=0).model_copy(update={"tenant": "a",
                                                                 "requested_by": "ci-a"}))
    b = await store.create_run(_run(offset=1).model_copy(update={"tenant": "b"}))
    got = await store.get_run(a.run_id)
    assert (got.tenant, got.requested_by) == ("a", "ci-a")
    assert (await store.get_run(b.run_id)).requested_by is None
    assert [r.run_id for r in await store.list_runs(tenant="a")] == [a.run_id]
    assert [r.run_id for r in await store.list_runs()] == [b.run_id, a.run_id]


async def test_claiming_only_some_runs_takes_no_other(store: RunStore) -> None:
    runs = [await store.create_run(_run(offset=i)) for i in range(3)]
    taken = await store.claim_runs("w1", 3, only=[runs[2].run_id, runs[0].run_id])
    assert [r.run_id for r in taken] == [runs[0].run_id, runs[2].run_id]
    assert await store.claim_runs("w1", 3, only=[]) == []
    assert (await store.get_run(runs[1].run_id)).status is RunStatus.queued


async def test_an_idempotency_key_is_per_workflow(store: RunStore) -> None:
    first = await store.create_run(_run("a").model_copy(update={"idempotency_key": "k"}))
    other = await store.create_run(_run("b").model_copy(update={"idempotency_key": "k"}))
    assert await store.find_run("a", "k") == first
    assert await store.find_run("b", "k") == other


async def test_a_created_run_is_returned_as_get_run_returns_it(store: RunStore) -> None:
    given = _run().model_copy(update={"payload": {"t": (1, 2)}, "event_count": 5})
    created = await store.create_run(given)
    assert created == await store.get_run(given.run_id)
    assert created.payload == {"t": [1, 2]} and created.event_count == 0


async def test_a_new_run_starts_with_no_events_whatever_its_event_count_says(
    store: RunStore,
) -> None:
    run = await store.create_run(_run().model_copy(update={"event_count": 5}))
    [first] = await store.append_events(run.run_id, [_ev(1)])
    assert first.event_index == 1 and (await store.get_run(run.run_id)).event_count == 1


async def test_timestamps_come_back_in_utc_whatever_zone_they_were_given_in(
    store: RunStore,
) -> None:
    plus_two = datetime(2024, 1, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    run = await store.create_run(_run().model_copy(update={"created_at": plus_two}))
    naive = datetime(2024, 1, 1, 11, 0)  # taken to be UTC
    await store.update_run(run.run_id, RunUpdate(started_at=naive))
    [event] = await store.append_events(run.run_id, [replace(_ev(1), timestamp=naive)])
    got = await store.get_run(run.run_id)
    assert got.created_at == plus_two and got.created_at.tzinfo is UTC
    assert got.started_at == naive.replace(tzinfo=UTC) and got.started_at.tzinfo is UTC
    [listed] = await store.list_events(run.run_id)
    assert event.timestamp == listed.timestamp == naive.replace(tzinfo=UTC)
    assert listed.timestamp.tzinfo is UTC


async def test_runs_created_in_other_zones_list_in_time_order(store: RunStore) -> None:
    ten_utc = datetime(2024, 1, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    eleven_utc = datetime(2024, 1, 1, 11, 0, tzinfo=UTC)
    later = await store.create_run(_run().model_copy(update={"created_at": eleven_utc}))
    earlier = await store.create_run(_run().model_copy(update={"created_at": ten_utc}))
    listed = await store.list_runs(oldest_first=True)
    assert [r.run_id for r in listed] == [earlier.run_id, later.run_id]


async def test_runs_created_at_the_same_instant_list_in_run_id_code_point_order(
    store: RunStore,
) -> None:
    at = utcnow()
    ids = ["workflow:a_b:1", "workflow:a-b:1", "workflow:A:1", "workflow:a:1", "workflow:é:1",
           "workflow:B:1"]
    for run_id in ids:
        await store.create_run(_run().model_copy(update={"run_id": run_id, "created_at": at}))
    assert [r.run_id for r in await store.list_runs()] == sorted(ids, reverse=True)
    assert [r.run_id for r in await store.list_runs(oldest_first=True)] == sorted(ids)
    page = await store.list_runs(limit=2, before=sorted(ids)[2], oldest_first=True)
    assert [r.run_id for r in page] == sorted(ids)[3:5]
    assert [r.run_id for r in await store.claim_runs("w:1:a", 3)] == sorted(ids)[:3]


async def test_a_returned_run_is_a_copy(store: RunStore) -> None:
    given = _run().model_copy(update={"payload": {"k": [1]}, "idempotency_key": "k"})
    returned = [await store.create_run(given), await store.get_run(given.run_id),
                *await store.list_runs(), await store.find_run("w", "k"),
                await store.update_run(given.run_id, RunUpdate(reason="r"))]
    given.payload["k"].append("from the caller's own object")
    for run in returned:
        assert run is not None
        run.payload["k"].append("changed")
        run.status = RunStatus.failed
    kept = await store.get_run(given.run_id)
    assert kept.payload == {"k": [1]} and kept.status is RunStatus.queued


async def test_a_claimed_run_is_a_copy(store: RunStore) -> None:
    run = await store.create_run(_run().model_copy(update={"payload": {"k": [1]}}))
    [claimed] = await store.claim_runs("w:1:a", 1)
    claimed.payload["k"].append("changed")
    assert (await store.get_run(run.run_id)).payload == {"k": [1]}


async def test_a_returned_event_is_a_copy(store: RunStore) -> None:
    run = await store.create_run(_run())
    fields: dict[str, object] = {"items": [1]}
    told = NewEvent.of(Log(level="info", message="m", fields=fields))
    [appended] = await store.append_events(run.run_id, [told])
    fields["items"] = "from the caller's own object"
    [listed] = await store.list_events(run.run_id)
    for event in (appended, listed):
        assert isinstance(event.data, Log)
        event.data.fields["items"].append("changed")
    [again] = await store.list_events(run.run_id)
    assert again.data["fields"] == {"items": [1]}


async def test_json_values_round_trip_unicode_nesting_and_large_integers(
    store: RunStore,
) -> None:
    value = {"ünï": "☃ \u0000 \U0001f600", "deep": [{"a": [[{}], []]}], "big": 2**70,
             "neg": -(2**65), "f": 0.1, "t": True, "n": None}
    run = await store.create_run(_run().model_copy(update={"payload": value}))
    await store.update_run(run.run_id, RunUpdate(result=value, has_result=True))
    told = NewEvent(EventType.log, {"level": "info", "message": "m", "fields": value}, utcnow())
    await store.append_events(run.run_id, [told])
    got = await store.get_run(run.run_id)
    assert got.payload == value and got.result == value
    [event] = await store.list_events(run.run_id)
    assert event.data["fields"] == value


async def test_json_values_are_kept_in_their_json_form(store: RunStore) -> None:
    value = {"tuple": (1, 2), "set": {3}, 4: "int key", "nan": float("nan"), "inf": math.inf}
    form = {"tuple": [1, 2], "set": [3], "4": "int key", "nan": None, "inf": None}
    run = await store.create_run(_run().model_copy(update={"payload": value}))
    updated = await store.update_run(run.run_id, RunUpdate(result=value, has_result=True))
    told = NewEvent(EventType.log, {"level": "info", "message": "m", "fields": value}, utcnow())
    [appended] = await store.append_events(run.run_id, [told])
    got = await store.get_run(run.run_id)
    assert got.payload == form and got.result == form and updated.result == form
    [listed] = await store.list_events(run.run_id)
    assert appended.data["fields"] == listed.data["fields"] == form


async def test_a_value_with_no_json_form_is_a_config_error(store: RunStore) -> None:
    with pytest.raises(ConfigError, match="as JSON"):
        await store.create_run(_run().model_copy(update={"payload": {"x": object()}}))
    run = await store.create_run(_run())
    with pytest.raises(ConfigError, match="as JSON"):
        await store.update_run(run.run_id, RunUpdate(result=object(), has_result=True))
    told = NewEvent(EventType.log, {"level": "info", "message": "m", "x": object()}, utcnow())
    with pytest.raises(ConfigError, match="as JSON"):
        await store.append_events(run.run_id, [told])
    assert (await store.get_run(run.run_id)).result is None
    assert await store.list_events(run.run_id) == []


async def test_text_longer_than_its_column_is_a_config_error(store: RunStore) -> None:
    with pytest.raises(ConfigError, match="run_id is 201 characters long"):
        await store.create_run(_run().model_copy(update={"run_id": "r" * 201}))
    with pytest.raises(ConfigError, match="idempotency_key is 301 characters long"):
        await store.create_run(_run().model_copy(update={"idempotency_key": "k" * 301}))
    run = await store.create_run(_run())
    with pytest.raises(ConfigError, match="image is 501 characters long"):
        await store.update_run(run.run_id, RunUpdate(image="i" * 501))
    with pytest.raises(ConfigError, match="worker id is 201 characters long"):
        await store.heartbeat("w" * 201)
    assert await store.list_runs() == [run]


async def test_text_with_a_nul_character_is_a_config_error(store: RunStore) -> None:
    run = await store.create_run(_run())
    with pytest.raises(ConfigError, match="NUL character"):
        await store.update_run(run.run_id, RunUpdate(reason="a\x00b"))
    with pytest.raises(ConfigError, match="NUL character"):
        await store.create_run(_run().model_copy(update={"run_id": "workflow:w:\x00"}))
    with pytest.raises(ConfigError, match="NUL character"):
        await store.heartbeat("h:1:\x00")
    assert (await store.get_run(run.run_id)).reason is None


async def test_ids_with_a_nul_character_are_never_found(store: RunStore) -> None:
    await store.create_run(_run())
    for missing in (store.get_run("a\x00"), store.list_events("a\x00"),
                    store.append_events("a\x00", [_ev(1)]), store.list_runs(before="a\x00"),
                    store.update_run("a\x00", RunUpdate(reason="r"))):
        with pytest.raises(RunNotFound):
            await missing
    assert await store.find_run("w\x00", "k\x00") is None
    assert await store.list_runs(workflow="w\x00") == []
    assert await store.list_runs(owner="o\x00") == []
    assert await store.worker_age("h:1:\x00") is None
    await store.remove_worker("h:1:\x00")
    await store.delete_run("a\x00")
    assert len(await store.claim_runs("w:1:a", 5, exclude={"a\x00"})) == 1


async def test_an_integer_out_of_its_column_range_is_a_config_error(store: RunStore) -> None:
    run = await store.create_run(_run())
    with pytest.raises(ConfigError, match="duration_ms 2147483648 is out of range"):
        await store.update_run(run.run_id, RunUpdate(duration_ms=2**31))
    await store.update_run(run.run_id, RunUpdate(duration_ms=2**31 - 1))
    assert (await store.get_run(run.run_id)).duration_ms == 2**31 - 1


async def test_a_limit_below_one_lists_no_runs(store: RunStore) -> None:
    for i in range(3):
        await store.create_run(_run(offset=i))
    assert await store.list_runs(limit=0) == []
    assert await store.list_runs(limit=-1) == []


async def test_an_unknown_before_cursor_is_run_not_found(store: RunStore) -> None:
    await store.create_run(_run())
    with pytest.raises(RunNotFound, match=r"^no run '"):
        await store.list_runs(before="workflow:w:gone")
    with pytest.raises(RunNotFound, match=r"^no run '"):
        await store.list_runs(before="workflow:w:gone", limit=0)


async def test_the_before_cursor_and_every_filter_combine(store: RunStore) -> None:
    runs = [await store.create_run(_run("a" if i % 2 else "b", offset=i)) for i in range(8)]
    for run in runs[4:]:
        await store.update_run(run.run_id, RunUpdate(status=RunStatus.running,
                                                     extra={"owner": "h:1:x"}))
    # The cursor need not pass the filters itself.
    page = await store.list_runs(workflow="a", status=RunStatus.running, owner="h:1:x",
                                 before=runs[6].run_id)
    assert [r.run_id for r in page] == [runs[5].run_id]
    oldest = await store.list_runs(workflow="a", before=runs[2].run_id, oldest_first=True)
    assert [r.run_id for r in oldest] == [runs[3].run_id, runs[5].run_id, runs[7].run_id]


async def test_a_limit_below_one_lists_no_events(store: RunStore) -> None:
    run = await store.create_run(_run())
    await store.append_events(run.run_id, [_ev(1), _ev(2), _ev(3)])
    assert await store.list_events(run.run_id, limit=0) == []
    assert await store.list_events(run.run_id, limit=-1) == []


async def test_an_after_below_one_lists_from_the_first_event(store: RunStore) -> None:
    run = await store.create_run(_run())
    await store.append_events(run.run_id, [_ev(1), _ev(2), _ev(3)])
    listed = await store.list_events(run.run_id, after=-1)
    assert [e.event_index for e in listed] == [1, 2, 3]


async def test_an_after_past_every_index_lists_no_events(store: RunStore) -> None:
    run = await store.create_run(_run())
    await store.append_events(run.run_id, [_ev(1)])
    for after in (2**31, MAX_EVENT_INDEX, 2**64):
        assert await store.list_events(run.run_id, after=after) == []


async def test_no_types_or_an_empty_list_of_types_lists_every_type(store: RunStore) -> None:
    run = await store.create_run(_run())
    await store.append_events(run.run_id, [_ev(1), _ev(2, EventType.shell_start)])
    assert len(await store.list_events(run.run_id, types=[])) == 2
    assert len(await store.list_events(run.run_id, types=None)) == 2


async def test_listing_the_events_of_an_unknown_run_is_run_not_found(store: RunStore) -> None:
    with pytest.raises(RunNotFound, match=r"^no run '"):
        await store.list_events("workflow:w:gone")
    with pytest.raises(RunNotFound, match=r"^no run '"):
        await store.list_events("workflow:w:gone", limit=0)


async def test_appending_no_events_to_an_unknown_run_is_run_not_found(store: RunStore) -> None:
    with pytest.raises(RunNotFound, match=r"^no run '"):
        await store.append_events("workflow:w:gone", [])


async def test_appending_no_events_stores_nothing(store: RunStore) -> None:
    run = await store.create_run(_run())
    assert await store.append_events(run.run_id, []) == []
    assert (await store.get_run(run.run_id)).event_count == 0


async def test_appending_to_a_deleted_run_is_run_not_found(store: RunStore) -> None:
    run = await store.create_run(_run())
    await store.delete_run(run.run_id)
    with pytest.raises(RunNotFound, match=r"^no run '"):
        await store.append_events(run.run_id, [_ev(1)])


async def test_appended_events_are_returned_as_they_are_listed(store: RunStore) -> None:
    run = await store.create_run(_run())
    plus_two = datetime(2024, 1, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    told = NewEvent(EventType.log, {"level": "info", "message": "m", "t": (1,)}, plus_two)
    appended = await store.append_events(run.run_id, [told])
    assert appended == await store.list_events(run.run_id)


async def test_the_event_count_follows_appends_and_updates_with_events(store: RunStore) -> None:
    run = await store.create_run(_run())
    await store.append_events(run.run_id, [_ev(1), _ev(2)])
    updated = await store.update_run(run.run_id, RunUpdate(
        status=RunStatus.completed, events=[_ev(3, EventType.run_end)]))
    assert updated.event_count == 3 == (await store.get_run(run.run_id)).event_count
    [end] = await store.list_events(run.run_id, after=2)
    assert end.event_index == 3 and end.type is EventType.run_end


async def test_an_update_of_a_missing_run_is_run_not_found_whatever_it_expects(
    store: RunStore,
) -> None:
    for update in (RunUpdate(), RunUpdate(status=RunStatus.running),
                   RunUpdate(status=RunStatus.running, expect_status=RunStatus.queued,
                             expect_attempt=1, expect_no_cancel=True, events=[_ev(1)])):
        with pytest.raises(RunNotFound, match=r"^no run '"):
            await store.update_run("workflow:w:gone", update)


async def test_an_update_cannot_set_the_run_id_the_event_count_or_unknown_fields(
    store: RunStore,
) -> None:
    run = await store.create_run(_run())
    for name in ("run_id", "event_count", "no_such_field"):
        with pytest.raises(ValueError, match=f"cannot set '{name}'"):
            await store.update_run(run.run_id, RunUpdate(extra={name: 7}))
    assert await store.get_run(run.run_id) == run


async def test_an_update_is_checked_before_the_run_is_looked_up(store: RunStore) -> None:
    with pytest.raises(ValueError, match="cannot set 'no_such_field'"):
        await store.update_run("workflow:w:gone", RunUpdate(extra={"no_such_field": 1}))


async def test_an_update_s_extra_values_take_the_run_s_field_types(store: RunStore) -> None:
    run = await store.create_run(_run())
    updated = await store.update_run(run.run_id, RunUpdate(extra={
        "status": "running", "error": {"type": "t", "message": "m"}}))
    got = await store.get_run(run.run_id)
    assert updated.status is RunStatus.running and got.status is RunStatus.running
    assert updated.error == got.error == ErrorInfo(type="t", message="m")
    with pytest.raises(ValueError):
        await store.update_run(run.run_id, RunUpdate(extra={"status": "no such status"}))


async def test_deleting_a_missing_run_is_not_an_error(store: RunStore) -> None:
    await store.delete_run("workflow:w:gone")
    run = await store.create_run(_run())
    await store.delete_run(run.run_id)
    await store.delete_run(run.run_id)
    assert await store.list_runs() == []


async def test_a_follower_of_a_run_that_is_deleted_gets_run_not_found(store: RunStore) -> None:
    run = await store.create_run(_run())
    await store.append_events(run.run_id, [_ev(1)])
    seen: list[int] = []

    async def follow() -> None:
        async for event in store.subscribe(run.run_id):
            seen.append(event.event_index)

    task = asyncio.create_task(follow())
    while not seen:  # following live, past the replay
        await asyncio.sleep(0.01)
    await store.delete_run(run.run_id)
    with pytest.raises(RunNotFound, match=r"^no run '"):
        await asyncio.wait_for(task, 10)


async def test_subscribing_to_an_unknown_run_raises_at_the_first_iteration(
    store: RunStore,
) -> None:
    events = store.subscribe("workflow:w:gone")  # the call itself does not raise
    with pytest.raises(RunNotFound, match=r"^no run '"):
        await anext(events)


async def test_subscribing_from_the_start_of_a_finished_run_replays_up_to_run_end(
    store: RunStore,
) -> None:
    run = await store.create_run(_run())
    await store.update_run(run.run_id, RunUpdate(status=RunStatus.completed, events=[
        _ev(1), _ev(2, EventType.run_end), _ev(3)]))
    replayed = [e.event_index async for e in store.subscribe(run.run_id, after=-5)]
    assert replayed == [1, 2]


async def test_claiming_with_a_limit_below_one_takes_nothing(store: RunStore) -> None:
    run = await store.create_run(_run())
    assert await store.claim_runs("w:1:a", 0) == []
    assert await store.claim_runs("w:1:a", -1) == []
    assert (await store.get_run(run.run_id)).status is RunStatus.queued


async def test_an_unknown_worker_has_no_age_and_removing_it_is_not_an_error(
    store: RunStore,
) -> None:
    assert await store.worker_age("h:1:never") is None
    await store.remove_worker("h:1:never")
    assert await store.worker_age("h:1:never") is None


async def test_a_queue_callback_that_raises_leaves_the_write_and_the_other_callbacks(
    store: RunStore, caplog: pytest.LogCaptureFixture,
) -> None:
    def broken() -> None:
        raise RuntimeError("a listener's own bug")

    told = asyncio.Event()
    store.on_queue_change(broken)
    store.on_queue_change(told.set)
    run = await store.create_run(_run())
    await asyncio.wait_for(told.wait(), 10)  # PostgreSQL's signal is its NOTIFY, coming back
    assert (await store.get_run(run.run_id)).status is RunStatus.queued
    assert "a queue-change callback failed" in caplog.text


async def test_postgres_orders_run_ids_by_code_point_whatever_the_database_collation(
    postgres_url: str,
) -> None:
    # A database made with an en-US locale sorts 'a' before 'B'; code point order does not.
    store = SqlStore(postgres_url)
    await store.open()
    try:
        async with store.engine.begin() as conn:
            await conn.execute(text("ALTER TABLE events DROP CONSTRAINT events_run_id_fkey"))
            await conn.execute(text('ALTER TABLE runs ALTER COLUMN run_id TYPE varchar(200) '
                                    'COLLATE "en-US-x-icu"'))
        at = utcnow()
        ids = ["workflow:a:1", "workflow:B:1", "workflow:A:1", "workflow:b:1"]
        for run_id in ids:
            await store.create_run(_run().model_copy(update={"run_id": run_id, "created_at": at}))
        assert [r.run_id for r in await store.list_runs()] == sorted(ids, reverse=True)
        page = await store.list_runs(before=sorted(ids)[1], oldest_first=True)
        assert [r.run_id for r in page] == sorted(ids)[2:]
        assert [r.run_id for r in await store.claim_runs("w:1:a", 2)] == sorted(ids)[:2]
    finally:
        await store.close()


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


def _upload(dest: str, size: int) -> UploadInfo:
    return UploadInfo(dest=dest, kind="tar.gz", files=1, bytes=size, size=size)


async def test_uploads_are_stored_in_order_read_back_in_chunks_and_copied(
        store: RunStore) -> None:
    run = _run()
    assert await store.add_upload(run.run_id, _upload("a", 6), _chunks(b"abc", b"def")) == 0
    assert await store.add_upload(run.run_id, _upload("b", 1), _chunks(b"z")) == 1
    await store.create_run(run)
    assert [u.dest for u in await store.list_uploads(run.run_id)] == ["a", "b"]
    assert [c async for c in store.read_upload(run.run_id, 0)] == [b"abc", b"def"]
    again = _run()
    assert await store.copy_uploads(run.run_id, again.run_id) == 2
    assert [c async for c in store.read_upload(again.run_id, 1)] == [b"z"]
    with pytest.raises(RunNotFound, match="no upload 2"):
        [c async for c in store.read_upload(run.run_id, 2)]


async def test_pruning_forgets_old_finished_runs_whole_and_nothing_else(
        store: RunStore) -> None:
    now = utcnow()
    old, kept_new, kept_running = _run(offset=-90 * 86400), _run(), _run(offset=-80 * 86400)
    for run, size in ((old, 3), (kept_new, 4), (kept_running, 5)):
        await store.add_upload(run.run_id, _upload("src", size), _chunks(b"x" * size))
        await store.create_run(run)
        await store.append_events(run.run_id, [_ev(1)])
    await store.update_run(old.run_id, RunUpdate(status=RunStatus.completed,
                                                 finished_at=now - timedelta(days=89)))
    await store.update_run(kept_new.run_id, RunUpdate(status=RunStatus.failed,
                                                      finished_at=now))
    await store.update_run(kept_running.run_id, RunUpdate(status=RunStatus.running))
    retention = Retention(store)
    told: list[str] = []

    async def hook(run_id: str) -> None:
        told.append(run_id)

    retention.hooks.append(hook)
    assert [r.run_id for r in await retention.prune(timedelta(days=30), dry_run=True)] == \
        [old.run_id]
    assert told == [] and (await store.get_run(old.run_id)).status is RunStatus.completed
    assert [r.run_id for r in await retention.prune(
        timedelta(days=30), statuses=[RunStatus.failed])] == []
    gone = await retention.prune(timedelta(days=30))
    assert [r.run_id for r in gone] == [old.run_id] and told == [old.run_id]
    with pytest.raises(RunNotFound):
        await store.get_run(old.run_id)
    with pytest.raises(RunNotFound):
        await store.list_events(old.run_id)
    assert await store.list_uploads(old.run_id) == []
    for kept in (kept_new, kept_running):
        assert len(await store.list_events(kept.run_id)) == 1
        assert [c async for c in store.read_upload(kept.run_id, 0)] != []
    with pytest.raises(RunStateConflict, match="only a finished run can be deleted"):
        await retention.forget(kept_running.run_id)
    assert (await store.get_run(kept_running.run_id)).status is RunStatus.running


async def test_resource_samples_are_kept_replaced_and_deleted_with_the_run(
        store: RunStore) -> None:
    run = await store.create_run(_run())
    assert await store.get_samples(run.run_id) == []
    first = [{"timestamp": "2026-01-01T00:00:00Z", "memUsed": 1}]
    await store.put_samples(run.run_id, first)
    assert await store.get_samples(run.run_id) == first
    later = [*first, {"timestamp": "2026-01-01T00:00:01Z", "memUsed": 2}]
    await store.put_samples(run.run_id, later)
    assert await store.get_samples(run.run_id) == later
    await store.delete_run(run.run_id)
    with pytest.raises(RunNotFound):
        await store.get_samples(run.run_id)
    with pytest.raises(RunNotFound):
        await store.put_samples(run.run_id, first)


async def test_a_run_keeps_its_trace_and_resource_summary(store: RunStore) -> None:
    from pyflue.models import ResourceSummary

    run = await store.create_run(_run().model_copy(update={
        "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
        "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}))
    summary = ResourceSummary(samples=2, peak_memory_bytes=5, cpu_seconds=0.5)
    await store.update_run(run.run_id, RunUpdate(extra={"resources": summary}))
    got = await store.get_run(run.run_id)
    assert got.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert got.traceparent == run.traceparent and got.resources == summary


async def test_samples_given_with_an_update_are_kept_in_its_write(store: RunStore) -> None:
    run = await store.create_run(_run())
    samples = [{"timestamp": "2026-01-01T00:00:00Z", "memUsed": 3}]
    await store.update_run(run.run_id, RunUpdate(reason="x", samples=samples))
    assert await store.get_samples(run.run_id) == samples
    with pytest.raises(RunStateConflict):  # not applied: not kept either
        await store.update_run(run.run_id, RunUpdate(
            samples=[], expect_status=RunStatus.completed))
    assert await store.get_samples(run.run_id) == samples


async def test_an_sqlite_write_cancelled_on_its_thread_commits_and_holds_the_lock_until_then(
    tmp_path: Path,
) -> None:
    import sqlite3

    store = SqlStore(f"sqlite+aiosqlite:///{tmp_path / 'runs.db'}")
    await store.open()
    try:
        run = await store.create_run(_run())
        other = sqlite3.connect(tmp_path / "runs.db", isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # the database is another process's for now
        writing = asyncio.create_task(store.append_events(run.run_id, [_ev(1)]))
        await asyncio.sleep(0.3)  # on the writer thread, waiting for SQLite's lock
        writing.cancel()
        await asyncio.sleep(0.1)
        assert not writing.done()  # it waits for its write to end...
        assert store._write_lock is not None and store._write_lock.locked()  # ...holding the lock
        other.execute("COMMIT")
        other.close()
        with pytest.raises(asyncio.CancelledError):
            await writing
        assert [e.data.message for e in await store.list_events(run.run_id)] == ["1"]
        await store.append_events(run.run_id, [_ev(2)])  # the next write goes through
        assert (await store.get_run(run.run_id)).event_count == 2
    finally:
        await store.close()


async def test_calls_made_while_an_sqlite_store_closes_finish_or_say_it_is_closed(
    tmp_path: Path,
) -> None:
    store = SqlStore(f"sqlite+aiosqlite:///{tmp_path / 'runs.db'}")
    await store.open()
    run = await store.create_run(_run())
    calls = [asyncio.create_task(store.get_run(run.run_id)) for _ in range(40)]
    calls += [asyncio.create_task(store.append_events(run.run_id, [_ev(i)])) for i in range(5)]
    await asyncio.sleep(0)
    await store.close()
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert not any(isinstance(r, asyncio.CancelledError) for r in results)
    failures = [r for r in results if isinstance(r, BaseException)]
    assert all(isinstance(f, StoreError) and "not open" in f.message for f in failures), failures
    assert len(failures) < len(results)  # what was under way finished
