"""Fakes for tests of code built on pyflue, shipped once here: use them, do not copy them.

- :class:`FakeSandboxProvider` / :class:`FakeSandbox`: an in-memory workspace with scripted
  commands (``FakeCommand``), for pure-logic tests. The Docker adapter is tested for real.
- :class:`MemoryStore`: the run store contract without a database.
- :class:`ScriptedModel` with :func:`say` / :func:`call` / :class:`Reply`: a deterministic model
  that drives the real agent loop; :class:`StaticModels` makes every model string resolve to it.
- :class:`FakeAnthropic` and :func:`serve_fake_anthropic`: a local server speaking the Anthropic
  Messages API wire protocol, for testing the real SDK path offline.
- :func:`fake_runner`: a Runner wired to the fakes, over a project folder.
"""

from __future__ import annotations

from pathlib import Path

from pyflue.llm import ModelResolver, StaticModels
from pyflue.llm.fake_anthropic import FakeAnthropic, serve_fake_anthropic
from pyflue.llm.scripted import Reply, ScriptedModel, call, say
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
    models: ModelResolver | ScriptedModel | None = None,
) -> Runner:
    settings = settings or Settings(project_dir=project_dir)
    return Runner(
        settings=settings,
        store=store or MemoryStore(),
        provider=FakeSandboxProvider(handler),
        registry=WorkflowRegistry(project_dir),
        env={},
        models=StaticModels(models) if isinstance(models, ScriptedModel) else models,
    )


__all__ = [
    "FakeAnthropic",
    "FakeCommand",
    "FakeSandbox",
    "FakeSandboxProvider",
    "Handler",
    "MemoryStore",
    "Reply",
    "ScriptedModel",
    "StaticModels",
    "call",
    "default_handler",
    "fake_runner",
    "say",
    "serve_fake_anthropic",
]
