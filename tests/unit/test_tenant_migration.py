"""Migration 0009 on a real SQLite database that holds runs from before tenants."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, create_engine, text

import pyflue.store.sql as sql
from pyflue.store import SqlStore


def _migrate(connection: Connection, to: str, down: bool = False) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(sql.__file__).parent / "migrations"))
    cfg.attributes["connection"] = connection
    (command.downgrade if down else command.upgrade)(cfg, to)


async def test_runs_from_before_tenants_become_the_default_tenants(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    with create_engine(f"sqlite:///{db}").begin() as conn:
        _migrate(conn, "0005")
        conn.execute(text(
            "INSERT INTO runs (run_id, workflow, status, payload, source, created_at, "
            "event_count, idempotency_key) VALUES ('workflow:w:1', 'w', 'completed', '{}', "
            "'http', '2026-01-01 00:00:00', 0, 'k')"))
    store = SqlStore(f"sqlite+aiosqlite:///{db}")
    await store.open()  # upgrades to the head
    try:
        run = await store.get_run("workflow:w:1")
        assert (run.tenant, run.requested_by) == ("default", None)
        found = await store.find_run("w", "k")
        assert found is not None and found.run_id == run.run_id
    finally:
        await store.close()
    with create_engine(f"sqlite:///{db}").begin() as conn:
        _migrate(conn, "0005", down=True)
        columns = {row[1] for row in conn.execute(text("PRAGMA table_info(runs)"))}
        assert "tenant" not in columns and "requested_by" not in columns
