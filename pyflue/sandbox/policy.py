"""The sandbox policy: what a run's container gets by default, and the most it may ask for.

Defaults and maxima live in :class:`pyflue.settings.SandboxDefaults` (``PYFLUE_SANDBOX_*``).
An agent may ask for more memory, CPUs or processes, the bridge network or another runtime, but
only up to the maxima the settings allow; asking beyond them is a ConfigError that names the
limit and the setting that raises it. See docs/security.md.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from typing import Protocol

from pyflue.egress.rules import allowed, parse_rule, parse_rules, within
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
    @property
    def egress(self) -> Sequence[str]: ...
    @property
    def egress_secrets(self) -> Mapping[str, Sequence[str]]: ...


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
    egress = egress_for(config, defaults, network=network, runtime=runtime)
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
        egress=egress,
    )


def placeholder(run_id: str, name: str) -> str:
    """What the container holds for the egress secret ``name``: not secret, only a marker
    the egress proxy replaces (the same for every ``ctx.init`` of the run)."""
    digest = hashlib.sha256(f"{run_id}\0{name}".encode()).hexdigest()[:16]
    return f"pyflue-egress-{name}-{digest}"


_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def egress_for(config: SandboxAsks, defaults: SandboxDefaults, *, network: str,
               runtime: str | None) -> tuple[str, ...]:
    """The agent's egress names, checked: valid, within PYFLUE_SANDBOX_MAX_EGRESS, not mixed
    with the bridge network nor gVisor, and every ``egress_secrets`` host among them."""
    where = 'agent config "egress"'
    rules = parse_rules(config.egress, where=where)
    if config.egress_secrets and not rules:
        raise ConfigError('agent config "egress_secrets" needs "egress": list the hosts the '
                          "secrets are for in egress as well")
    if not rules:
        return ()
    within(rules, parse_rules(defaults.max_egress, where="PYFLUE_SANDBOX_MAX_EGRESS",
                              server=True), "PYFLUE_SANDBOX_MAX_EGRESS")
    if network != "none":
        raise ConfigError(f"the agent asks for egress and network {network!r}: egress gives "
                          "the container its own network whose only way out is the egress "
                          'proxy; drop "network" (or set it to "none")')
    if runtime is not None and runtime.startswith("runsc"):
        raise ConfigError("egress is not available under runsc (gVisor runs here with "
                          "--network=none, so its containers have no network to reach the "
                          "proxy on); run egress steps under runc (see docs/sandbox.md#egress)")
    for name, hosts in config.egress_secrets.items():
        if not _ENV_NAME.match(name):
            raise ConfigError(f'agent config "egress_secrets": {name!r} is not an environment '
                              "variable name; write it like GIT_TOKEN")
        if isinstance(hosts, str) or not hosts:
            raise ConfigError(f'agent config "egress_secrets": {name} needs a list of hosts, '
                              f'e.g. {{"{name}": ["api.example.com"]}}')
        for host in hosts:
            rule = parse_rule(host, where='agent config "egress_secrets"')
            if rule.wildcard or not allowed(rules, rule.pattern, 443):
                raise ConfigError(
                    f'agent config "egress_secrets": {name} is granted to {host!r}, which is '
                    'not an exact name in the agent\'s "egress" list; list it there as well'
                )
    return tuple(r.pattern for r in rules)


def _capped(size: str, cap: int, what: str) -> str:
    wanted = parse_size(size, what=what)
    return size if wanted <= cap else f"{max(cap // (1 << 20), 16)}m"


def _beyond(what: str, asked: object, maximum: object, setting: str) -> None:
    raise ConfigError(
        f"the agent asks for {what} {asked}, above the maximum of {maximum} ({setting}); "
        "ask for less, or raise the maximum in the server's settings"
    )
