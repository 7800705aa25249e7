"""WebSocket invocation and following, with the `websockets` library against a real server."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from pyflue.client import Outcome
from tests.conftest import WriteWorkflow
from tests.integration.servers import Server

pytestmark = pytest.mark.docker

WORKFLOWS = {
    "nap": """
        from pyflue import create_agent
        agent = create_agent(lambda ctx: {})
        async def run(ctx):
            h = await ctx.init(agent)
            await h.shell(f"for i in $(seq 1 {ctx.payload.get('lines', 5)}); do echo line $i; "
                          f"sleep {ctx.payload.get('pause', 0.1)}; done")
            return {"done": True}
        """,
    "chatty": """
        async def run(ctx):
            for i in range(ctx.payload.get("n", 10)):
                ctx.log.info("x" * ctx.payload.get("size", 2000), i=i)
            return {"n": ctx.payload.get("n", 10)}
        """,
    "boom": """
        async def run(ctx):
            raise RuntimeError("it broke")
        """,
    "who": """
        async def run(ctx):
            return {"req": type(ctx.req).__name__ if ctx.req is not None else None}
        """,
}


@pytest.fixture(autouse=True)
def _workflows(write_workflow: WriteWorkflow) -> None:
    for name, source in WORKFLOWS.items():
        write_workflow(name, source)


@pytest.fixture
def server(project: Path, tmp_path: Path) -> Iterator[Server]:
    srv = Server(project, tmp_path / "ws.db", concurrency=8,
                 env={"PYFLUE_WS_QUEUE_EVENTS": "50", "PYFLUE_WS_SEND_TIMEOUT": "2"})
    srv.start()
    yield srv
    srv.stop()


def ws_url(server: Server, path: str) -> str:
    return server.url.replace("http://", "ws://") + path


async def _frames(sock: Any) -> list[dict[str, Any]]:
    """Every frame until the server closes, whatever the close code."""
    frames = []
    try:
        while True:
            frames.append(json.loads(await sock.recv()))
    except ConnectionClosed:
        return frames


async def test_one_shot_invocation_streams_events_then_the_result(server: Server) -> None:
    async with websockets.connect(ws_url(server, "/workflows/nap")) as sock:
        await sock.send(json.dumps({"payload": {"lines": 3}}))
        frames = await _frames(sock)
        assert sock.close_code == 1000
    events, last = frames[:-1], frames[-1]
    assert [e["event_index"] for e in events] == list(range(1, len(events) + 1))
    assert events[0]["type"] == "run_start" and events[-1]["type"] == "run_end"
    output = "".join(e["data"]["text"] for e in events if e["type"] == "shell_output")
    assert output == "line 1\nline 2\nline 3\n"
    assert last == {"type": "result", "run_id": events[0]["run_id"], "result": {"done": True}}


async def test_a_failed_run_ends_with_an_error_frame(server: Server) -> None:
    async with websockets.connect(ws_url(server, "/workflows/boom")) as sock:
        await sock.send(json.dumps({"payload": {}}))
        last = (await _frames(sock))[-1]
    assert last["type"] == "error" and last["error"]["type"] == "RuntimeError"
    assert last["error"]["message"] == "it broke" and last["run_id"].startswith("workflow:boom:")


async def test_a_socket_invocation_has_no_http_request_and_says_where_it_came_from(
    server: Server,
) -> None:
    async with websockets.connect(ws_url(server, "/workflows/who")) as sock:
        await sock.send(json.dumps({"payload": {}}))
        last = (await _frames(sock))[-1]
    assert last["result"] == {"req": None}  # ctx.req is the HTTP request, or None
    async with httpx.AsyncClient() as http:
        run = (await http.get(f"{server.url}/runs/{last['run_id']}")).json()
    assert run["source"] == "websocket"


@pytest.mark.parametrize("after", ["99999999999999999999", "-1", "%C2%B2", "1.5"])
async def test_a_bad_cursor_to_follow_gets_an_error_frame(server: Server, after: str) -> None:
    async with websockets.connect(ws_url(server, "/workflows/who")) as sock:
        await sock.send(json.dumps({"payload": {}}))
        run_id = (await _frames(sock))[-1]["run_id"]
    async with websockets.connect(ws_url(server, f"/runs/{run_id}/stream?after={after}")) as sock:
        frames = await _frames(sock)
        assert sock.close_code == 4400
    [frame] = frames
    assert frame["type"] == "error" and frame["error"]["type"] == "invalid_parameter"
    assert "an integer from 0 to 9223372036854775807" in frame["error"]["message"]


@pytest.mark.parametrize(("path", "message", "kind", "code"), [
    ("/workflows/nope", json.dumps({"payload": {}}), "not_found", 4404),
    ("/workflows/nap", "not json", "invalid_message", 4400),
    ("/workflows/nap", json.dumps({"data": {}}), "invalid_message", 4400),
    ("/workflows/nap", json.dumps({"payload": [1]}), "invalid_payload", 4400),
])
async def test_bad_invocations_get_an_error_frame_then_close(
    server: Server, path: str, message: str, kind: str, code: int
) -> None:
    async with websockets.connect(ws_url(server, path)) as sock:
        await sock.send(message)
        frames = await _frames(sock)
        assert sock.close_code == code
    assert frames[-1]["type"] == "error" and frames[-1]["error"]["type"] == kind
    if kind == "invalid_message":
        assert '{"payload"' in frames[-1]["error"]["message"]


@pytest.mark.parametrize(("path", "message", "said"), [
    ("/workflows/nope", json.dumps({"payload": {}}), "unknown workflow 'nope'; available: "),
    ("/runs/workflow:nap:NOPE/stream", None, "no run 'workflow:nap:NOPE'"),
])
async def test_error_frames_carry_no_server_paths_nor_cli_commands(
    server: Server, project: Path, path: str, message: str | None, said: str
) -> None:
    async with websockets.connect(ws_url(server, path)) as sock:
        if message is not None:
            await sock.send(message)
        frames = await _frames(sock)
        assert sock.close_code == 4404
    text = frames[-1]["error"]["message"]
    assert text.startswith(said)
    assert str(project) not in text and "looked in" not in text and "pyflue runs" not in text


async def test_following_a_running_run_from_the_middle_and_reconnecting(server: Server) -> None:
    async with httpx.AsyncClient(base_url=server.url) as client:
        run_id = (await client.post("/workflows/nap", json={"lines": 20, "pause": 0.05})
                  ).json()["run_id"]
        # An index the run has not reached is refused (no client of it can hold one).
        while (await client.get(f"/runs/{run_id}")).json()["event_count"] < 2:
            await asyncio.sleep(0.02)
    seen: list[int] = []
    async with websockets.connect(ws_url(server, f"/runs/{run_id}/stream?after=2")) as sock:
        async for message in sock:
            seen.append(json.loads(message)["event_index"])
            if len(seen) == 6:
                break  # drop the connection mid-run
    async with websockets.connect(
            ws_url(server, f"/runs/{run_id}/stream?after={seen[-1]}")) as sock:
        rest = await _frames(sock)
        assert sock.close_code == 1000
    seen += [e["event_index"] for e in rest]
    assert seen == list(range(3, seen[-1] + 1)) and rest[-1]["type"] == "run_end"
    # a finished run replays whole
    async with websockets.connect(ws_url(server, f"/runs/{run_id}/stream")) as sock:
        replay = await _frames(sock)
    assert [e["event_index"] for e in replay] == list(range(1, seen[-1] + 1))


async def test_a_hundred_followers_receive_the_same_sequence(server: Server) -> None:
    async with httpx.AsyncClient(base_url=server.url) as client:
        run_id = (await client.post("/workflows/nap", json={"lines": 10, "pause": 0.1})
                  ).json()["run_id"]

    async def follow() -> list[int]:
        async with websockets.connect(ws_url(server, f"/runs/{run_id}/stream"),
                                      open_timeout=30) as sock:
            return [f["event_index"] for f in await _frames(sock)]

    results = await asyncio.gather(*(follow() for _ in range(100)))
    assert all(r == results[0] for r in results)
    assert results[0] == list(range(1, len(results[0]) + 1)) and len(results[0]) > 10


async def test_a_slow_reader_is_closed_and_the_others_are_not(server: Server) -> None:
    async with httpx.AsyncClient(base_url=server.url) as client:
        # ~60 MB of events: far more than socket buffers can hold for a reader that stalls.
        run_id = (await client.post("/workflows/chatty", json={"n": 3000, "size": 20000})
                  ).json()["run_id"]
    slow = _StalledReader(server.port, f"/runs/{run_id}/stream")
    try:
        fast = await asyncio.wait_for(_collect(ws_url(server, f"/runs/{run_id}/stream")), 120)
        assert fast[-1] == "run_end" and len(fast) > 3000
        # Stay stalled well past the server's send timeout (2 s here) before reading at all.
        await asyncio.sleep(6)
        code, reason = await asyncio.to_thread(slow.read_close)
    finally:
        slow.sock.close()
    assert code == 4408 and "reconnect with ?after=" in reason


class _StalledReader:
    """A WebSocket client that completes the handshake, then reads nothing at all."""

    def __init__(self, port: int, path: str) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                           "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                           f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
                           ).encode())

    def read_close(self) -> tuple[int, str]:
        """Reads everything the server sent; returns its close frame's code and reason."""
        self.sock.settimeout(60)
        data = bytearray()
        while chunk := self.sock.recv(1 << 20):
            data += chunk
        body = data[data.index(b"\r\n\r\n") + 4:]
        i = 0
        while i < len(body):
            opcode, size, i = body[i] & 0x0F, body[i + 1] & 0x7F, i + 2
            if size == 126:
                size, i = int.from_bytes(body[i:i + 2], "big"), i + 2
            elif size == 127:
                size, i = int.from_bytes(body[i:i + 8], "big"), i + 8
            if opcode == 0x8:
                payload = bytes(body[i:i + size])
                return int.from_bytes(payload[:2], "big"), payload[2:].decode()
            i += size
        raise AssertionError("no close frame")


async def _collect(url: str) -> list[str]:
    async with websockets.connect(url) as sock:
        return [f["type"] for f in await _frames(sock)]


async def test_tokens_apply_to_sockets(project: Path, tmp_path: Path) -> None:
    srv = Server(project, tmp_path / "auth.db", concurrency=2, env={"PYFLUE_API_TOKEN": "tok"})
    srv.start()
    try:
        async with websockets.connect(ws_url(srv, "/workflows/boom")) as sock:
            with pytest.raises(ConnectionClosed):
                await sock.recv()
            assert sock.close_code == 4401 and "unauthorized" in (sock.close_reason or "")
        async with websockets.connect(ws_url(srv, "/workflows/boom?token=tok")) as sock:
            await sock.send(json.dumps({"payload": {}}))
            assert (await _frames(sock))[-1]["type"] == "error"
        async with websockets.connect(ws_url(srv, "/workflows/boom"),
                                      additional_headers={"Authorization": "Bearer tok"}) as sock:
            await sock.send(json.dumps({"payload": {}}))
            assert (await _frames(sock))[-1]["error"]["message"] == "it broke"
    finally:
        srv.stop()


async def test_the_client_invokes_and_follows_over_websockets(server: Server) -> None:
    from pyflue.client import NotFoundError, Outcome, PyFlueClient
    from pyflue.events import Event

    async with PyFlueClient(server.url) as client:
        async with client.workflows.connect("nap") as conn:
            messages = await conn.run({"lines": 2})
        events = [m for m in messages if isinstance(m, Event)]
        outcome = messages[-1]
        assert isinstance(outcome, Outcome) and outcome.ok and outcome.result == {"done": True}
        assert [e.event_index for e in events] == list(range(1, len(events) + 1))
        async with client.workflows.connect("boom") as conn:
            failed = (await conn.run({}))[-1]
        assert isinstance(failed, Outcome) and not failed.ok
        assert failed.error is not None and failed.error["message"] == "it broke"
        with pytest.raises(NotFoundError, match="unknown workflow 'nope'"):
            async with client.workflows.connect("nope") as conn:
                await conn.run({})
        followed = [e.event_index async for e in client.runs.follow(outcome.run_id or "",
                                                                     after=3)]
        assert followed == [e.event_index for e in events][3:]


def test_logs_follow_over_the_websocket_from_the_cli(server: Server) -> None:
    import subprocess
    import sys

    run_id = httpx.post(f"{server.url}/workflows/nap?wait=result", json={"lines": 2}
                        ).json()["run_id"]
    done = subprocess.run([sys.executable, "-m", "pyflue.cli", "logs", run_id, "--server",
                           server.url, "--follow", "--ws", "--format", "ndjson"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    kinds = [json.loads(line)["type"] for line in done.stdout.splitlines()]
    assert kinds[0] == "run_start" and kinds[-1] == "run_end"


async def test_a_client_that_disconnects_does_not_cancel_the_run(server: Server) -> None:
    async with websockets.connect(ws_url(server, "/workflows/nap")) as sock:
        await sock.send(json.dumps({"payload": {"lines": 5, "pause": 0.2}}))
        run_id = json.loads(await sock.recv())["run_id"]
    async with httpx.AsyncClient(base_url=server.url) as client:
        for _ in range(200):
            run = (await client.get(f"/runs/{run_id}")).json()
            if run["status"] not in ("queued", "running"):
                break
            await asyncio.sleep(0.05)
    assert run["status"] == "completed" and run["result"] == {"done": True}


async def test_an_oversized_first_message_is_refused_like_an_oversized_http_body(
    server: Server,
) -> None:
    big = {"blob": "x" * (10 * 2**20)}
    async with httpx.AsyncClient(base_url=server.url) as client:
        assert (await client.post("/workflows/who", json=big)).status_code == 413
    async with websockets.connect(ws_url(server, "/workflows/who"), max_size=None) as sock:
        await sock.send(json.dumps({"payload": big}))
        frames = await _frames(sock)
    assert sock.close_code == 4413
    assert [f["error"]["type"] for f in frames] == ["payload_too_large"]
    assert "PYFLUE_MAX_BODY_BYTES" in frames[0]["error"]["message"]


async def test_the_websocket_limit_is_the_configured_body_limit(
    project: Path, tmp_path: Path
) -> None:
    srv = Server(project, tmp_path / "limit.db", concurrency=2,
                 env={"PYFLUE_MAX_BODY_BYTES": "4096"})
    srv.start()
    try:
        async with websockets.connect(ws_url(srv, "/workflows/who")) as sock:
            await sock.send(json.dumps({"payload": {"x": "y" * 4000}}))
            assert (await _frames(sock))[-1]["type"] == "result"
        async with websockets.connect(ws_url(srv, "/workflows/who")) as sock:
            await sock.send(json.dumps({"payload": {"x": "y" * 4100}}))
            frames = await _frames(sock)
        assert sock.close_code == 4413 and frames[-1]["error"]["type"] == "payload_too_large"
        async with websockets.connect(ws_url(srv, "/workflows/who")) as sock:
            await sock.send(json.dumps({"payload": {"x": "y" * 100}}))
            assert (await _frames(sock))[-1]["type"] == "result"  # the server still serves
    finally:
        srv.stop()


async def test_the_client_raises_documented_errors_for_a_refused_socket(
    project: Path, tmp_path: Path
) -> None:
    from pyflue.client import AuthError, BadRequestError, PyFlueClient

    srv = Server(project, tmp_path / "errs.db", concurrency=2, env={"PYFLUE_API_TOKEN": "tok"})
    srv.start()
    try:
        async with PyFlueClient(srv.url, token="wrong") as client:
            with pytest.raises(AuthError) as denied:
                async with client.workflows.connect("who") as conn:
                    await conn.run({})
        assert denied.value.status_code == 401
        async with PyFlueClient(srv.url, token="tok") as client:
            with pytest.raises(BadRequestError, match="PYFLUE_MAX_BODY_BYTES") as refused:
                async with client.workflows.connect("who") as conn:
                    await conn.run({"blob": "x" * (10 * 2**20)})
            assert refused.value.status_code == 413
            assert refused.value.type == "payload_too_large"
            async with client.workflows.connect("who") as conn:
                assert (await conn.run({}))[-1] == Outcome("result", conn.run_id, {"req": None})
    finally:
        srv.stop()


async def test_the_client_says_the_server_is_gone_when_it_dies_mid_stream(
    server: Server, write_workflow: WriteWorkflow, docker_client: Any
) -> None:
    import signal

    from pyflue.client import PyFlueClient, ServerUnreachable

    write_workflow("long", "import asyncio\nasync def run(ctx):\n    await asyncio.sleep(600)\n")
    async with PyFlueClient(server.url) as client:
        with pytest.raises(ServerUnreachable, match="closed before the run's outcome"):
            async with client.workflows.connect("long") as conn:
                async for _message in conn.stream({}):
                    server.stop(signal.SIGKILL)
    server.remove_left_pool(docker_client)
