"""What the dashboard needs of the public API: run filters by time and id, the workers and
their heartbeats, and its own files served at /ui without a token (the API still needs one)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr

from pyflue.api.app import create_app
from pyflue.client import PyFlueClient
from pyflue.models import Run, RunStatus, new_run_id, utcnow
from pyflue.sandbox.fake import FakeSandboxProvider
from pyflue.settings import ServerSettings, Settings
from pyflue.store import MemoryStore
from pyflue.ui import STATIC

AUTH = {"Authorization": "Bearer s3cret"}


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
async def app(project: Path, store: MemoryStore) -> AsyncIterator[FastAPI]:
    settings = Settings(project_dir=project,
                        server=ServerSettings(api_token=SecretStr("s3cret")))
    application = create_app(settings, store=store, provider=FakeSandboxProvider())
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        yield c


async def _runs(store: MemoryStore, hours_ago: list[int]) -> list[Run]:
    now = utcnow()
    return [await store.create_run(Run(run_id=new_run_id("w"), workflow="w",
                                       status=RunStatus.completed,
                                       created_at=now - timedelta(hours=h)))
            for h in hours_ago]


async def test_the_dashboard_files_load_without_a_token(client: httpx.AsyncClient) -> None:
    page = await client.get("/ui/")
    assert page.status_code == 200 and '<script type="module" src="js/runs.js">' in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for name in ("run.html", "health.html", "js/api.js", "css/app.css"):
        assert (await client.get(f"/ui/{name}")).status_code == 200, name
    assert (await client.get("/ui", follow_redirects=False)).headers["location"] == "/ui/"


async def test_the_api_behind_the_dashboard_still_needs_the_token(
    client: httpx.AsyncClient,
) -> None:
    assert (await client.get("/runs")).status_code == 401
    assert (await client.get("/workers")).status_code == 401
    assert (await client.get("/runs", headers=AUTH)).status_code == 200


def test_the_dashboard_loads_nothing_from_elsewhere() -> None:
    for path in STATIC.rglob("*"):
        if path.suffix in (".html", ".js", ".css"):
            text = path.read_text()
            assert "http://" not in text.replace("http://www.w3.org/2000/svg", "") \
                and "https://" not in text, path


async def test_runs_filter_by_creation_time(client: httpx.AsyncClient, store: MemoryStore) -> None:
    _old, mid, new = await _runs(store, [30, 3, 0])
    since = (utcnow() - timedelta(hours=5)).isoformat()
    page = (await client.get("/runs", params={"created_after": since}, headers=AUTH)).json()
    assert [r["run_id"] for r in page["runs"]] == [new.run_id, mid.run_id]
    until = (utcnow() - timedelta(hours=1)).isoformat()
    page = (await client.get("/runs", params={"created_after": since, "created_before": until},
                             headers=AUTH)).json()
    assert [r["run_id"] for r in page["runs"]] == [mid.run_id]


async def test_runs_filter_by_a_part_of_the_id_ignoring_case(
    client: httpx.AsyncClient, store: MemoryStore,
) -> None:
    runs = await _runs(store, [2, 1, 0])
    part = runs[1].run_id.split(":")[-1][-8:].lower()
    page = (await client.get("/runs", params={"run_id": part}, headers=AUTH)).json()
    assert [r["run_id"] for r in page["runs"]] == [runs[1].run_id]


async def test_the_time_filters_keep_paging_with_the_cursor(
    client: httpx.AsyncClient, store: MemoryStore,
) -> None:
    await _runs(store, [40, 3, 2, 1])
    since = (utcnow() - timedelta(hours=10)).isoformat()
    first = (await client.get("/runs", params={"created_after": since, "limit": 2},
                              headers=AUTH)).json()
    rest = (await client.get("/runs", params={"created_after": since, "limit": 2,
                                              "cursor": first["next_cursor"]},
                             headers=AUTH)).json()
    assert len(first["runs"]) == 2 and len(rest["runs"]) == 1 and rest["next_cursor"] is None


@pytest.mark.parametrize("bad", ["yesterday", "0.5", "1733400000", "2026-13-01T00:00:00Z"])
async def test_a_bad_time_is_a_clear_400(client: httpx.AsyncClient, bad: str) -> None:
    answer = await client.get("/runs", params={"created_after": bad}, headers=AUTH)
    assert answer.status_code == 400
    assert answer.json()["error"]["type"] == "invalid_parameter"
    assert "created_after" in answer.text


async def test_workers_lists_the_servers_own_heartbeat(client: httpx.AsyncClient) -> None:
    answer = (await client.get("/workers", headers=AUTH)).json()
    assert answer["lease_seconds"] == 30
    (me,) = answer["workers"]
    assert me["lost"] is False and me["running"] == 0 and me["age_seconds"] < 30


async def test_the_python_client_passes_the_new_filters(app: FastAPI, store: MemoryStore) -> None:
    runs = await _runs(store, [30, 3, 0])
    transport = httpx.ASGITransport(app=app)
    async with PyFlueClient("http://t", token="s3cret", transport=transport) as client:
        naive_utc = (utcnow() - timedelta(hours=5)).replace(tzinfo=None)
        page = await client.runs.list(created_after=naive_utc,
                                      created_before=utcnow() - timedelta(hours=1))
        assert [r.run_id for r in page.runs] == [runs[1].run_id]
        part = runs[0].run_id[-6:]
        assert [r.run_id for r in (await client.runs.list(run_id=part)).runs] == [runs[0].run_id]
