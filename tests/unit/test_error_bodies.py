"""Tracebacks and server paths leave HTTP error bodies only in debug mode (PYFLUE_DEBUG)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from pyflue.api.app import create_app
from pyflue.sandbox.fake import FakeSandboxProvider
from pyflue.settings import ServerSettings, Settings
from pyflue.store import MemoryStore
from tests.conftest import WriteWorkflow

WORKFLOWS = {
    "boom": "async def run(ctx):\n    raise ValueError('nope')\n",
    "broken": "def run(ctx:\n",  # a syntax error: the workflow cannot be imported
    "missing_dep": "import no_such_module_pyflue\nasync def run(ctx):\n    return 1\n",
}


@pytest.fixture(params=[False, True], ids=["production", "debug"])
async def client(request: pytest.FixtureRequest, project: Path,
                 write_workflow: WriteWorkflow) -> AsyncIterator[tuple[httpx.AsyncClient, bool]]:
    for name, source in WORKFLOWS.items():
        write_workflow(name, source)
    settings = Settings(project_dir=project, server=ServerSettings(debug=request.param))
    app = create_app(settings, store=MemoryStore(), provider=FakeSandboxProvider())
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            yield c, request.param


def _leaks(body: Any, project: Path) -> list[str]:
    text = str(body)
    return [w for w in ("Traceback", str(project), "site-packages", "/pyflue/", ".py\"")
            if w in text]


@pytest.mark.parametrize("name", sorted(WORKFLOWS))
async def test_error_bodies_hold_no_traceback_nor_server_path_outside_debug(
    client: tuple[httpx.AsyncClient, bool], project: Path, name: str
) -> None:
    http, debug = client
    answer = await http.post(f"/workflows/{name}?wait=result", json={})
    assert answer.status_code >= 400
    body = answer.json()
    assert set(body) >= {"error"} and body["error"]["message"]
    if debug:
        assert _leaks(body, project), body  # the operator sees where it broke
    else:
        assert _leaks(body, project) == [], body
