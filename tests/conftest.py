from __future__ import annotations

import asyncio
import os
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

WriteWorkflow = Callable[[str, str], Path]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "workflows").mkdir()
    return tmp_path


@pytest.fixture
def write_workflow(project: Path) -> WriteWorkflow:
    """Writes workflows/<name>.py (dots make folders) into the test's project folder."""

    def write(name: str, source: str) -> Path:
        path = project / "workflows" / (name.replace(".", "/") + ".py")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
        return path

    return write


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh database on the test PostgreSQL server (``./scripts/postgres``), dropped after.

    Skipped when no server is configured, unless PYFLUE_REQUIRE_POSTGRES is set (CI sets it).
    """
    base = os.environ.get("PYFLUE_TEST_POSTGRES_URL")
    if not base:
        if os.environ.get("PYFLUE_REQUIRE_POSTGRES"):
            pytest.fail("PYFLUE_REQUIRE_POSTGRES is set but PYFLUE_TEST_POSTGRES_URL is not: "
                        "run ./scripts/postgres (./scripts/test does)")
        pytest.skip("no test PostgreSQL: set PYFLUE_TEST_POSTGRES_URL (./scripts/test does)")
    try:
        url = make_url(base)
    except ArgumentError:
        pytest.fail(f"PYFLUE_TEST_POSTGRES_URL is not a database URL: {base!r}")
    name = f"pyflue_t_{uuid.uuid4().hex[:12]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(user=url.username, password=url.password, host=url.host,
                                     port=url.port, database=url.database)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    def run(sql: str) -> None:
        # A sync fixture, usable from async ones (getfixturevalue) while their loop runs: the
        # admin statements get a short loop of their own on another thread.
        with ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, admin(sql)).result()

    run(f'CREATE DATABASE "{name}"')
    yield url.set(database=name).render_as_string(hide_password=False)
    # FORCE cannot end an autovacuum worker busy on the database (PostgreSQL 15 asks for
    # pg_signal_backend, which the test role lacks); the worker is done within moments.
    for _ in range(100):
        try:
            run(f'DROP DATABASE "{name}" WITH (FORCE)')
            return
        except asyncpg.InsufficientPrivilegeError:
            time.sleep(0.1)
    run(f'DROP DATABASE "{name}" WITH (FORCE)')
