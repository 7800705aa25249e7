"""The HTTP API in process (ASGI transport) on the library's fakes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr

from pyflue.api.app import create_app
from pyflue.sandbox.fake import FakeSandboxProvider
from pyflue.settings import ServerSettings, Settings
from pyflue.store import MemoryStore
from tests.conftest import WriteWorkflow

WORKFLOWS = {
    "echo": """
async def run(ctx):
    ctx.log.info("got", keys=sorted(ctx.payload))
    return {"payload": ctx.payload, "path": ctx.req.url.path if ctx.req else None}
""",
    "boom": """
async def run(ctx):
    raise ValueError("nope")
""",
    "slow": """
from pyflue import create_agent
agent = create_agent(lambda ctx: {})
async def run(ctx):
    h = await ctx.init(agent)
    await h.shell("sleep 30")
""",
}


@pytest.fixture
async def app(project: Path, write_workflow: WriteWorkflow) -> AsyncIterator[FastAPI]:
    for name, source in WORKFLOWS.items():
        write_workflow(name, source)
    settings = Settings(project_dir=project, server=ServerSettings(max_concurrency=2,
                                                                   max_body_bytes=2048))
    application = create_app(settings, store=MemoryStore(), provider=FakeSandboxProvider())
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


async def test_invoke_accepts_and_the_run_completes(client: httpx.AsyncClient) -> None:
    r = await client.post("/workflows/echo", json={"a": 1})
    assert r.status_code == 202 and r.json()["status"] == "accepted"
    run_id = r.json()["run_id"]
    assert r.headers["x-flue-run-id"] == run_id and run_id.startswith("workflow:echo:")
    for _ in range(100):
        run = (await client.get(f"/runs/{run_id}")).json()
        if run["status"] == "completed":
            break
        await asyncio.sleep(0.02)
    assert run["result"] == {"payload": {"a": 1}, "path": "/workflows/echo"}


async def test_wait_result_returns_the_result_and_unwraps_payload(
    client: httpx.AsyncClient,
) -> None:
    r = await client.post("/workflows/echo?wait=result", json={"payload": {"b": 2}})
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "completed" and body["result"]["payload"] == {"b": 2}


async def test_a_failed_run_answers_5xx_naming_the_run(client: httpx.AsyncClient) -> None:
    r = await client.post("/workflows/boom?wait=result", json={})
    assert r.status_code == 500
    body = r.json()
    assert body["error"]["type"] == "ValueError" and body["error"]["message"] == "nope"
    assert body["run_id"] == r.headers["x-flue-run-id"]


async def test_sse_invocation_streams_events_until_run_end(client: httpx.AsyncClient) -> None:
    async with client.stream("POST", "/workflows/echo", json={"x": 1},
                             headers={"Accept": "text/event-stream"}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        text = "".join([chunk async for chunk in r.aiter_text()])
    frames = [f for f in text.split("\n\n") if f.startswith("id:")]
    events = [json.loads(f.split("data: ", 1)[1]) for f in frames]
    assert [e["event_index"] for e in events] == list(range(1, len(events) + 1))
    assert events[0]["type"] == "run_start" and events[-1]["type"] == "run_end"
    assert frames[-1].splitlines()[1] == "event: run_end"


@pytest.mark.parametrize(("kwargs", "status", "kind"), [
    ({"content": b"{bad", "headers": {"content-type": "application/json"}}, 400, "invalid_json"),
    ({"content": b"a=1", "headers": {"content-type": "text/plain"}}, 415,
     "unsupported_media_type"),
    ({"json": [1, 2]}, 400, "invalid_payload"),
    ({"json": {"big": "x" * 5000}}, 413, "payload_too_large"),
])
async def test_bad_bodies_get_clear_errors(
    client: httpx.AsyncClient, kwargs: dict[str, object], status: int, kind: str
) -> None:
    r = await client.post("/workflows/echo", **kwargs)  # type: ignore[arg-type]
    assert r.status_code == status and r.json()["error"]["type"] == kind
    assert (await client.get("/health")).json()["ok"] is True


async def test_unknown_things_are_404_and_bad_parameters_400(client: httpx.AsyncClient) -> None:
    r = await client.post("/workflows/nope", json={})
    assert r.status_code == 404 and "available: boom, echo, slow" in r.json()["error"]["message"]
    assert (await client.get("/runs/workflow:x:none")).status_code == 404
    r = await client.get("/runs?limit=zero")
    assert r.status_code == 400 and "'limit'" in r.json()["error"]["message"]
    run_id = (await client.post("/workflows/echo?wait=result", json={})).json()["run_id"]
    r = await client.get(f"/runs/{run_id}/events?types=log,bogus")
    assert r.status_code == 400 and "bogus" in r.json()["error"]["message"]
    r = await client.post("/workflows/echo?wait=soon", json={})
    assert r.status_code == 400 and "'wait'" in r.json()["error"]["message"]


async def test_events_page_and_runs_list(client: httpx.AsyncClient) -> None:
    ids = [(await client.post("/workflows/echo?wait=result", json={"i": i})).json()["run_id"]
           for i in range(3)]
    page = (await client.get("/runs?limit=2")).json()
    assert [r["run_id"] for r in page["runs"]] == ids[::-1][:2]
    rest = (await client.get(f"/runs?limit=2&cursor={page['next_cursor']}")).json()
    assert [r["run_id"] for r in rest["runs"]] == [ids[0]] and rest["next_cursor"] is None
    events = (await client.get(f"/runs/{ids[0]}/events?after=1&limit=2")).json()
    assert [e["event_index"] for e in events["events"]] == [2, 3]
    assert events["next_after"] == 3
    logs = (await client.get(f"/runs/{ids[0]}/events?types=log")).json()["events"]
    assert [e["data"]["fields"] for e in logs] == [{"keys": ["i"]}]


async def test_cancel_a_running_run_then_again_is_409(client: httpx.AsyncClient) -> None:
    run_id = (await client.post("/workflows/slow", json={})).json()["run_id"]
    for _ in range(200):
        events = (await client.get(f"/runs/{run_id}/events?types=shell_start")).json()["events"]
        if events:
            break
        await asyncio.sleep(0.01)
    r = await client.post(f"/runs/{run_id}/cancel")
    assert r.status_code == 202 and r.json()["status"] == "cancelling"
    for _ in range(200):
        run = (await client.get(f"/runs/{run_id}")).json()
        if run["status"] != "running":
            break
        await asyncio.sleep(0.01)
    assert run["status"] == "cancelled"
    again = await client.post(f"/runs/{run_id}/cancel")
    assert again.status_code == 409 and again.json()["error"]["type"] == "conflict"


async def test_run_end_always_carries_an_error_field(client: httpx.AsyncClient) -> None:
    async def run_end(run_id: str) -> dict[str, Any]:
        for _ in range(200):
            events = (await client.get(f"/runs/{run_id}/events?types=run_end")).json()["events"]
            if events:
                return dict(events[0]["data"])
            await asyncio.sleep(0.01)
        raise AssertionError(f"no run_end for {run_id}")

    ok = (await client.post("/workflows/echo?wait=result", json={})).json()["run_id"]
    end = await run_end(ok)
    assert end["status"] == "completed" and end["is_error"] is False and end["error"] is None
    failed = (await client.post("/workflows/boom?wait=result", json={})).json()["run_id"]
    end = await run_end(failed)
    assert end["is_error"] is True and end["error"]["type"] == "ValueError"
    assert end["error"]["message"] == "nope"
    slow = (await client.post("/workflows/slow", json={})).json()["run_id"]
    await client.post(f"/runs/{slow}/cancel")
    end = await run_end(slow)
    assert end["status"] == "cancelled" and end["is_error"] is True
    assert end["error"] == {"type": "cancelled", "message": "run cancelled: cancelled by request",
                            "details": None}
    assert end["reason"] == "cancelled by request"


@pytest.mark.parametrize(("path", "headers"), [
    ("/runs/{id}/events?after=9223372036854775808", {}),
    ("/runs/{id}/stream?after=9223372036854775808", {}),
    ("/runs/{id}/stream", {"Last-Event-ID": "9223372036854775808"}),
    ("/runs/{id}/stream", {"Last-Event-ID": "1e3"}),
    ("/runs/{id}/stream", {"Last-Event-ID": "\u00b2".encode()}),  # a digit, not ASCII
])
async def test_an_event_cursor_out_of_range_is_400(
    client: httpx.AsyncClient, path: str, headers: dict[str, Any],
) -> None:
    run_id = (await client.post("/workflows/echo?wait=result", json={})).json()["run_id"]
    r = await client.get(path.format(id=run_id), headers=headers)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_parameter"
    assert "9223372036854775807" in r.json()["error"]["message"]


async def test_the_largest_event_cursor_is_accepted(client: httpx.AsyncClient) -> None:
    run_id = (await client.post("/workflows/echo?wait=result", json={})).json()["run_id"]
    r = await client.get(f"/runs/{run_id}/events?after=9223372036854775807")
    assert r.status_code == 200 and r.json()["events"] == []


async def test_an_unexpected_failure_answers_the_documented_error_shape(
    project: Path, write_workflow: WriteWorkflow,
) -> None:
    class BrokenStore(MemoryStore):
        async def list_runs(self, **kwargs: Any) -> Any:
            if kwargs.get("workflow") == "explode":
                raise RuntimeError("a bug with a secret in its message")
            return await super().list_runs(**kwargs)

    write_workflow("echo", WORKFLOWS["echo"])
    application = create_app(Settings(project_dir=project), store=BrokenStore(),
                             provider=FakeSandboxProvider())
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            r = await c.get("/runs?workflow=explode")
    assert r.status_code == 500
    assert r.json()["error"]["type"] == "internal_error"
    assert "RuntimeError" in r.json()["error"]["message"]
    assert "secret" not in r.text


async def test_the_same_idempotency_key_returns_the_same_run(client: httpx.AsyncClient) -> None:
    headers = {"Idempotency-Key": "build-42"}
    first = await client.post("/workflows/echo", json={"n": 1}, headers=headers)
    second = await client.post("/workflows/echo", json={"n": 2}, headers=headers)
    other = await client.post("/workflows/echo", json={"n": 3})
    assert first.json()["run_id"] == second.json()["run_id"] != other.json()["run_id"]


async def test_a_token_guards_every_route_but_health(
    project: Path, write_workflow: WriteWorkflow
) -> None:
    write_workflow("echo", WORKFLOWS["echo"])
    settings = Settings(project_dir=project,
                        server=ServerSettings(api_token=SecretStr("s3cret")))
    application = create_app(settings, store=MemoryStore(), provider=FakeSandboxProvider())
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            assert (await c.get("/health")).status_code == 200
            # The contract is public (the docs page must load in a browser); its operations
            # are not.
            assert (await c.get("/openapi.json")).status_code == 200
            denied = await c.get("/runs")
            assert denied.status_code == 401 and denied.json()["error"]["type"] == "unauthorized"
            assert (await c.get("/runs", headers={"Authorization": "Bearer wrong"})).status_code == 401
            ok = await c.post("/workflows/echo?wait=result", json={},
                              headers={"Authorization": "Bearer s3cret"})
            assert ok.status_code == 200


def test_serving_beyond_loopback_needs_a_token_or_a_flag() -> None:
    from pyflue.cli import bind_problem

    assert bind_problem("127.0.0.1", False, False) is None
    assert bind_problem("localhost", False, False) is None
    assert bind_problem("::1", False, False) is None
    problem = bind_problem("0.0.0.0", False, False)
    assert problem is not None and "PYFLUE_API_TOKEN" in problem and "--insecure-bind" in problem
    assert bind_problem("0.0.0.0", True, False) is None
    assert bind_problem("0.0.0.0", False, True) is None


async def test_the_openapi_page_and_schema_are_served(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()
    assert "/workflows/{name}" in schema["paths"] and "/runs/{run_id}/cancel" in schema["paths"]
    assert "swagger" in (await client.get("/docs")).text.lower()


async def test_a_workflow_can_read_the_request_body_from_ctx_req(
    project: Path, write_workflow: WriteWorkflow
) -> None:
    write_workflow("body", """
async def run(ctx):
    return {"raw": (await ctx.req.json()), "agent": ctx.req.headers.get("user-agent")}
""")
    settings = Settings(project_dir=project)
    application = create_app(settings, store=MemoryStore(), provider=FakeSandboxProvider())
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://t",
                                     headers={"User-Agent": "ci/1"}) as c:
            r = await c.post("/workflows/body?wait=result", json={"payload": {"k": 1}})
    assert r.json()["result"] == {"raw": {"payload": {"k": 1}}, "agent": "ci/1"}
