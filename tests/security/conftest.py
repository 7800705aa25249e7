"""The security suite runs under every runtime the engine has: runc always, gVisor (runsc)
where it is registered (./scripts/setup registers it when it starts the engine)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyflue.settings import SandboxDefaults, Settings
from tests.integration.conftest import containers_of, docker_client, runner, runtime, volumes_of

__all__ = ["containers_of", "docker_client", "runner", "runtime", "settings", "volumes_of"]


@pytest.fixture
def settings(project: Path, tmp_path: Path, runtime: str) -> Settings:
    return Settings(
        project_dir=project,
        store_url=f"sqlite+aiosqlite:///{tmp_path / 'store' / 'pyflue.db'}",
        sandbox=SandboxDefaults(kill_grace=2.0, runtime=runtime),
    )
