"""A reader that stops reading a run's SSE stream is dropped after the send timeout; the others
get every event. The server's memory stays bounded meanwhile (the store is the buffer)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import WriteWorkflow
from tests.integration.servers import COLD, Server

CHATTY = """
async def run(ctx):
    for i in range(ctx.payload["n"]):
        ctx.log.info("x" * ctx.payload["size"], i=i)
    return {"n": ctx.payload["n"]}
"""


@pytest.fixture
def server(project: Path, tmp_path: Path, write_workflow: WriteWorkflow) -> Iterator[Server]:
    write_workflow("chatty", CHATTY)
    srv = Server(project, tmp_path / "sse.db", concurrency=2,
                 env={**COLD, "PYFLUE_WS_SEND_TIMEOUT": "1"})
    srv.start()
    yield srv
    srv.stop()


def _stalled(port: int, path: str) -> socket.socket:
    """An HTTP client that asks for the stream, then reads nothing at all."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n"
                 .encode())
    return sock


def _read_all(sock: socket.socket) -> bytes:
    sock.settimeout(30)
    data = bytearray()
    while chunk := sock.recv(1 << 20):  # b"" once the server has closed the connection
        data += chunk
    return bytes(data)


async def test_a_stalled_sse_reader_is_dropped_and_the_others_get_everything(
    server: Server
) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        # ~12 MB of events: far more than socket buffers hold for a reader that stalls.
        run_id = (await client.post("/workflows/chatty?wait=result",
                                    json={"n": 600, "size": 20000})).json()["run_id"]
        slow = _stalled(server.port, f"/runs/{run_id}/stream")
        try:
            types = []
            async with client.stream("GET", f"/runs/{run_id}/stream") as answer:
                async for line in answer.aiter_lines():
                    if line.startswith("event: "):
                        types.append(line.removeprefix("event: "))
            assert types[-1] == "run_end" and len(types) > 600
            await asyncio.sleep(4)  # well past the send timeout (1 s here)
            got = await asyncio.to_thread(_read_all, slow)
        finally:
            slow.close()
    assert got.startswith(b"HTTP/1.1 200")
    assert b"event: run_end" not in got  # cut: the connection was closed under it
    assert len(got) < 6_000_000
