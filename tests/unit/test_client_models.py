"""The Python client speaks the server's response models (pyflue.responses), in process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from pyflue import responses
from pyflue.api.app import create_app
from pyflue.client import ApiError, PyFlueClient
from pyflue.sandbox.fake import FakeSandboxProvider
from pyflue.settings import Settings
from pyflue.store import MemoryStore
from tests.conftest import WriteWorkflow


@pytest.fixture
async def client(project: Path, write_workflow: WriteWorkflow) -> AsyncIterator[PyFlueClient]:
    write_workflow("echo", """
async def run(ctx):
    return ctx.payload
""")
    app = create_app(Settings(project_dir=project), store=MemoryStore(),
                     provider=FakeSandboxProvider())
    async with app.router.lifespan_context(app), PyFlueClient(
            "http://t", transport=httpx.ASGITransport(app=app)) as c:
        yield c


async def test_lists_come_back_as_the_servers_response_models(client: PyFlueClient) -> None:
    await client.workflows.invoke("echo", {"a": 1})
    assert isinstance(await client.runs.list(), responses.RunPage)
    assert all(isinstance(w, responses.WorkflowInfo) for w in await client.workflows.list())


async def test_invoke_still_returns_the_body_as_a_dict(client: PyFlueClient) -> None:
    body = await client.workflows.invoke("echo", {"a": 1})
    assert body == {"status": "completed", "run_id": body["run_id"], "result": {"a": 1}}
    accepted = await client.workflows.invoke("echo", {}, wait=False)
    assert accepted == responses.Accepted(run_id=accepted["run_id"]).model_dump()


async def test_an_answer_that_is_not_the_documented_model_is_an_api_error() -> None:
    async def health(_: object) -> JSONResponse:
        return JSONResponse({"status": "up"})

    other = Starlette(routes=[Route("/health", health)])
    async with PyFlueClient("http://t", transport=httpx.ASGITransport(app=other)) as c:
        with pytest.raises(ApiError) as caught:
            await c.health()
    assert caught.value.type == "invalid_response" and "Health" in caught.value.message
