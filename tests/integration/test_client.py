"""``PyFlueClient`` and the remote CLI commands against a real server on a real socket."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from pydantic import SecretStr

from pyflue.api.app import create_app
from pyflue.client import (
    AuthError,
    NotFoundError,
    PyFlueClient,
    ServerError,
    ServerUnreachable,
)
from pyflue.events import EventType
from pyflue.models import RunStatus
from pyflue.settings import ServerSettings, Settings
from tests.integration.conftest import REPO

pytestmark = pytest.mark.docker

TOKEN = "s3cret-token"


@contextlib.contextmanager
def live_server(store_dir: Path, token: str | None = None, debug: bool = False
                ) -> Iterator[str]:
    """``create_app`` on uvicorn in a thread, on a socket bound before it starts."""
    settings = Settings(
        project_dir=REPO,
        store_url=f"sqlite+aiosqlite:///{store_dir / 'api.db'}",
        server=ServerSettings(api_token=SecretStr(token) if token else None, debug=debug),
    )
    config = uvicorn.Config(create_app(settings), log_config=None, log_level="warning",
                            timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        try:
            deadline = time.monotonic() + 30
            while not server.started:
                assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
                time.sleep(0.05)
            yield f"http://127.0.0.1:{sock.getsockname()[1]}"
        finally:
            server.should_exit = True
            thread.join(60)


@pytest.fixture(scope="module")
def server_url(tmp_path_factory: pytest.TempPathFactory, docker_client: Any) -> Iterator[str]:
    with live_server(tmp_path_factory.mktemp("server")) as url:
        yield url


@pytest.fixture
async def client(server_url: str) -> AsyncIterator[PyFlueClient]:
    async with PyFlueClient(server_url) as c:
        yield c


async def started_shell(client: PyFlueClient, run_id: str) -> None:
    """Waits until the run has started its first shell command."""
    for _ in range(600):
        if await client.runs.events(run_id, types=[EventType.shell_start]):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{run_id} started no command")


async def test_invoke_with_wait_returns_the_greeting(client: PyFlueClient) -> None:
    body = await client.workflows.invoke("hello", {"name": "Ada"})
    assert body["status"] == "completed" and body["run_id"].startswith("workflow:hello:")
    assert body["result"]["greeting"].startswith("hello, Ada from ")


async def test_invoke_without_wait_is_accepted_and_the_run_completes(
    client: PyFlueClient,
) -> None:
    body = await client.workflows.invoke("hello", {"name": "Bo"}, wait=False)
    assert body["status"] == "accepted"
    for _ in range(300):
        run = await client.runs.get(body["run_id"])
        if run.status.finished:
            break
        await asyncio.sleep(0.1)
    assert run.status is RunStatus.completed and run.payload == {"name": "Bo"}
    assert run.result["greeting"].startswith("hello, Bo from ")


async def test_a_payload_with_one_payload_key_arrives_unchanged(client: PyFlueClient) -> None:
    body = await client.workflows.invoke("hello", {"payload": {"name": "x"}})
    run = await client.runs.get(body["run_id"])
    assert run.payload == {"payload": {"name": "x"}}


async def test_streaming_an_invocation_yields_every_event_up_to_run_end(
    client: PyFlueClient,
) -> None:
    events = [e async for e in client.workflows.stream("hello", {"name": "Cy"})]
    assert [e.event_index for e in events] == list(range(1, len(events) + 1))
    assert events[0].type is EventType.run_start and events[-1].type is EventType.run_end
    assert events[-1].data["status"] == "completed"
    assert any("hello, Cy" in e.data.get("text", "") for e in events)


async def test_streaming_a_run_from_the_middle_gives_the_rest_once(client: PyFlueClient) -> None:
    run_id = (await client.workflows.invoke("hello", {}))["run_id"]
    total = (await client.runs.get(run_id)).event_count
    rest = [e.event_index async for e in client.runs.stream(run_id, after=3)]
    assert rest == list(range(4, total + 1))
    assert [e async for e in client.runs.stream(run_id, after=total)] == []


class DropFirstStream(httpx.AsyncBaseTransport):
    """A real HTTP transport that cuts the first event stream off after ``limit`` bytes."""

    def __init__(self, limit: int) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.limit = limit
        self.last_event_ids: list[str | None] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if not request.url.path.endswith("/stream"):
            return response
        self.last_event_ids.append(request.headers.get("last-event-id"))
        if len(self.last_event_ids) > 1:
            return response
        assert isinstance(response.stream, httpx.AsyncByteStream)
        return httpx.Response(response.status_code, headers=response.headers,
                              stream=CutStream(response.stream, self.limit),
                              extensions=response.extensions)

    async def aclose(self) -> None:
        await self.inner.aclose()


class CutStream(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream, limit: int) -> None:
        self.inner, self.limit = inner, limit

    async def __aiter__(self) -> AsyncIterator[bytes]:
        sent = 0
        async for chunk in self.inner:
            if sent + len(chunk) >= self.limit:
                yield chunk[: self.limit - sent]
                raise httpx.ReadError("connection dropped by the test")
            sent += len(chunk)
            yield chunk

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_a_dropped_stream_resumes_after_the_last_event_seen(
    client: PyFlueClient, server_url: str
) -> None:
    run_id = (await client.workflows.invoke("hello", {}))["run_id"]
    total = (await client.runs.get(run_id)).event_count
    transport = DropFirstStream(limit=1200)  # inside the third or fourth frame
    async with PyFlueClient(server_url, transport=transport) as flaky:
        events = [e async for e in flaky.runs.stream(run_id)]
    assert [e.event_index for e in events] == list(range(1, total + 1))
    first, resumed = transport.last_event_ids
    assert first is None and resumed is not None and 1 <= int(resumed) < total


async def test_runs_list_pages_newest_first(client: PyFlueClient) -> None:
    ids = [(await client.workflows.invoke("hello", {"i": i}))["run_id"] for i in range(3)]
    page = await client.runs.list(workflow="hello", limit=2)
    assert [r.run_id for r in page.runs] == ids[::-1][:2]
    assert page.next_cursor == ids[1]
    rest = await client.runs.list(workflow="hello", limit=2, cursor=page.next_cursor)
    assert rest.runs[0].run_id == ids[0]
    completed = await client.runs.list(status=RunStatus.completed, limit=500)
    assert {r.status for r in completed.runs} == {RunStatus.completed}


async def test_the_same_idempotency_key_gives_the_same_run(client: PyFlueClient) -> None:
    first = await client.workflows.invoke("hello", {}, idempotency_key="ci-build-7")
    again = await client.workflows.invoke("hello", {}, wait=False, idempotency_key="ci-build-7")
    assert again["run_id"] == first["run_id"]


async def test_cancelling_a_running_run_ends_it_cancelled_and_removes_its_container(
    client: PyFlueClient, docker_client: Any
) -> None:
    run_id = (await client.workflows.invoke(
        "shell_steps", {"steps": ["sleep 60"], "timeout": 120}, wait=False))["run_id"]
    await started_shell(client, run_id)
    # Its container by the id its events name (a warm one carries its pool's labels)
    created = await client.runs.events(run_id, types=[EventType.container_created])
    cid = created[0].data.container_id  # type: ignore[union-attr]
    assert docker_client.api.containers(filters={"id": cid})
    assert (await client.runs.cancel(run_id)) == {"status": "cancelling", "run_id": run_id}
    final = await client.runs.wait(run_id)
    assert final.status is RunStatus.cancelled and final.reason == "cancelled by request"
    assert final.container_id == cid
    for _ in range(300):  # a warm container's removal may end after the run's end
        if (await client.runs.get(run_id)).container_removed_at is not None:
            break
        await asyncio.sleep(0.1)
    assert docker_client.api.containers(all=True, filters={"id": cid}) == []


async def test_an_unknown_workflow_is_a_not_found_error(client: PyFlueClient) -> None:
    with pytest.raises(NotFoundError) as caught:
        await client.workflows.invoke("nope", {})
    error = caught.value
    assert error.status_code == 404 and error.type == "not_found" and error.run_id is None
    assert "unknown workflow 'nope'" in error.message and "hello" in error.message
    assert error.body["error"]["message"] == error.message


async def test_a_failed_run_with_wait_raises_a_server_error_naming_the_run(
    client: PyFlueClient,
) -> None:
    with pytest.raises(ServerError) as caught:
        await client.workflows.invoke("shell_steps", {"steps": "bad"})
    error = caught.value
    assert error.status_code == 500 and error.type == "ValueError"
    assert error.run_id is not None and error.run_id.startswith("workflow:shell_steps:")
    assert error.run_status == "failed" and "steps" in error.message
    assert (await client.runs.get(error.run_id)).status is RunStatus.failed


async def test_run_returns_the_final_record_whatever_the_outcome(client: PyFlueClient) -> None:
    done = await client.workflows.run("hello", {"name": "Di"})
    assert done.status is RunStatus.completed and "hello, Di" in done.result["greeting"]
    failed = await client.workflows.run("shell_steps", {"steps": "bad"})
    assert failed.status is RunStatus.failed and failed.error is not None
    assert failed.error.type == "ValueError"


async def test_run_hands_each_event_to_on_event_as_it_comes(client: PyFlueClient) -> None:
    seen: list[EventType] = []
    final = await client.workflows.run("hello", {"name": "Ed"},
                                       on_event=lambda e: seen.append(EventType(e.type)))
    assert final.status is RunStatus.completed
    assert seen[0] is EventType.run_start and seen[-1] is EventType.run_end
    assert len(seen) == final.event_count


async def test_a_token_guarded_server_refuses_clients_without_the_token(
    tmp_path: Path, docker_client: Any
) -> None:
    with live_server(tmp_path, token=TOKEN) as url:
        async with PyFlueClient(url) as anonymous, PyFlueClient(url, token="wrong") as wrong:
            assert (await anonymous.health())["ok"] is True
            with pytest.raises(AuthError) as caught:
                await anonymous.workflows.list()
            assert caught.value.status_code == 401 and caught.value.type == "unauthorized"
            with pytest.raises(AuthError):
                await wrong.runs.list()
        async with PyFlueClient(url, token=TOKEN) as authorized:
            names = [w.name for w in await authorized.workflows.list()]
            assert "hello" in names and "shell_steps" in names
            events = [e async for e in authorized.workflows.stream("hello", {})]
            assert events[-1].type is EventType.run_end


async def test_an_unreachable_server_says_to_start_one() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"  # bound, not listening
        async with PyFlueClient(url) as c:
            with pytest.raises(ServerUnreachable) as caught:
                await c.health()
    assert url in caught.value.message and "pyflue serve" in caught.value.message


# The CLI, as a CI job runs it.

PYFLUE = [sys.executable, "-m", "pyflue.cli"]


def pyflue(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items()
             if k not in ("PYFLUE_SERVER_URL", "PYFLUE_API_TOKEN")}
    return subprocess.run([*PYFLUE, *args], cwd=REPO, env={**clean, **env},
                          capture_output=True, text=True, timeout=90)


def test_cli_invoke_with_wait_prints_the_result_json(server_url: str) -> None:
    done = pyflue("invoke", "hello", "--server", server_url, "--wait", "-p", '{"name": "CI"}')
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["greeting"].startswith("hello, CI from ")


def test_cli_invoke_of_a_failing_run_exits_1_naming_it(server_url: str) -> None:
    done = pyflue("invoke", "shell_steps", "--payload", '{"steps": "bad"}',
                  "--server", server_url, "--wait")
    assert done.returncode == 1 and done.stdout == ""
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: run workflow:shell_steps:") and "ValueError" in last


def test_cli_invoke_prints_the_run_id_and_logs_show_its_events(server_url: str) -> None:
    done = pyflue("invoke", "hello", PYFLUE_SERVER_URL=server_url)
    assert done.returncode == 0, done.stderr
    run_id = done.stdout.strip()
    assert run_id.startswith("workflow:hello:")
    followed = pyflue("logs", run_id, "--server", server_url, "--follow")
    assert followed.returncode == 0, followed.stderr
    assert f"▶ run {run_id}" in followed.stdout and "■ completed" in followed.stdout
    stored = pyflue("logs", run_id, "--server", server_url, "--format", "ndjson")
    types = [json.loads(line)["type"] for line in stored.stdout.splitlines()]
    assert types[0] == "run_start" and types[-1] == "run_end"


def test_cli_invoke_follow_streams_events_then_prints_the_result(server_url: str) -> None:
    done = pyflue("invoke", "shell_steps", "--follow", "--server", server_url,
                  "-p", '{"steps": ["echo from-ci"]}')
    assert done.returncode == 0, done.stderr
    assert "$ echo from-ci" in done.stderr and "│ from-ci" in done.stderr
    assert json.loads(done.stdout)["steps"][0]["stdout"] == "from-ci\n"


def test_cli_cancel_of_an_unknown_run_is_one_line(server_url: str) -> None:
    done = pyflue("cancel", "workflow:hello:NOPE", "--server", server_url)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no run 'workflow:hello:NOPE'")


@pytest.mark.parametrize(("args", "code", "message"), [
    (["invoke", "nope"], 2, "unknown workflow 'nope'"),
    (["invoke", "hello", "--payload", "[1]"], 2, "payload must be a JSON object"),
    (["invoke", "hello", "--wait", "--follow"], 2, "not both"),
])
def test_cli_bad_input_exits_2_with_one_line(
    server_url: str, args: list[str], code: int, message: str
) -> None:
    done = pyflue(*args, "--server", server_url)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == code and len(lines) == 1 and message in lines[0], done.stderr


def test_cli_without_a_reachable_server_is_one_line_and_exit_3() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        done = pyflue("invoke", "hello", "--wait", "--server", url)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 3 and len(lines) == 1  # infrastructure
    assert f"not reachable at {url}" in lines[0] and "pyflue serve" in lines[0]


def test_cli_lists_a_servers_runs_and_workflows(server_url: str) -> None:
    ids = [pyflue("invoke", "hello", "--server", server_url, "--wait", "-p", f'{{"name": "{n}"}}')
           for n in ("a", "b")]
    assert all(done.returncode == 0 for done in ids)
    listed = pyflue("runs", "--server", server_url, "--workflow", "hello", "--limit", "2",
                    "--format", "json")
    assert listed.returncode == 0, listed.stderr
    runs = json.loads(listed.stdout)
    assert len(runs) == 2 and [r["payload"]["name"] for r in runs] == ["b", "a"]  # newest first
    assert all(r["source"] == "http" for r in runs)
    flows = pyflue("workflows", "--format", "json", PYFLUE_SERVER_URL=server_url)
    assert flows.returncode == 0, flows.stderr
    assert {"hello", "shell_steps"} <= {w["name"] for w in json.loads(flows.stdout)}


def test_cli_logs_of_a_local_run_with_a_server_set_reads_the_local_store(
    server_url: str, tmp_path: Path,
) -> None:
    # A CI shell with PYFLUE_SERVER_URL exported, then a `pyflue run` on the machine itself.
    store = {"PYFLUE_STORE_URL": f"sqlite+aiosqlite:///{tmp_path / 'local.db'}"}
    done = pyflue("run", "hello", "-q", **store)
    assert done.returncode == 0, done.stderr
    run_id = done.stderr.split()[1]
    shown = pyflue("logs", run_id, "--format", "ndjson", PYFLUE_SERVER_URL=server_url, **store)
    assert shown.returncode == 0, shown.stderr
    assert f"not on {server_url}; shown from this machine's store" in shown.stderr
    assert json.loads(shown.stdout.splitlines()[-1])["type"] == "run_end"
    missing = pyflue("logs", "workflow:hello:01NOWHERE", PYFLUE_SERVER_URL=server_url, **store)
    lines = missing.stderr.strip().splitlines()
    assert missing.returncode != 0 and len(lines) == 1 and "01NOWHERE" in lines[0]
    # With no local store at all, looking for one does not create it.
    bare = tmp_path / "bare"
    bare.mkdir()
    again = pyflue("logs", "workflow:hello:01NOWHERE", "-C", str(bare),
                   PYFLUE_SERVER_URL=server_url)
    assert again.returncode != 0 and "01NOWHERE" in again.stderr
    assert not (bare / ".pyflue").exists()


def test_cli_rerun_on_a_server_runs_the_same_payload_again(server_url: str) -> None:
    first = pyflue("invoke", "hello", "--server", server_url, "--wait", "-p", '{"name": "again"}')
    run_id = first.stderr.split()[1]
    done = pyflue("rerun", run_id, "--server", server_url)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["greeting"].startswith("hello, again from ")
    new_id = done.stderr.split()[1]
    assert new_id.startswith("workflow:hello:") and new_id != run_id
    assert "■ completed" in done.stderr
    unknown = pyflue("rerun", "workflow:hello:nope", "--server", server_url)
    assert unknown.returncode == 1 and "no run 'workflow:hello:nope'" in unknown.stderr


def test_cli_rerun_of_a_local_run_with_a_server_set_runs_it_here(
    server_url: str, tmp_path: Path,
) -> None:
    store = {"PYFLUE_STORE_URL": f"sqlite+aiosqlite:///{tmp_path / 'local.db'}"}
    done = pyflue("run", "hello", "-q", "-p", '{"name": "local"}', **store)
    run_id = done.stderr.split()[1]
    again = pyflue("rerun", run_id, "-q", PYFLUE_SERVER_URL=server_url, **store)
    assert again.returncode == 0, again.stderr
    assert f"not on {server_url}; running it again on this machine" in again.stderr
    assert json.loads(again.stdout)["greeting"].startswith("hello, local from ")
