"""Auth on every route by construction, and tenants, on the app in process (library fakes)."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute, APIWebSocketRoute, iter_route_contexts
from fastapi.testclient import TestClient
from starlette.routing import Mount
from starlette.websockets import WebSocketDisconnect

from pyflue.api import auth
from pyflue.api.app import create_app
from pyflue.errors import ConfigError
from pyflue.sandbox.fake import FakeSandboxProvider
from pyflue.settings import ServerSettings, Settings
from pyflue.store import MemoryStore
from pyflue.tenants import Queued, Tokens, fair_pick, read_tokens_file, token_hash
from tests.conftest import WriteWorkflow

TOKENS = {"root": "root-secret", "a1": "a1-secret", "a2": "a2-secret", "b1": "b1-secret"}
TENANT = {"root": "ops", "a1": "a", "a2": "a", "b1": "b"}
PUBLIC_ROUTES = {"/health", "/openapi.json", "/docs", "/ui"}  # /ui: the dashboard's redirect

WORKFLOWS = {
    "echo": """
async def run(ctx):
    return {"payload": ctx.payload}
""",
    "sleepy": """
import asyncio
async def run(ctx):
    await asyncio.sleep(30)
""",
}


def tokens_file(folder: Path) -> Path:
    path = folder / "tokens.json"
    path.write_text(json.dumps([
        {"name": name, "sha256": token_hash(secret), "tenant": TENANT[name],
         "admin": name == "root", "max_concurrency": None}
        for name, secret in TOKENS.items()]))
    return path


def make_app(project: Path, write_workflow: WriteWorkflow, **server: Any) -> FastAPI:
    for name, source in WORKFLOWS.items():
        write_workflow(name, source)
    settings = Settings(project_dir=project, server=ServerSettings(
        tokens_file=tokens_file(project), max_concurrency=2, **server))
    return create_app(settings, store=MemoryStore(), provider=FakeSandboxProvider())


def as_(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[name]}"}


@pytest.fixture
def sync_client(project: Path, write_workflow: WriteWorkflow) -> Iterator[TestClient]:
    with TestClient(make_app(project, write_workflow)) as c:
        yield c


@pytest.fixture
async def client(project: Path, write_workflow: WriteWorkflow
                 ) -> AsyncIterator[httpx.AsyncClient]:
    application = make_app(project, write_workflow, tenant_max_queued=1)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            yield c


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x", path)


def _ws_close_code(c: TestClient, path: str, **kwargs: Any) -> int:
    with pytest.raises(WebSocketDisconnect) as closed, c.websocket_connect(path, **kwargs) as ws:
        ws.send_text(json.dumps({"payload": {}}))
        while True:
            ws.receive_text()
    return closed.value.code


def _every_route_refuses_strangers(c: TestClient) -> set[str]:
    """Asserts each route refuses a missing or wrong token and accepts a right one; returns
    the public routes."""
    app: Any = c.app
    public: set[str] = set()
    guarded: set[str] = set()
    # Every route as the app serves it, those of included routers too.
    for route in (context.original_route for context in iter_route_contexts(app.routes)):
        if isinstance(route, Mount):
            assert route.path in app.state.public_mounts, route.path
        elif isinstance(route, APIRoute):
            if auth.is_public(route.endpoint, app.state.settings):
                public.add(route.path)
                continue
            for method in route.methods - {"HEAD"}:
                path = _concrete(route.path)
                for headers in ({}, {"Authorization": "Bearer wrong"},
                                {"Authorization": "Basic " + TOKENS["a1"]}):
                    refused = c.request(method, path, headers=headers)
                    assert refused.status_code == 401, (method, path, headers)
                    assert refused.json()["error"]["type"] == "unauthorized"
                assert c.request(method, path + "?token=" + TOKENS["a1"]).status_code == 401
                assert c.request(method, path, headers=as_("a1")).status_code != 401
            guarded.add(route.path)
        elif isinstance(route, APIWebSocketRoute):
            path = _concrete(route.path)
            for kwargs in ({}, {"headers": {"Authorization": "Bearer wrong"}},
                           {"subprotocols": ["pyflue", "pyflue.token.wrong"]}):
                assert _ws_close_code(c, path, **kwargs) == 4401, (path, kwargs)
            assert _ws_close_code(c, path + "?token=wrong") == 4401
            assert _ws_close_code(c, path, headers=as_("a1")) not in (4401, 1000)
            guarded.add("ws:" + route.path)
        else:
            raise AssertionError(f"a route of unknown kind: {route!r}")
    assert {"/workflows", "/workflows/{name}", "/runs", "/runs/{run_id}",
            "/runs/{run_id}/cancel", "ws:/workflows/{name}", "ws:/runs/{run_id}/stream"} <= guarded
    return public


def test_every_http_and_websocket_route_refuses_a_missing_or_wrong_token(
    sync_client: TestClient,
) -> None:
    assert _every_route_refuses_strangers(sync_client) == PUBLIC_ROUTES


def test_a_router_included_after_the_app_is_built_is_guarded_too(
    sync_client: TestClient,
) -> None:
    router = APIRouter()

    @router.get("/late/{thing}")
    async def late(thing: str) -> dict[str, str]:
        return {"thing": thing}

    @router.get("/late-public")
    @auth.public
    async def late_public() -> dict[str, bool]:
        return {"ok": True}

    app: Any = sync_client.app
    app.include_router(router)
    assert sync_client.get("/late/x").status_code == 401
    assert sync_client.get("/late/x", headers=as_("b1")).json() == {"thing": "x"}
    assert _every_route_refuses_strangers(sync_client) == PUBLIC_ROUTES | {"/late-public"}


def test_a_route_can_be_public_while_a_setting_says_so(sync_client: TestClient) -> None:
    router = APIRouter()

    @router.get("/gauges")
    @auth.public_when(lambda settings: settings.server.debug)
    async def gauges() -> dict[str, bool]:
        return {"ok": True}

    app: Any = sync_client.app
    app.include_router(router)
    assert sync_client.get("/gauges").status_code == 401
    app.state.settings = app.state.settings.model_copy(update={
        "server": app.state.settings.server.model_copy(update={"debug": True})})
    assert sync_client.get("/gauges").status_code == 200


def test_a_socket_takes_its_token_in_a_subprotocol_and_the_server_selects_pyflue(
    sync_client: TestClient,
) -> None:
    with sync_client.websocket_connect(
            "/workflows/echo", subprotocols=["pyflue", "pyflue.token." + TOKENS["a1"]]) as ws:
        assert ws.accepted_subprotocol == "pyflue"
        ws.send_text(json.dumps({"payload": {"k": 1}}))
        frames = []
        with pytest.raises(WebSocketDisconnect):
            while True:
                frames.append(json.loads(ws.receive_text()))
    assert frames[-1] == {"type": "result", "run_id": frames[0]["run_id"],
                          "result": {"payload": {"k": 1}}}
    assert frames[0]["data"]["requested_by"] == "a1"


async def _run(client: httpx.AsyncClient, who: str, **headers: str) -> str:
    r = await client.post("/workflows/echo?wait=result", json={"n": 1},
                          headers={**as_(who), **headers})
    assert r.status_code == 200, r.text
    run_id: str = r.json()["run_id"]
    return run_id


async def test_another_tenants_run_is_not_found_wherever_it_is_named(
    client: httpx.AsyncClient,
) -> None:
    run_id = await _run(client, "a1")
    missing = await client.get("/runs/workflow:echo:nope", headers=as_("b1"))
    for method, path in (("GET", f"/runs/{run_id}"), ("GET", f"/runs/{run_id}/events"),
                         ("GET", f"/runs/{run_id}/stream"), ("POST", f"/runs/{run_id}/cancel"),
                         ("GET", f"/runs?cursor={run_id}"), ("DELETE", f"/runs/{run_id}"),
                         ("GET", f"/runs/{run_id}/artifacts"),
                         ("GET", f"/runs/{run_id}/artifacts/report.xml"),
                         ("GET", f"/runs/{run_id}/metrics"),
                         ("POST", f"/workflows/echo?uploads_from={run_id}")):
        r = await client.request(method, path, headers=as_("b1"))
        assert r.status_code == 404, (method, path)
        assert r.json()["error"]["type"] == "not_found"
        if path == f"/runs/{run_id}":  # word for word a run that does not exist
            assert r.json()["error"]["message"] == missing.json()["error"]["message"].replace(
                "workflow:echo:nope", run_id)
    for who in ("a1", "a2", "root"):
        assert (await client.get(f"/runs/{run_id}", headers=as_(who))).status_code == 200


async def test_a_token_lists_only_its_tenants_runs_and_an_admin_lists_all(
    client: httpx.AsyncClient,
) -> None:
    mine, theirs = await _run(client, "a1"), await _run(client, "b1")

    async def listed(who: str) -> set[str]:
        return {r["run_id"] for r in (await client.get("/runs", headers=as_(who))).json()["runs"]}

    assert await listed("a2") == {mine}
    assert await listed("b1") == {theirs}
    assert await listed("root") == {mine, theirs}


async def test_the_run_and_its_first_event_say_which_token_asked(
    client: httpx.AsyncClient,
) -> None:
    run_id = await _run(client, "a2")
    run = (await client.get(f"/runs/{run_id}", headers=as_("root"))).json()
    assert (run["tenant"], run["requested_by"]) == ("a", "a2")
    events = (await client.get(f"/runs/{run_id}/events?types=run_start",
                               headers=as_("a1"))).json()["events"]
    assert events[0]["data"]["requested_by"] == "a2"


async def test_an_idempotency_key_is_the_tenants_own(client: httpx.AsyncClient) -> None:
    key = {"Idempotency-Key": "deploy-7"}
    a_first, a_again = await _run(client, "a1", **key), await _run(client, "a2", **key)
    b_first = await _run(client, "b1", **key)
    assert a_first == a_again != b_first


async def test_a_tenant_over_its_queue_limit_gets_429_with_retry_after(
    client: httpx.AsyncClient,
) -> None:
    started = []
    for status in ("running", "running", "queued"):  # max_concurrency 2, tenant_max_queued 1
        r = await client.post("/workflows/sleepy", json={}, headers=as_("a1"))
        assert r.status_code == 202
        started.append(r.json()["run_id"])
        while (await client.get(f"/runs/{started[-1]}", headers=as_("a1"))).json()[
                "status"] != status:
            await asyncio.sleep(0.01)
    refused = await client.post("/workflows/sleepy", json={}, headers=as_("a2"))
    assert refused.status_code == 429 and refused.json()["error"]["type"] == "queue_full"
    assert int(refused.headers["retry-after"]) >= 1
    assert (await client.post("/workflows/echo", json={}, headers=as_("b1"))).status_code == 202
    for run_id in started:
        await client.post(f"/runs/{run_id}/cancel", headers=as_("a1"))


async def test_an_sse_cursor_past_the_runs_last_event_is_a_clear_400(
    client: httpx.AsyncClient,
) -> None:
    run_id = await _run(client, "a1")
    count = (await client.get(f"/runs/{run_id}", headers=as_("a1"))).json()["event_count"]
    for params, headers in (({"after": count + 1}, {}), ({}, {"Last-Event-ID": str(count + 5)})):
        r = await client.get(f"/runs/{run_id}/stream", params=params,
                             headers={**as_("a1"), **headers})
        assert r.status_code == 400, r.text
        message = r.json()["error"]["message"]
        assert f"past the last event of run {run_id} ({count})" in message
    ok = await client.get(f"/runs/{run_id}/stream", params={"after": count}, headers=as_("a1"))
    assert ok.status_code == 200


def test_a_websocket_follow_past_the_end_or_of_another_tenant_closes_clearly(
    sync_client: TestClient,
) -> None:
    r = sync_client.post("/workflows/echo?wait=result", json={}, headers=as_("a1"))
    run_id, count = r.json()["run_id"], sync_client.get(
        f"/runs/{r.json()['run_id']}", headers=as_("a1")).json()["event_count"]
    with pytest.raises(WebSocketDisconnect) as closed, sync_client.websocket_connect(
            f"/runs/{run_id}/stream?after={count + 3}", headers=as_("a2")) as ws:
        frame = json.loads(ws.receive_text())
        ws.receive_text()
    assert closed.value.code == 4400
    assert frame["error"]["type"] == "invalid_parameter"
    assert f"past the last event of run {run_id}" in frame["error"]["message"]
    with pytest.raises(WebSocketDisconnect) as closed, sync_client.websocket_connect(
            f"/runs/{run_id}/stream", headers=as_("b1")) as ws:
        frame = json.loads(ws.receive_text())
        ws.receive_text()
    assert closed.value.code == 4404 and frame["error"]["type"] == "not_found"


# -- the token file ---------------------------------------------------------------------------

GOOD = {"name": "ci", "sha256": "0" * 64, "tenant": "t"}


@pytest.mark.parametrize(("entry", "says"), [
    ({**GOOD, "sha256": "hunter2"}, "entry 1 ('ci'): 'sha256' must be the 64 hex digits"),
    ({**GOOD, "tenant": ""}, "entry 1 ('ci'): 'tenant' must be a name"),
    ({**GOOD, "admin": "yes"}, "'admin' must be true or false"),
    ({**GOOD, "max_concurrency": 0}, "'max_concurrency' must be a positive integer"),
    ({**GOOD, "token": "x"}, "unknown field(s) token"),
    ("ci", "entry 1 must be an object"),
])
def test_a_bad_token_file_entry_is_refused_naming_it(tmp_path: Path, entry: Any,
                                                     says: str) -> None:
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps([entry]))
    with pytest.raises(ConfigError) as refused:
        read_tokens_file(path)
    assert says in refused.value.message and str(path) in refused.value.message


def test_two_tokens_of_one_tenant_must_agree_on_its_limit(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps([{**GOOD, "max_concurrency": 1},
                                {**GOOD, "name": "ci2", "max_concurrency": 2}]))
    with pytest.raises(ConfigError, match="token 'ci2': tenant 't' has max_concurrency 1"):
        Tokens.load(None, path)


def test_a_token_is_known_by_its_hash_and_the_api_token_is_an_admin(tmp_path: Path) -> None:
    tokens = Tokens.load("old-token", tokens_file(tmp_path))
    assert tokens.identify("a2-secret") == auth.Caller(name="a2", tenant="a", admin=False)
    assert tokens.identify("old-token") == auth.Caller(name="api-token", tenant="default",
                                                       admin=True)
    assert tokens.identify("a2-secre") is None and tokens.identify("") is None
    assert "a2-secret" not in (tmp_path / "tokens.json").read_text()


# -- fair admission ---------------------------------------------------------------------------

def test_fair_admission_gives_a_free_slot_to_the_tenant_with_fewest_running() -> None:
    queued = [Queued(f"a{i}", "a") for i in range(5)] + [Queued("b0", "b"), Queued("c0", "c")]
    assert fair_pick(queued, {"a": 2}, {}, 1) == ["b0"]
    assert fair_pick(queued, {"a": 2}, {}, 4) == ["b0", "c0", "a0", "a1"]
    assert fair_pick(queued, {}, {}, 3) == ["a0", "b0", "c0"]


def test_fair_admission_passes_over_a_tenant_at_its_limit() -> None:
    queued = [Queued("a0", "a"), Queued("a1", "a"), Queued("b0", "b")]
    assert fair_pick(queued, {"a": 1}, {"a": 1}, 3) == ["b0"]
    assert fair_pick(queued, {}, {"a": 1}, 3) == ["a0", "b0"]


def test_serve_refuses_a_token_file_it_cannot_use_naming_the_entry(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    (tmp_path / "workflows").mkdir()
    (tmp_path / "tokens.json").write_text(json.dumps([GOOD, {**GOOD, "name": "ci2",
                                                             "sha256": "s3cret"}]))
    env = {**os.environ, "PYFLUE_TOKENS_FILE": str(tmp_path / "tokens.json")}
    done = subprocess.run([sys.executable, "-m", "pyflue.cli", "serve", "--port", "1"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "entry 2 ('ci2'): 'sha256' must be the 64 hex digits" in done.stderr


def test_token_hash_prints_the_digest_a_token_file_holds() -> None:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "pyflue.cli", "token", "hash"],
                          input="s3cret\n", capture_output=True, text=True, check=True)
    assert done.stdout.strip() == token_hash("s3cret")


async def test_workers_counts_only_the_callers_tenants_running_runs(
    client: httpx.AsyncClient,
) -> None:
    started = {}
    for who in ("a1", "b1"):  # max_concurrency 2: both run at once
        r = await client.post("/workflows/sleepy", json={}, headers=as_(who))
        assert r.status_code == 202
        started[r.json()["run_id"]] = who
    # Both start at once: a run queued while admission was looking is not left for the slow
    # safety poll (10 s; it once was, a lost wake-up), hence the bound.
    async with asyncio.timeout(5):
        for run_id, who in started.items():
            while (await client.get(f"/runs/{run_id}", headers=as_(who))).json()[
                    "status"] != "running":
                await asyncio.sleep(0.01)

    async def running(who: str) -> int:
        (me,) = (await client.get("/workers", headers=as_(who))).json()["workers"]
        count: int = me["running"]
        return count

    assert await running("a2") == 1  # the tenant's run, seen by another of its tokens
    assert await running("b1") == 1  # b's own, not a's as well
    assert await running("root") == 2  # an admin counts all
    for run_id, who in started.items():
        await client.post(f"/runs/{run_id}/cancel", headers=as_(who))
