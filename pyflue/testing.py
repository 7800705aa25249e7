"""Fakes for tests of code built on pyflue, shipped once here: use them, do not copy them.

- :class:`FakeSandboxProvider` / :class:`FakeSandbox`: an in-memory workspace with scripted
  commands (``FakeCommand``), for pure-logic tests. The Docker adapter is tested for real.
- :class:`MemoryStore`: the run store contract without a database.
- :func:`fake_runner`: a Runner wired to both, over a project folder.
"""

from __future__ import annotations

from pathlib import Path

from pyflue.runs import Runner
from pyflue.sandbox.fake import (
    FakeCommand,
    FakeSandbox,
    FakeSandboxProvider,
    Handler,
    default_handler,
)
from pyflue.settings import Settings
from pyflue.store.base import RunStore
from pyflue.store.memory import MemoryStore
from pyflue.workflows import WorkflowRegistry


def fake_runner(
    project_dir: Path,
    *,
    handler: Handler = default_handler,
    store: RunStore | None = None,
    settings: Settings | None = None,
) -> Runner:
    settings = settings or Settings(project_dir=project_dir)
    return Runner(
        settings=settings,
        store=store or MemoryStore(),
        provider=FakeSandboxProvider(handler),
        registry=WorkflowRegistry(project_dir),
        env={},
    )


__all__ = [
    "FakeCommand",
    "FakeSandbox",
    "FakeSandboxProvider",
    "Handler",
    "MemoryStore",
    "default_handler",
    "fake_runner",
]
