"""What an agent's initializer may return: :class:`AgentConfig`, validated per run."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pyflue.errors import ConfigError, WorkspacePathError
from pyflue.sandbox.paths import confine


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
    egress: list[str] = Field(
        default_factory=list, description="host names the sandbox may reach through the "
        "egress proxy: exact or `*.` suffix, ports 80 and 443 (docs/sandbox.md#egress)"
    )
    egress_secrets: dict[str, list[str]] = Field(
        default_factory=dict, description="host secrets granted at egress only: the sandbox "
        "sees a placeholder, the proxy puts the value into requests to the listed hosts"
    )
    artifacts: list[str] = Field(
        default_factory=list, description="paths or globs saved as the run's artifacts when "
                                          "it ends, whatever its outcome (docs/artifacts.md)"
    )

    @field_validator("artifacts")
    @classmethod
    def _artifact_paths(cls, value: list[str]) -> list[str]:
        for pattern in value:
            if not pattern.strip():
                raise ValueError("an artifacts pattern must not be empty: write e.g. "
                                 "\"reports/*.xml\"")
            try:
                confine(pattern, root="/workspace", cwd="/workspace")
            except WorkspacePathError:
                raise ValueError(f"artifacts pattern {pattern!r} leaves the workspace: use a "
                                 "path inside it, e.g. \"reports/*.xml\"") from None
        return value

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
