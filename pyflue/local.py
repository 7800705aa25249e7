"""The composition root for running on this machine: settings in, a ready Runner out."""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import AsyncIterator

from pyflue.runs import Runner
from pyflue.sandbox.base import SandboxProvider
from pyflue.sandbox.docker import DockerProvider
from pyflue.settings import Settings
from pyflue.store import RunStore, open_store_from_url
from pyflue.workflows import WorkflowRegistry


@contextlib.asynccontextmanager
async def open_store(settings: Settings) -> AsyncIterator[RunStore]:
    store = open_store_from_url(settings.resolved_store_url())
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def store_scope(settings: Settings) -> str:
    """A short, stable id of the run store, labelled on every container it owns."""
    return hashlib.sha256(settings.resolved_store_url().encode()).hexdigest()[:16]


def docker_provider(settings: Settings) -> DockerProvider:
    return DockerProvider(
        settings.docker_host, scope=store_scope(settings), kill_grace=settings.sandbox.kill_grace
    )


@contextlib.asynccontextmanager
async def open_runner(
    settings: Settings, *, provider: SandboxProvider | None = None
) -> AsyncIterator[Runner]:
    """A Runner over the settings' store and the Docker engine; closes both on exit."""
    sandbox = provider or docker_provider(settings)
    async with open_store(settings) as store:
        runner = Runner(
            settings=settings,
            store=store,
            provider=sandbox,
            registry=WorkflowRegistry(settings.project_dir),
            env=os.environ,
        )
        try:
            yield runner
        finally:
            await runner.models.close()
            await sandbox.close()
