"""Agents: ``create_agent(initializer)``, evaluated once per run into an :class:`AgentConfig`.

The initializer takes the run's context (or nothing), may be async, and returns a dict of the
keys in :class:`pyflue.agent_config.AgentConfig`. Unknown keys are an error that names them and
the allowed ones. This module loads nothing heavy (a workflow file imports it): the config model
and its validation load when a run first configures an agent.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from pyflue.errors import ConfigError

if TYPE_CHECKING:
    from pyflue.agent_config import AgentConfig
    from pyflue.context import FlueContext

Initializer = (
    Callable[["FlueContext"], Mapping[str, Any] | Awaitable[Mapping[str, Any]]]
    | Callable[[], Mapping[str, Any] | Awaitable[Mapping[str, Any]]]
    | Mapping[str, Any]
)


def __getattr__(name: str) -> Any:
    if name == "AgentConfig":  # defined in pyflue.agent_config; importable from here too
        from pyflue.agent_config import AgentConfig

        return AgentConfig
    raise AttributeError(f"module 'pyflue.agents' has no attribute {name!r}")


class Agent:
    """A created agent: evaluated once per run by ``ctx.init(agent)``."""

    def __init__(self, initializer: Initializer, *, name: str | None = None) -> None:
        if not (callable(initializer) or isinstance(initializer, Mapping)):
            raise ConfigError(
                "create_agent needs a function returning a dict of settings (or a dict), "
                f"not {type(initializer).__name__}"
            )
        self._initializer = initializer
        self.name = name or getattr(initializer, "__name__", "agent")

    async def configure(self, ctx: FlueContext) -> AgentConfig:
        from pyflue.agent_config import AgentConfig

        init = self._initializer
        if isinstance(init, Mapping):
            raw: Any = init
        else:
            takes_ctx = _arity(init) > 0
            raw = init(ctx) if takes_ctx else init()  # type: ignore[call-arg]
            if inspect.isawaitable(raw):
                raw = await raw
        return AgentConfig.parse(raw, where=f"agent initializer {self.name!r}")


def _arity(fn: Callable[..., Any]) -> int:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return 1
    return sum(
        1 for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    )


def create_agent(initializer: Initializer, *, name: str | None = None) -> Agent:
    """Declares an agent. ``initializer(ctx)`` returns its settings for each run, e.g.
    ``create_agent(lambda ctx: {"model": "anthropic/claude-haiku-4-5", "cwd": "/workspace"})``.
    """
    return Agent(initializer, name=name)
