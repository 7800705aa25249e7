"""A real `pyflue serve` process for tests: its own port, store and project folder."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

# For tests that find a run's container by its run-id label: a container from the warm pool
# carries its pool's placeholder id instead (the run record's container_id names it), so
# those servers start every container cold. tests/integration/test_pool.py covers the pool.
COLD = {"PYFLUE_POOL_SIZE": "0"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, project: Path, store: Path, concurrency: int,
                 env: dict[str, str] | None = None, args: tuple[str, ...] = ()) -> None:
        self.project, self.store, self.concurrency = project, store, concurrency
        self.extra_env = env or {}
        self.args = args
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, "PYFLUE_STORE_URL": f"sqlite+aiosqlite:///{self.store}",
               "PYFLUE_MAX_CONCURRENCY": str(self.concurrency)}
        env.pop("PYFLUE_API_TOKEN", None)
        env.update(self.extra_env)
        self.log = open(self.store.with_suffix(f".{time.monotonic_ns()}.log"), "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pyflue.cli", "serve", "--port", str(self.port),
             *self.args],
            cwd=self.project, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise AssertionError("the server did not come up")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        self.proc.wait(timeout=60)
        self.log.close()

    def remove_left_pool(self, docker_client: Any) -> None:
        """Removes the pooled containers a server killed with SIGKILL left behind (the next
        start on its store would reap them; a test that starts none must not leave them)."""
        assert self.proc is not None and self.proc.returncode is not None
        for container in docker_client.containers.list(all=True, filters={"label": "dev.pyflue.pool"}):
            if f":{self.proc.pid}:" in container.labels.get("dev.pyflue.pool", ""):
                container.remove(force=True, v=True)


async def until_finished(client: httpx.AsyncClient, run_id: str, seconds: float = 120
                         ) -> dict[str, Any]:
    """The run's record once it is no longer queued or running (polled over HTTP)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        run: dict[str, Any] = (await client.get(f"/runs/{run_id}")).json()
        if run["status"] not in ("queued", "running"):
            return run
        await asyncio.sleep(0.1)
    raise AssertionError(f"{run_id} did not finish within {seconds:g} s")
