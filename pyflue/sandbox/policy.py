"""The sandbox policy: what a run's container gets by default, and the most it may ask for.

Defaults and maxima live in :class:`pyflue.settings.SandboxDefaults` (``PYFLUE_SANDBOX_*``).
An agent may ask for more memory, CPUs or processes, the bridge network or another runtime, but
only up to the maxima the settings allow; asking beyond them is a ConfigError that names the
limit and the setting that raises it. See docs/security.md.
"""

from __future__ import annotations

from typing import Protocol

from pyflue.errors import ConfigError
from pyflue.sandbox.base import SandboxSpec
from pyflue.settings import SIZE, SandboxDefaults

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str, *, what: str) -> int:
    """Bytes in a Docker-style size such as ``512m``, ``1g`` or ``1.5GiB``."""
    match = SIZE.match(str(text))
    if not match:
        raise ConfigError(f"{what} {text!r} is not a size; write it like 512m or 2g")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


class SandboxAsks(Protocol):
    """What an agent asks of its sandbox (:class:`pyflue.agents.AgentConfig` has these)."""

    @property
    def image(self) -> str | None: ...
    @property
    def network(self) -> str | None: ...
    @property
    def memory(self) -> str | None: ...
    @property
    def cpus(self) -> float | None: ...
    @property
    def pids(self) -> int | None: ...
    @property
    def runtime(self) -> str | None: ...


def spec_for(config: SandboxAsks, defaults: SandboxDefaults, *, run_id: str, workflow: str,
             image_override: str | None) -> SandboxSpec:
    """The container a run gets for this agent: its asks within the policy's maxima."""
    memory = config.memory or defaults.memory
    if parse_size(memory, what="memory") > parse_size(defaults.max_memory, what="max_memory"):
        _beyond("memory", memory, defaults.max_memory, "PYFLUE_SANDBOX_MAX_MEMORY")
    cpus = config.cpus or defaults.cpus
    if cpus > defaults.max_cpus:
        _beyond("cpus", cpus, defaults.max_cpus, "PYFLUE_SANDBOX_MAX_CPUS")
    pids = config.pids or defaults.pids
    if pids > defaults.max_pids:
        _beyond("pids", pids, defaults.max_pids, "PYFLUE_SANDBOX_MAX_PIDS")
    network = config.network or defaults.network
    if network not in defaults.allowed_networks:
        raise ConfigError(
            f"the agent asks for network {network!r}, which this server does not allow "
            f"(allowed: {', '.join(defaults.allowed_networks)}; PYFLUE_SANDBOX_ALLOWED_NETWORKS)"
        )
    runtime = config.runtime or defaults.runtime
    if runtime is not None and runtime not in defaults.allowed_runtimes:
        raise ConfigError(
            f"the agent asks for runtime {runtime!r}, which this server does not allow "
            f"(allowed: {', '.join(defaults.allowed_runtimes)}; PYFLUE_SANDBOX_ALLOWED_RUNTIMES)"
        )
    # /workspace and /tmp are tmpfs: what is written there is memory of the container. Capping
    # them below the memory limit makes filling them ENOSPC, not an OOM kill of everything.
    limit = parse_size(memory, what="memory")
    workspace = _capped(defaults.workspace_size, limit // 2, "workspace_size")
    tmp = _capped(defaults.tmp_size, limit // 4, "tmp_size")
    return SandboxSpec(
        run_id=run_id,
        workflow=workflow,
        image=image_override or config.image or defaults.image,
        user=defaults.user,
        network=network,
        memory=memory,
        cpus=cpus,
        pids=pids,
        workspace_size=workspace,
        tmp_size=tmp,
        runtime=runtime,
        read_only_root=defaults.read_only_root,
    )


def _capped(size: str, cap: int, what: str) -> str:
    wanted = parse_size(size, what=what)
    return size if wanted <= cap else f"{max(cap // (1 << 20), 16)}m"


def _beyond(what: str, asked: object, maximum: object, setting: str) -> None:
    raise ConfigError(
        f"the agent asks for {what} {asked}, above the maximum of {maximum} ({setting}); "
        "ask for less, or raise the maximum in the server's settings"
    )
