from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from pyflue.runs import Runner
from pyflue.sandbox.docker.lifecycle import LABEL_RUN
from pyflue.settings import DEFAULT_IMAGE, SandboxDefaults, Settings
from pyflue.wiring import open_runner

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    """The real engine, as the tests' own observer (pyflue never gets this client)."""
    try:
        client = docker.from_env()
        client.ping()
        client.images.get(DEFAULT_IMAGE)
    except Exception as exc:  # pragma: no cover - environment problem, not a test failure mode
        pytest.fail(f"docker tests need the engine and {DEFAULT_IMAGE}: run ./scripts/setup "
                    f"({exc})")
    yield client
    client.close()


@pytest.fixture(params=["runc", "runsc"])
def runtime(request: pytest.FixtureRequest, docker_client: Any) -> str:
    """Each runtime the engine has: runc always, gVisor (runsc) where it is registered
    (./scripts/setup registers it when it starts the engine); a test using it runs under each."""
    name: str = request.param
    if name not in (docker_client.info().get("Runtimes") or {}):
        pytest.skip(f"{name} is not registered with this Docker engine (see docs/security.md)")
    return name


@pytest.fixture
def settings(project: Path, tmp_path: Path) -> Settings:
    return Settings(
        project_dir=project,
        store_url=f"sqlite+aiosqlite:///{tmp_path / 'store' / 'pyflue.db'}",
        sandbox=SandboxDefaults(kill_grace=2.0),
    )


@pytest.fixture
async def runner(settings: Settings, docker_client: Any) -> AsyncIterator[Runner]:
    async with open_runner(settings) as r:
        yield r


@pytest.fixture
def containers_of(docker_client: Any) -> Callable[[str], list[Any]]:
    """The containers (any state) labelled with a run id."""

    def find(run_id: str) -> list[Any]:
        return list(docker_client.containers.list(all=True, filters={"label": f"{LABEL_RUN}={run_id}"}))

    return find


@pytest.fixture
def volumes_of(docker_client: Any) -> Callable[[str], list[Any]]:
    def find(run_id: str) -> list[Any]:
        return list(docker_client.volumes.list(filters={"label": f"{LABEL_RUN}={run_id}"}))

    return find
