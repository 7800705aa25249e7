"""Settings: one object, built at the edge (CLI, app factory) and passed in.

Every field can be set from the environment with the ``PYFLUE_`` prefix, e.g.
``PYFLUE_STORE_URL=postgresql+asyncpg://...`` or ``PYFLUE_SANDBOX_IMAGE=python:3.12-slim``, or
(but for secrets) in the project's ``pyflue.toml`` / ``[tool.pyflue]`` under the variable's name
without the prefix, in lower case (``sandbox_image = "python:3.12-slim"``); the environment wins
(:func:`load_settings`). Library modules never read ``os.environ`` themselves.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticUndefined
from pydantic_settings import BaseSettings, SettingsConfigDict
from pydantic_settings import SettingsError as _EnvParseError
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from pyflue.errors import InvalidSettings, PyflueError
from pyflue.project import (  # noqa: F401  (find_project*: their old home, still imported)
    PROJECT_MARKERS,
    SettingsFile,
    find_project,
    find_project_here,
    read_settings_file,
)
from pyflue.sandbox.base import CopyLimits

DEFAULT_IMAGE = "pyflue/sandbox:latest"
# A Docker-style size: 512m, 2g, 1.5GiB (pyflue.sandbox.policy.parse_size reads it).
SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.I)
# Model providers a model string may name (pyflue.llm.ModelRegistry resolves them).
MODEL_PROVIDERS = ("anthropic", "scripted")
# Store URL schemes the store opens: SQLAlchemy async drivers, and the in-memory store.
STORE_DRIVERS = ("sqlite+aiosqlite", "postgresql+asyncpg")


def _size(value: str) -> str:
    if not SIZE.match(value):
        raise ValueError("is not a size: write it like 512m or 2g")
    return value


class SandboxDefaults(BaseSettings):
    """Hardening and limits for every run's container (see docs/sandbox.md)."""

    @field_validator("user")
    @classmethod
    def _not_root(cls, value: str) -> str:
        # Root in the sandbox would own the image's files and escape RLIMIT_NPROC (gVisor's
        # pids limit); every promise in docs/security.md assumes an unprivileged user.
        if int(value.split(":", 1)[0]) == 0:
            raise ValueError("the sandbox user must not be root (uid 0): use e.g. 1000:1000")
        return value

    @field_validator("memory", "workspace_size", "tmp_size", "max_memory")
    @classmethod
    def _a_size(cls, value: str) -> str:
        return _size(value)

    @model_validator(mode="after")
    def _network_allowed(self) -> SandboxDefaults:
        # The host's network would hand untrusted code the host's interfaces and loopback.
        if "host" in self.allowed_networks:
            raise ValueError("PYFLUE_SANDBOX_ALLOWED_NETWORKS must not hold host (the sandbox "
                             'never shares the host\'s network): write it like ["none", "bridge"]')
        if self.network not in self.allowed_networks:
            raise ValueError(f"PYFLUE_SANDBOX_NETWORK={self.network!r} is not an allowed network: "
                             f"use one of {', '.join(self.allowed_networks)}, e.g. none")
        return self

    model_config = SettingsConfigDict(env_prefix="PYFLUE_SANDBOX_", extra="forbid")

    image: str = Field(DEFAULT_IMAGE, description="the image of run containers unless the "
                                                  "agent or `--image` names another")
    user: str = Field(
        "1000:1000", pattern=r"^[0-9]+(:[0-9]+)?$",
        description="uid:gid (numbers, not root) the container's processes run as",
    )
    memory: str = Field("2g", description="memory limit; swap is capped at the same value")
    cpus: float = Field(1.0, gt=0, description="CPU limit in cores")
    pids: int = Field(512, ge=16, description="maximum number of processes")
    workspace_size: str = Field("1g", description="size cap of the tmpfs-backed /workspace")
    tmp_size: str = Field("256m", description="size cap of the tmpfs /tmp")
    network: str = Field("none", description="docker network mode unless the agent asks")
    runtime: str | None = Field(None, description="docker runtime, e.g. runsc")
    read_only_root: bool = Field(True, description="mount the image's root filesystem "
                                                   "read-only")
    shell_timeout: float = Field(600.0, gt=0, description="default harness.shell timeout, s")
    output_cap: int = Field(1 << 20, ge=1024, description="bytes kept per stream per shell call")
    kill_grace: float = Field(2.0, gt=0, description="seconds to wait after a kill")
    copy_max_bytes: int = Field(
        1 << 30, ge=1, description="most bytes one fs.upload or fs.download may move"
    )
    copy_max_entries: int = Field(
        100_000, ge=1, description="most files and folders one fs.upload or fs.download may move"
    )

    @property
    def copy_limits(self) -> CopyLimits:
        """The caps on one copy: the byte cap applies to one file and to the whole copy."""
        return CopyLimits(file_bytes=self.copy_max_bytes, total_bytes=self.copy_max_bytes,
                          entries=self.copy_max_entries)
    # The most an agent may ask for (see docs/security.md).
    max_memory: str = Field("4g", description="largest memory an agent may ask for")
    max_cpus: float = Field(2.0, gt=0, description="most CPUs an agent may ask for")
    max_pids: int = Field(4096, ge=16, description="most processes an agent may ask for")
    allowed_networks: list[str] = Field(
        default_factory=lambda: ["none", "bridge"], description="networks agents may ask for"
    )
    allowed_runtimes: list[str] = Field(
        default_factory=lambda: ["runc", "runsc"], description="runtimes agents may ask for"
    )
    # Egress by allow-list (see docs/sandbox.md#egress).
    max_egress: list[str] = Field(
        default_factory=lambda: [], description="host names agents may ask to reach through the "
        'egress proxy (exact or `*.` suffix, `"*"` for any); empty: egress is off'
    )
    egress_allow_networks: list[str] = Field(
        default_factory=lambda: [], description="non-public networks (CIDR) the egress proxy may "
        "connect to; loopback, link-local, private and CGNAT addresses are refused otherwise"
    )
    egress_hosts_file: Path | None = Field(
        None, description="a hosts file (`ADDRESS NAME...` lines) the egress proxy reads "
        "before DNS: for tests and private mirrors"
    )
    egress_ca_file: Path | None = Field(
        None, description="more CAs (PEM) the egress proxy trusts when it opens HTTPS to a "
        "host with egress secrets (a private mirror's CA); the system's CAs always"
    )
    egress_relay_image: str = Field(
        DEFAULT_IMAGE, description="the image (with python3) of the egress relay container "
        "that hands the runs' proxy connections to pyflue"
    )

    @field_validator("max_egress")
    @classmethod
    def _egress_names(cls, value: list[str]) -> list[str]:
        from pyflue.egress.rules import parse_rules

        try:
            parse_rules(value, where="PYFLUE_SANDBOX_MAX_EGRESS", server=True)
        except PyflueError as exc:
            raise ValueError(exc.message) from None
        return value

    @field_validator("egress_allow_networks")
    @classmethod
    def _egress_networks(cls, value: list[str]) -> list[str]:
        from pyflue.egress.rules import parse_networks

        try:
            parse_networks(value, where="PYFLUE_SANDBOX_EGRESS_ALLOW_NETWORKS")
        except PyflueError as exc:
            raise ValueError(exc.message) from None
        return value


POOL_IMAGES_EXAMPLE = "python:3.12=4,node:20=1"


class PoolSettings(BaseSettings):
    """The warm pool of `pyflue serve`: started containers waiting for runs (docs/sandbox.md)."""

    model_config = SettingsConfigDict(env_prefix="PYFLUE_POOL_", extra="forbid")

    size: int = Field(2, ge=0, description="started containers kept ready for runs of the "
                                           "default sandbox image; `0` turns the pool off")
    images: str = Field("", description="other images to pool, each with its size, e.g. "
                                        f"`{POOL_IMAGES_EXAMPLE}`")
    refill_concurrency: int = Field(2, ge=1, description="pooled containers started at once "
                                                         "when refilling")
    egress_size: int = Field(2, ge=0, description="started containers kept ready, each on an "
                                                  "egress network of its own, for runs of the "
                                                  "default image with `egress` (only when "
                                                  "PYFLUE_SANDBOX_MAX_EGRESS allows egress); "
                                                  "`0` turns it off")

    @field_validator("images")
    @classmethod
    def _image_sizes(cls, value: str) -> str:
        pool_sizes(value)
        return value

    def sizes(self, default_image: str) -> dict[str, int]:
        """Pool size per image: the default image's, then PYFLUE_POOL_IMAGES (which may
        resize the default image's pool); images with size 0 are left out."""
        sizes = {default_image: self.size, **pool_sizes(self.images)}
        return {image: size for image, size in sizes.items() if size > 0}


def pool_sizes(text: str) -> dict[str, int]:
    """``python:3.12=4,node:20=1`` as {image: size}; ValueError naming an example."""
    sizes: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        image, sep, size = item.rpartition("=")
        if not sep or not image.strip() or not size.strip().isdigit():
            raise ValueError(f"is not a list of IMAGE=SIZE: write it like {POOL_IMAGES_EXAMPLE}")
        sizes[image.strip()] = int(size)
    return sizes


class ModelSettings(BaseSettings):
    """Model clients and the agent loop (see docs/models.md)."""

    model_config = SettingsConfigDict(env_prefix="PYFLUE_", extra="forbid")

    anthropic_api_key: SecretStr | None = Field(
        None, validation_alias=AliasChoices("PYFLUE_ANTHROPIC_API_KEY", "ANTHROPIC_API_KEY"),
        description="the Anthropic API key",
    )
    anthropic_base_url: str | None = Field(
        None, validation_alias=AliasChoices("PYFLUE_ANTHROPIC_BASE_URL", "ANTHROPIC_BASE_URL"),
        description="the Anthropic API's address (a proxy, or a local test server)",
    )
    anthropic_max_retries: int = Field(4, ge=0, description="retries on 429/529/5xx")
    model: str | None = Field(
        None, description="overrides every agent's model, e.g. scripted/demo for offline runs"
    )
    max_turns: int = Field(50, ge=1, description="model turns allowed per prompt")
    max_result_retries: int = Field(3, ge=0, description="re-asks when a result is invalid")
    max_tokens: int = Field(8192, ge=1, description="max output tokens per model turn")
    tool_output_cap: int = Field(30_000, ge=1000, description="characters of tool output shown")
    tool_read_max_bytes: int = Field(
        1 << 20, ge=1024,
        description="bytes a built-in tool (read, edit) reads from a workspace file into the "
                    "server at most; `read` shows the start of a larger file with a note, `edit` "
                    "refuses it",
    )

    @field_validator("model")
    @classmethod
    def _a_model_string(cls, value: str | None) -> str | None:
        if value is None:
            return value
        provider, sep, model_id = value.partition("/")
        if not sep or not model_id or provider not in MODEL_PROVIDERS:
            raise ValueError("is not a known model: write it like anthropic/claude-haiku-4-5 "
                             "or scripted/demo")
        return value


class ServerSettings(BaseSettings):
    """The control plane (``pyflue serve``), see docs/server.md; the deadlines apply to
    ``pyflue run`` too."""

    model_config = SettingsConfigDict(env_prefix="PYFLUE_", extra="forbid")

    host: str = Field("127.0.0.1", description="the address `pyflue serve` binds (`--host`)")
    port: int = Field(2024, ge=0, le=65535, description="the port `pyflue serve` listens on")
    api_token: SecretStr | None = Field(
        None, description="Bearer token that every route but /health requires (an admin "
                          "token of tenant `default`)"
    )
    tokens_file: Path | None = Field(
        None, description="JSON list of named tokens (by SHA-256) with their tenant, admin "
                          "flag and max_concurrency; see docs/server.md#tokens-and-tenants"
    )
    tenant_max_queued: int | None = Field(
        None, ge=1, description="queued runs a tenant may have; above it an invocation gets "
                                "429 with Retry-After (unset: no limit)"
    )
    allow_insecure_bind: bool = Field(
        False, description="serve on a non-loopback address without a token (not advised)"
    )
    max_concurrency: int = Field(4, ge=1, description="runs executing at once; the rest queue")
    default_deadline: float = Field(3600.0, gt=0, description="seconds a run may take")
    max_deadline: float = Field(6 * 3600.0, gt=0, description="cap on workflows' own deadlines")
    max_body_bytes: int = Field(1 << 20, ge=1024, description="largest request body")
    debug: bool = Field(
        False, description="error bodies also carry what is meant for the server's operator: "
                           "its paths, `pyflue` commands to try, tracebacks (not for production)",
    )
    heartbeat_seconds: float = Field(15.0, gt=0, description="SSE keep-alive comment interval")
    worker_lease: float = Field(
        30.0, ge=3,
        description="seconds without a heartbeat after which a worker sharing the store is "
                    "taken as gone (its runs end interrupted, or are requeued when safe to retry); "
                    "heartbeats go every lease/3",
    )
    engine_wait: float = Field(
        300.0, gt=0,
        description="seconds a queued run may wait while the Docker engine does not answer "
                    "(nothing is admitted meanwhile) before it fails engine_unavailable",
    )
    retention: str | None = Field(
        None, description="`pyflue serve` deletes finished runs (their events, uploads and "
                          "artifacts) older than this, e.g. `30d` (units s, m, h, d, w); "
                          "unset keeps them")
    retention_interval: float = Field(
        3600.0, gt=0, description="seconds between two retention passes of `pyflue serve`")

    @field_validator("retention")
    @classmethod
    def _an_age(cls, value: str | None) -> str | None:
        if value is not None:
            from pyflue.retention import parse_age

            parse_age(value)
        return value

    ws_queue_events: int = Field(100, ge=1, description="events queued per WebSocket")
    ws_send_timeout: float = Field(
        10.0, gt=0, description="seconds a WebSocket or SSE send may block before the reader "
                                "is dropped (WebSocket: closed with 4408)"
    )


class ArtifactSettings(BaseSettings):
    """Where runs' artifacts are kept and how much they may hold (see docs/artifacts.md)."""

    model_config = SettingsConfigDict(env_prefix="PYFLUE_ARTIFACTS_", extra="forbid")

    dir: Path | None = Field(
        None, description="the folder artifacts are kept in; default `artifacts/` next to the "
                          "SQLite store. Workers sharing PostgreSQL must all mount one shared "
                          "folder here")
    max_bytes: int = Field(1 << 30, ge=1, description="largest single artifact, in bytes")
    run_max_bytes: int = Field(4 << 30, ge=1, description="most bytes of artifacts one run "
                                                          "may keep")
    max_count: int = Field(10_000, ge=1, description="most artifacts one run may keep")


class ObservabilitySettings(BaseSettings):
    """Metrics, traces and per-run resource use (docs/observability.md). Traces are set up by
    the standard OTEL_* variables alone."""

    model_config = SettingsConfigDict(env_prefix="PYFLUE_", extra="forbid")

    metrics: bool = Field(True, description="serve Prometheus metrics at `/metrics` "
                                            "(`pyflue serve`)")
    metrics_public: bool = Field(False, description="`/metrics` needs no token even when "
                                                    "PYFLUE_API_TOKEN is set")
    worker_name: str | None = Field(
        None, description="the `worker` label of this server's metrics; default `host:pid`")
    resource_interval: float = Field(
        1.0, ge=0, description="seconds between samples of a run container's resource use; "
                               "`0` turns sampling off")


class Settings(BaseSettings):
    """Process-wide settings for the CLI, the library runtime and (later) the server."""

    model_config = SettingsConfigDict(env_prefix="PYFLUE_", extra="forbid")

    project_dir: Path = Field(default_factory=find_project_here,
                              description="the project folder (`-C` overrides it)")
    store_url: str | None = Field(
        None, description="SQLAlchemy async URL; default sqlite under <project>/.pyflue/"
    )
    store_password: SecretStr | None = Field(
        None, description="the store's database password, put into the URL (encoded) so it can "
                          "hold any character and stay out of PYFLUE_STORE_URL"
    )
    docker_host: str | None = Field(None, description="defaults to DOCKER_HOST / local socket")
    sandbox: SandboxDefaults = Field(default_factory=SandboxDefaults)
    models: ModelSettings = Field(default_factory=ModelSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    pool: PoolSettings = Field(default_factory=PoolSettings)
    artifacts: ArtifactSettings = Field(default_factory=ArtifactSettings)
    observability: ObservabilitySettings = Field(default_factory=ObservabilitySettings)

    @field_validator("store_url")
    @classmethod
    def _a_store_url(cls, value: str | None) -> str | None:
        if not value or value == "memory://":
            return value
        example = ("write it like sqlite+aiosqlite:///path/pyflue.db or "
                   "postgresql+asyncpg://user@host/db")
        try:
            driver = make_url(value).drivername
        except ArgumentError:
            raise ValueError(f"is not a database URL: {example}") from None
        if driver not in STORE_DRIVERS:
            raise ValueError(f"names the driver {driver!r}, which the store cannot use: {example}")
        return value

    @model_validator(mode="after")
    def _password_needs_a_url(self) -> Settings:
        if self.store_password is not None and not self.store_url:
            raise ValueError("PYFLUE_STORE_PASSWORD is set but PYFLUE_STORE_URL is not: "
                             "give the database URL without its password")
        return self

    @property
    def state_dir(self) -> Path:
        return self.project_dir / ".pyflue"

    def resolved_store_url(self) -> str:
        if self.store_url:
            if self.store_password is None:
                return self.store_url
            url = make_url(self.store_url).set(password=self.store_password.get_secret_value())
            return url.render_as_string(hide_password=False)
        return f"sqlite+aiosqlite:///{self.default_store_file}"

    @property
    def artifacts_dir(self) -> Path:
        """Where artifacts are kept: PYFLUE_ARTIFACTS_DIR (relative to the project), else
        ``artifacts/`` beside the SQLite store's file (``.pyflue/artifacts`` for the default
        store and for PostgreSQL)."""
        if self.artifacts.dir is not None:  # a relative one is the project's
            return self.project_dir / self.artifacts.dir
        if self.store_url and self.store_url.startswith("sqlite"):
            database = make_url(self.store_url).database
            if database and database != ":memory:":
                return Path(database).parent / "artifacts"
        return self.state_dir / "artifacts"

    @property
    def spool_dir(self) -> Path:
        """Where uploads are spooled on this host on their way in and out of the store."""
        return self.state_dir / "spool"

    @property
    def default_store_file(self) -> Path:
        """The SQLite file of the run store when PYFLUE_STORE_URL is not set."""
        return self.state_dir / "pyflue.db"


_PARTS: dict[str, type[BaseSettings]] = {
    "sandbox": SandboxDefaults, "models": ModelSettings, "server": ServerSettings,
    "pool": PoolSettings, "artifacts": ArtifactSettings,
    "observability": ObservabilitySettings,
}
_UNPARSED = re.compile(r'error parsing value for field "(\w+)"')
_SECRET = ("key", "token", "password")
# Examples for settings whose default is unset (the others' example is their default).
_EXAMPLES: dict[str, Any] = {
    "store_url": "sqlite+aiosqlite:///path/pyflue.db", "docker_host": "unix:///var/run/docker.sock",
    "sandbox_runtime": "runsc", "model": "scripted/demo",
    "anthropic_base_url": "https://api.anthropic.com", "artifacts_dir": "/shared/pyflue-artifacts",
    "retention": "30d", "worker_name": "worker-1",
}
# Read by the CLI from the environment only, never from a settings file.
_CLI_ONLY = {"server_url": "set PYFLUE_SERVER_URL in the environment or pass --server URL"}


@dataclass(frozen=True)


class SettingKey:
    """One setting: ``key`` is its name in a settings file (its first variable without
    ``PYFLUE_``, in lower case), ``group`` the field of :class:`Settings` holding it ("" for
    Settings' own), ``variables`` the environment variables that set it, first wins."""

    key: str
    group: str
    field: str
    variables: tuple[str, ...]
    secret: bool
    default: Any

    @property
    def init_name(self) -> str:
        """The keyword its group's model takes it by (the variable, for an aliased field)."""
        return self.variables[0] if len(self.variables) > 1 else self.field

    def example(self, *, in_file: bool) -> str | None:
        """``key = value`` (in a file) or ``VARIABLE=value`` with a valid value, or None."""
        value = self.default if self.default is not None else _EXAMPLES.get(self.key)
        if value is None or self.secret:
            return None
        if in_file:
            return f"{self.key} = {toml_value(value)}"
        text = json.dumps(value) if isinstance(value, list) else toml_value(value).strip('"')
        return f"{self.variables[0]}={text!r}" if isinstance(value, list) \
            else f"{self.variables[0]}={text}"


def setting_keys() -> dict[str, SettingKey]:
    """Every setting by its file key, in the order docs/settings.md lists them."""
    keys: dict[str, SettingKey] = {}
    groups: list[tuple[str, type[BaseSettings]]] = [("", Settings), *_PARTS.items()]
    for group, model in groups:
        prefix = str(model.model_config.get("env_prefix", ""))
        for name, info in model.model_fields.items():
            if isinstance(info.default_factory, type):  # a group: its own keys follow
                continue
            alias = info.validation_alias
            variables = tuple(str(c) for c in alias.choices) if isinstance(alias, AliasChoices) \
                else (f"{prefix}{name}".upper(),)
            default = None if info.default is PydanticUndefined else info.default
            if default is None and info.default_factory is not None \
                    and info.default_factory is not find_project_here:
                default = info.default_factory()  # type: ignore[call-arg,unused-ignore]
            key = variables[0].lower().removeprefix("pyflue_")
            keys[key] = SettingKey(key, group, name, variables,
                                   "SecretStr" in str(info.annotation), default)
    return keys


@dataclass(frozen=True)


class Source:
    """Where a setting's value came from: ``kind`` is ``default``, ``file``, ``env`` or
    ``option``; ``where`` names the file, the variable or the option."""

    kind: str
    where: str | None = None


@dataclass(frozen=True)


class LoadedSettings:
    settings: Settings
    sources: dict[str, Source]  # by file key
    file: SettingsFile | None


def load_settings(project: Path | None = None) -> Settings:
    """The settings: the environment's ``PYFLUE_*`` variables over the project's settings file
    (``pyflue.toml`` or ``[tool.pyflue]`` in ``pyproject.toml``) over the defaults.

    ``project`` (``-C DIR``) overrides ``PYFLUE_PROJECT_DIR`` and the search upward. Raises
    :class:`~pyflue.errors.InvalidSettings` listing every refused variable or file key, one
    line each, naming it (and the file) and a valid example.
    """
    return load_settings_with_sources(project).settings


def load_settings_with_sources(project: Path | None = None) -> LoadedSettings:
    """:func:`load_settings`, and where each value came from (``pyflue config`` shows it)."""
    environ = {name.lower(): name for name in os.environ}  # pydantic reads them in any case
    if project is not None:
        project_dir, project_source = project.resolve(), Source("option", "--project")
    elif "pyflue_project_dir" in environ:
        name = environ["pyflue_project_dir"]
        project_dir, project_source = Path(os.environ[name]), Source("env", name)
    else:
        project_dir, project_source = find_project_here(), Source("default", "found upward")
    problems: list[str] = []
    try:
        file = read_settings_file(project_dir)
    except InvalidSettings as exc:
        problems += exc.problems
        file = None
    keys = setting_keys()
    given: dict[str, dict[str, Any]] = {group: {} for group in ("", *_PARTS)}
    from_file: dict[str, dict[str, str]] = {group: {} for group in given}  # init name -> key
    for key, value in (file.values if file else {}).items():
        assert file is not None
        problem = _file_key_problem(file, key, value, keys)
        if problem:
            problems.append(problem)
            continue
        spec = keys[key]
        if any(v.lower() in environ for v in spec.variables):
            continue  # the environment overrides the file
        given[spec.group][spec.init_name] = value
        from_file[spec.group][spec.init_name] = key
    label = file.label if file else ""
    parts: dict[str, BaseSettings] = {}
    for group, part in _PARTS.items():
        try:
            parts[group] = part(**given[group])
        except (ValidationError, _EnvParseError) as exc:
            problems += _problems(part, exc, label, from_file[group], keys)
            parts[group] = part.model_construct()
    try:
        settings = Settings(project_dir=project_dir, **given[""], **parts)  # type: ignore[arg-type]
    except (ValidationError, _EnvParseError) as exc:
        problems += _problems(Settings, exc, label, from_file[""], keys)
    if problems:
        raise InvalidSettings(problems)
    sources = {"project_dir": project_source}
    for key, spec in keys.items():
        if key == "project_dir":
            continue
        variable = next((environ[v.lower()] for v in spec.variables if v.lower() in environ),
                        None)
        sources[key] = (Source("env", variable) if variable
                        else Source("file", label) if spec.init_name in from_file[spec.group]
                        else Source("default"))
    return LoadedSettings(settings, sources, file)


def _file_key_problem(file: SettingsFile, key: str, value: Any,
                      keys: dict[str, SettingKey]) -> str | None:
    """Why the settings file may not hold ``key = value``, or None."""
    where = f"{file.label}: {key}"
    spec = keys.get(key)
    if spec is not None:
        if key == "project_dir":
            return (f"{where} cannot be set in a settings file: the file's folder is the "
                    "project (pass -C DIR or set PYFLUE_PROJECT_DIR for another)")
        if spec.secret:
            return (f"{where} is a secret, which pyflue never reads from a file (files end up "
                    f"in version control): set {spec.variables[0]} in the environment")
        if key == "store_url" and isinstance(value, str) and _password_of(value):
            return (f"{where} holds a password, which pyflue never reads from a file: leave it "
                    "out of the URL and set PYFLUE_STORE_PASSWORD in the environment")
        return None
    if key in _CLI_ONLY:
        return f"{where} is not read from a settings file: {_CLI_ONLY[key]}"
    if isinstance(value, dict):
        inner = [f"{key}_{k}" for k in value if f"{key}_{k}" in keys]
        example = keys[inner[0]].example(in_file=True) if inner else None
        return (f"{where} is a table, but settings are plain keys: write them directly under "
                f"the file's top level or [tool.pyflue], e.g. "
                f"{example or keys['sandbox_memory'].example(in_file=True)}")
    import difflib

    plain = key.lower().replace("-", "_").removeprefix("pyflue_")
    near = [plain] if plain in keys else difflib.get_close_matches(plain, list(keys), n=1)
    spec = keys[near[0]] if near else None
    if spec is not None and spec.key != "project_dir" and not spec.secret:
        return (f"{where} is not a setting: did you mean {spec.example(in_file=True) or spec.key}?"
                " (docs/settings.md lists every key)")
    return (f"{where} is not a setting: keys are the PYFLUE_* variables' names without PYFLUE_, "
            f"in lower case, e.g. {keys['sandbox_memory'].example(in_file=True)} "
            "(docs/settings.md lists every key)")


def _password_of(url: str) -> str | None:
    try:
        return make_url(url).password
    except ArgumentError:
        return None


def toml_value(value: Any) -> str:
    """``value`` as TOML writes it (for examples and ``pyflue config``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def _problems(part: type[BaseSettings], exc: ValidationError | _EnvParseError, label: str = "",
              from_file: dict[str, str] | None = None,
              keys: dict[str, SettingKey] | None = None) -> list[str]:
    """One line per refused value; a value from the settings file (``from_file``: the keyword
    it was given as -> its file key) is named by its key, after the file's ``label``."""
    prefix = str(part.model_config.get("env_prefix", "")).upper()
    from_file = from_file or {}
    keys = keys or {}
    if isinstance(exc, _EnvParseError):
        found = _UNPARSED.search(str(exc))
        name = f"{prefix}{found[1].upper()}" if found else f"a {prefix}* variable"
        return [f"{name} is not valid JSON: write a list like [\"none\", \"bridge\"]"]
    lines = []
    for error in exc.errors():
        text = str(error["msg"]).removeprefix("Value error, ")
        if not error["loc"] or text.startswith("PYFLUE_"):  # a check across fields names them
            named = [k for k in from_file.values() if keys[k].variables[0] in text]
            for key in named:  # a value from the file is named as the file names it
                variable = rf"\b{keys[key].variables[0]}\b"
                text = re.sub(variable, key, re.sub(f"{variable}=", f"{key} = ", text))
            lines.append(f"{label}: {text}" if named else text)
            continue
        loc = str(error["loc"][0])
        file_key = from_file.get(loc)
        key = file_key or loc
        name = key if key.startswith("PYFLUE_") else f"{prefix}{key.upper()}"
        value = error["input"]
        if key == "store_url" and isinstance(value, str):
            value = masked_url(value)
        secret = any(s in key.lower() for s in _SECRET)
        if file_key:
            shown = "" if secret else f" = {toml_value(value)}"
        else:
            shown = "" if secret else f"={value!r}"
        if error["type"] != "value_error":
            text = f": {text[:1].lower()}{text[1:]}"
            spec = keys.get(file_key or name.lower().removeprefix("pyflue_"))
            example = spec.example(in_file=bool(file_key)) if spec else None
            if example:
                text += f"; write it like {example}"
        line = f"{key if file_key else name}{shown} {text}".replace(" : ", ": ")
        lines.append(f"{label}: {line}" if file_key else line)
    return lines


def masked_url(url: str) -> str:
    """``url`` with its password (if any) shown as ``***``, for messages and labels."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return re.sub(r"(://[^/:@]*:)[^/@]*@", r"\1***@", url)
