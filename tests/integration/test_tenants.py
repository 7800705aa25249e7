"""Tenants, tokens and cursors against a real `pyflue serve` (uvicorn, SQLite or PostgreSQL)."""

from __future__ import annotations

import asyncio
import itertools
import json
import textwrap
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from tests.integration.servers import COLD, Server, until_finished

pytestmark = pytest.mark.docker  # the server's /health waits for the engine

TOKENS = {"root": "root-7d1f", "a": "team-a-55e2", "b": "team-b-90c4", "c": "team-c-1b3a"}
LIMITS = {"c": 1}
NAP = """
    import asyncio
    async def run(ctx):
        await asyncio.sleep(ctx.payload.get("s", 0.5))
        return {"slept": ctx.payload.get("s", 0.5)}
    """


def _write_project(folder: Path) -> Path:
    (folder / "workflows").mkdir(parents=True)
    (folder / "workflows" / "nap.py").write_text(textwrap.dedent(NAP))
    from pyflue.tenants import token_hash

    (folder / "tokens.json").write_text(json.dumps([
        {"name": f"ci-{who}", "sha256": token_hash(token), "tenant": f"team-{who}",
         "admin": who == "root", "max_concurrency": LIMITS.get(who)}
        for who, token in TOKENS.items()]))
    return folder


def _server(folder: Path, **env: str) -> Server:
    return Server(folder, folder / "runs.db", concurrency=2,
                  env={**COLD, "PYFLUE_TOKENS_FILE": str(folder / "tokens.json"), **env})


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = _server(_write_project(tmp_path_factory.mktemp("tenants")))
    srv.start()
    yield srv
    srv.stop()


def as_(who: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[who]}"}


def _admin(url: str) -> httpx.AsyncClient:
    """A client with the admin's token (until_finished polls any tenant's runs with it)."""
    return httpx.AsyncClient(base_url=url, timeout=30, headers=as_("root"))


def ws_url(server: Server, path: str) -> str:
    return server.url.replace("http://", "ws://") + path


async def _invoke(client: httpx.AsyncClient, who: str, s: float = 0.5) -> str:
    r = await client.post("/workflows/nap", json={"s": s}, headers=as_(who))
    assert r.status_code == 202, r.text
    run_id: str = r.json()["run_id"]
    return run_id


def _at(run: dict[str, Any], field: str) -> datetime:
    return datetime.fromisoformat(run[field])


async def test_one_tenant_with_a_backlog_does_not_starve_another(server: Server) -> None:
    async with _admin(server.url) as client:
        backlog = [await _invoke(client, "a", 1.0) for _ in range(6)]
        late = await _invoke(client, "b", 0.2)
        runs = {run_id: await until_finished(client, run_id)
                for run_id in [*backlog, late]}
    a_starts = sorted(_at(runs[r], "started_at") for r in backlog)
    # Two slots: team-a holds both when team-b asks. When they free, one goes to team-b
    # (fewest running), not both to team-a's backlog: first come, first served would run
    # team-b's run after all six of team-a's had started.
    assert _at(runs[late], "started_at") < a_starts[3]
    assert {runs[r]["requested_by"] for r in backlog} == {"ci-a"}
    assert runs[late]["tenant"] == "team-b"


async def test_a_tenant_at_its_limit_waits_while_slots_are_free(server: Server) -> None:
    async with _admin(server.url) as client:
        ids = [await _invoke(client, "c", 0.4) for _ in range(3)]
        runs = sorted([await until_finished(client, r) for r in ids],
                      key=lambda run: run["started_at"])
    assert all(run["status"] == "completed" for run in runs)
    for before, after in itertools.pairwise(runs):  # max_concurrency 1: one at a time
        assert _at(after, "started_at") >= _at(before, "finished_at")


async def test_another_tenants_run_cannot_be_followed_over_sse_or_websocket(
    server: Server,
) -> None:
    async with _admin(server.url) as client:
        run_id = await _invoke(client, "a", 0.1)
        await until_finished(client, run_id)
        sse = await client.get(f"/runs/{run_id}/stream", headers=as_("b"))
        assert sse.status_code == 404 and sse.json()["error"]["type"] == "not_found"
        assert (await client.get(f"/runs/{run_id}/stream", headers=as_("root"))).status_code == 200
    async with websockets.connect(ws_url(server, f"/runs/{run_id}/stream"),
                                  additional_headers=as_("b")) as sock:
        frame = json.loads(await sock.recv())
        with pytest.raises(ConnectionClosed):
            await sock.recv()
    assert sock.close_code == 4404 and frame["error"]["type"] == "not_found"


async def test_a_websocket_cursor_past_the_end_is_refused_with_a_clear_frame(
    server: Server,
) -> None:
    async with _admin(server.url) as client:
        run_id = await _invoke(client, "a", 0.1)
        count = (await until_finished(client, run_id))["event_count"]
    async with websockets.connect(ws_url(server, f"/runs/{run_id}/stream?after={count + 1}"),
                                  additional_headers=as_("a")) as sock:
        frame = json.loads(await sock.recv())
        with pytest.raises(ConnectionClosed):
            await sock.recv()
    assert sock.close_code == 4400 and frame["error"]["type"] == "invalid_parameter"
    assert f"past the last event of run {run_id} ({count})" in frame["error"]["message"]


async def test_tokens_stay_out_of_the_servers_log(tmp_path: Path) -> None:
    srv = _server(_write_project(tmp_path / "p"))
    srv.start()
    try:
        secret = TOKENS["a"]
        async with _admin(srv.url) as client:
            run_id = await _invoke(client, "a", 0.1)
            await until_finished(client, run_id)
        async with httpx.AsyncClient(base_url=srv.url, timeout=30) as anonymous:
            assert (await anonymous.get(f"/runs?token={secret}")).status_code == 401
        for url, kwargs in (
            (f"/runs/{run_id}/stream?after=0&token={secret}", {}),
            (f"/runs/{run_id}/stream", {"subprotocols": ["pyflue", "pyflue.token." + secret]}),
            (f"/runs/{run_id}/stream", {"additional_headers": as_("a")}),
        ):
            async with websockets.connect(ws_url(srv, url), **kwargs) as sock:
                frames = []
                with pytest.raises(ConnectionClosed):
                    while True:
                        frames.append(json.loads(await sock.recv()))
                assert sock.close_code == 1000 and frames[-1]["type"] == "run_end", url
                if "subprotocols" in kwargs:
                    assert sock.subprotocol == "pyflue"
    finally:
        srv.stop()
    log = Path(srv.log.name).read_text()
    assert f"/runs/{run_id}/stream?after=0&token=[redacted]" in log  # the line is there
    assert "/runs?token=[redacted]" in log
    assert secret not in log


async def _same_key_at_once(url: str, n: int) -> set[str]:
    key = {"Idempotency-Key": "release-2026-12-05", **as_("a")}
    async with httpx.AsyncClient(base_url=url, timeout=60,
                                 limits=httpx.Limits(max_connections=n)) as client:
        answers = await asyncio.gather(*(
            client.post("/workflows/nap", json={"s": 0.1}, headers=key) for _ in range(n)))
        assert {a.status_code for a in answers} == {202}, [a.text for a in answers]
        listed = (await client.get("/runs?workflow=nap", headers=as_("a"))).json()["runs"]
    assert [r["idempotency_key"] for r in listed].count("release-2026-12-05") == 1
    return {a.json()["run_id"] for a in answers}


async def test_concurrent_requests_with_one_idempotency_key_make_one_run_sqlite(
    tmp_path: Path,
) -> None:
    srv = _server(_write_project(tmp_path / "p"))
    srv.start()
    try:
        assert len(await _same_key_at_once(srv.url, 16)) == 1
    finally:
        srv.stop()


async def test_concurrent_requests_with_one_idempotency_key_make_one_run_postgres(
    tmp_path: Path, postgres_url: str,
) -> None:
    srv = _server(_write_project(tmp_path / "p"), PYFLUE_STORE_URL=postgres_url)
    srv.start()
    try:
        assert len(await _same_key_at_once(srv.url, 16)) == 1
    finally:
        srv.stop()
