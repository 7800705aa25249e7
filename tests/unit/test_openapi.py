"""The OpenAPI document and its /docs page, in process (tests/contract fuzzes the real server)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from pyflue.api.app import create_app
from pyflue.api.runs import TYPES_PATTERN
from pyflue.sandbox.fake import FakeSandboxProvider
from pyflue.settings import ServerSettings, Settings
from pyflue.store import MemoryStore
from tests.conftest import WriteWorkflow

TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ECHO = """
async def run(ctx):
    return {"json": await ctx.req.json(), "text": (await ctx.req.body()).decode(),
            "header": ctx.req.headers.get("x-note")}
"""


async def _client(project: Path, token: str | None) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(project_dir=project, server=ServerSettings(
        api_token=SecretStr(token) if token else None))
    app = create_app(settings, store=MemoryStore(), provider=FakeSandboxProvider())
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            yield c


@pytest.fixture
async def client(project: Path, write_workflow: WriteWorkflow) -> AsyncIterator[httpx.AsyncClient]:
    write_workflow("echo", ECHO)
    async for c in _client(project, TOKEN):
        yield c


@pytest.fixture
async def document(client: httpx.AsyncClient) -> dict[str, Any]:
    r = await client.get("/openapi.json")
    assert r.status_code == 200
    doc: dict[str, Any] = r.json()
    return doc


def _operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(path, method, op) for path, item in doc["paths"].items()
            for method, op in item.items()]


async def test_the_document_has_a_bearer_scheme_every_operation_but_health_requires(
    document: dict[str, Any],
) -> None:
    assert document["components"]["securitySchemes"]["bearer"] == {
        "type": "http", "scheme": "bearer",
        "description": "A token the server accepts (PYFLUE_API_TOKEN, or one of "
                       "PYFLUE_TOKENS_FILE), as `Authorization: Bearer <token>`."}
    for path, method, op in _operations(document):
        expected = [] if path == "/health" else [{"bearer": []}]
        assert op["security"] == expected, (method, path)


async def test_without_a_token_the_document_says_credentials_are_optional(
    project: Path,
) -> None:
    async for c in _client(project, None):
        doc = (await c.get("/openapi.json")).json()
    assert doc["paths"]["/runs"]["get"]["security"] == [{"bearer": []}, {}]


async def test_no_operation_documents_a_422(document: dict[str, Any]) -> None:
    for path, method, op in _operations(document):
        assert "422" not in op["responses"], (method, path)
    assert "HTTPValidationError" not in document["components"]["schemas"]


async def test_every_operation_documents_its_errors_with_the_error_body(
    document: dict[str, Any],
) -> None:
    for path, method, op in _operations(document):
        errors = {code: r for code, r in op["responses"].items() if code[0] in "45"}
        assert any(code.startswith("4") for code in errors) or path == "/health", (method, path)
        assert "500" in errors, (method, path)
        for code, response in errors.items():
            schema = response["content"]["application/json"]["schema"]
            # The one exception: an unhealthy server's 503 is its Health, ok false and why.
            body = "Health" if (path, code) == ("/health", "503") else "ErrorBody"
            assert schema == {"$ref": f"#/components/schemas/{body}"}, (method, path, code)
    assert "503" in document["paths"]["/health"]["get"]["responses"]


async def test_the_invocation_documents_its_body_headers_and_answers(
    document: dict[str, Any],
) -> None:
    op = document["paths"]["/workflows/{name}"]["post"]
    assert op["requestBody"]["content"]["application/json"]["schema"]["type"] == "object"
    assert set(op["responses"]) == {"200", "202", "400", "401", "404", "409", "413", "415",
                                    "429", "500", "503", "504"}
    assert set(op["responses"]["200"]["content"]) == {"application/json", "text/event-stream"}
    for code in ("200", "202"):
        assert op["responses"][code]["headers"]["X-Flue-Run-Id"]["schema"] == {"type": "string"}
    key = next(p for p in op["parameters"] if p["name"] == "Idempotency-Key")
    assert key["in"] == "header" and key["schema"]["maxLength"] == 300


async def test_the_event_stream_documents_its_frames_and_last_event_id(
    document: dict[str, Any],
) -> None:
    op = document["paths"]["/runs/{run_id}/stream"]["get"]
    frame = op["responses"]["200"]["content"]["text/event-stream"]["schema"]
    assert frame["required"] == ["id", "event", "data"]
    event = document["components"]["schemas"]["EventPage"]["properties"]["events"]["items"]
    assert frame["properties"]["data"]["contentSchema"] == event
    header = next(p for p in op["parameters"] if p["name"] == "Last-Event-ID")
    assert header["schema"] == {"type": "integer", "minimum": 0, "maximum": 2**63 - 1}


async def test_the_websocket_routes_are_described_with_their_close_codes(
    document: dict[str, Any],
) -> None:
    sockets = document["x-websockets"]
    assert set(sockets) == {"/workflows/{name}", "/runs/{run_id}/stream"}
    assert {"1000", "4400", "4401", "4404", "4408", "1011"} <= set(
        sockets["/workflows/{name}"]["close_codes"])
    assert "WS /workflows/{name}" in document["info"]["description"]


async def test_the_docs_page_loads_only_local_assets(client: httpx.AsyncClient) -> None:
    page = (await client.get("/docs")).text
    assert "swagger" in page.lower() and not re.search(r"https?://", page)
    assets = re.findall(r'(?:href|src)="([^"]+)"', page)
    assert assets and all(a.startswith("/docs/assets/") for a in assets)
    for asset in assets:
        assert (await client.get(asset)).status_code == 200, asset


async def test_the_docs_page_loads_swagger_ui_5(client: httpx.AsyncClient) -> None:
    bundle = (await client.get("/docs/assets/swagger-ui-bundle.js")).text
    assert re.search(r'"5\.\d+\.\d+"', bundle)


@pytest.mark.parametrize("path", ["/docs", "/openapi.json", "/docs/assets/swagger-ui.css",
                                  "/health"])
async def test_the_docs_open_without_a_token(client: httpx.AsyncClient, path: str) -> None:
    assert (await client.get(path)).status_code == 200


async def test_the_operations_still_need_the_token(client: httpx.AsyncClient) -> None:
    denied = await client.get("/runs")
    assert denied.status_code == 401 and denied.json()["error"]["type"] == "unauthorized"
    assert (await client.get("/runs", headers=AUTH)).status_code == 200


async def test_a_cursor_that_names_no_run_is_not_found(client: httpx.AsyncClient) -> None:
    r = await client.get("/runs?cursor=workflow:echo:nope", headers=AUTH)
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found"
    assert "next_cursor" in r.json()["error"]["message"]


@pytest.mark.parametrize("types", ["log", "log,run_end", " log , run_end ", ",log,,", "", " ",
                                   "log run_end", "bogus", "log,\trun_end", "Log"])
async def test_the_types_filter_accepts_exactly_what_its_documented_pattern_matches(
    client: httpx.AsyncClient, types: str,
) -> None:
    run_id = (await client.post("/workflows/echo?wait=result", json={}, headers=AUTH)
              ).json()["run_id"]
    r = await client.get(f"/runs/{run_id}/events", params={"types": types}, headers=AUTH)
    matches = re.fullmatch(TYPES_PATTERN.removeprefix("^").removesuffix("$"), types)
    assert r.status_code == (200 if matches else 400), r.text


async def test_a_workflow_reads_the_body_json_and_headers_of_its_request(
    client: httpx.AsyncClient,
) -> None:
    r = await client.post("/workflows/echo?wait=result", content=b'{"payload": {"k": 1}}',
                          headers={**AUTH, "Content-Type": "application/json", "X-Note": "hi"})
    assert r.json()["result"] == {"json": {"payload": {"k": 1}},
                                  "text": '{"payload": {"k": 1}}', "header": "hi"}
