"""Agents: ``create_agent(initializer)`` and the validated config it produces per run.

The initializer takes the run's context (or nothing), may be async, and returns a dict of the
keys in :class:`AgentConfig`. Unknown keys are an error that names them and the allowed ones.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pyflue.errors import ConfigError, WorkspacePathError
from pyflue.sandbox.paths import confine

if TYPE_CHECKING:
    from pyflue.context import FlueContext

Initializer = (
    Callable[["FlueContext"], Mapping[str, Any] | Awaitable[Mapping[str, Any]]]
    | Callable[[], Mapping[str, Any] | Awaitable[Mapping[str, Any]]]
    | Mapping[str, Any]
)


class AgentConfig(BaseModel):
    """What an agent's initializer may return. See docs/workflows.md for each key."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    model: str | None = Field(None, description="model string, e.g. anthropic/claude-haiku-4-5")
    instructions: str | None = None
    cwd: str = "/workspace"
    image: str | None = Field(None, description="sandbox image; the run's --image overrides it")
    network: Literal["none", "bridge"] | None = None
    env: dict[str, str] = Field(default_factory=dict)
    memory: str | None = None
    cpus: float | None = Field(None, gt=0)
    pids: int | None = Field(None, ge=16)
    runtime: str | None = None
    tools: list[Any] = Field(
        default_factory=list, description="extra tools: typed functions or pyflue Tool objects"
    )
    secrets: list[str] = Field(
        default_factory=list, description="names of host environment variables to grant"
    )

    @field_validator("cwd")
    @classmethod
    def _absolute_cwd(cls, value: str) -> str:
        try:
            return confine(value, root="/workspace")
        except WorkspacePathError:
            raise ValueError(f"cwd {value!r} must be /workspace or a folder inside it") from None

    @classmethod
    def parse(cls, raw: Any, *, where: str) -> AgentConfig:
        if not isinstance(raw, Mapping):
            raise ConfigError(
                f"{where} must return a dict of agent settings, not {type(raw).__name__}"
            )
        allowed = sorted(cls.model_fields)
        unknown = sorted(set(raw) - set(allowed))
        if unknown:
            raise ConfigError(
                f"{where}: unknown agent config key {', '.join(map(repr, unknown))}; "
                f"allowed keys: {', '.join(allowed)}"
            )
        try:
            return cls.model_validate(dict(raw))
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()
            )
            raise ConfigError(f"{where}: invalid agent config: {problems}") from None


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
