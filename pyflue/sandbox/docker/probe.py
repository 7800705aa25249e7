"""The engine's word on one run's container: running or not, and why it stopped.

Whatever channel carries a container's commands (:mod:`.channel`), only the engine knows that
the container itself stopped, was OOM-killed or was removed; the sandbox asks it here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pyflue._bridge import ThreadBridge
from pyflue.errors import SandboxError, SandboxGone
from pyflue.sandbox.docker.engine import translated


@dataclass(frozen=True)
class ContainerState:
    """A container's state as the engine reports it (``docker inspect``'s ``State``)."""

    running: bool
    oom_killed: bool = False
    removed: bool = False
    exit_code: int | None = None


# What the sandbox assumes when the engine could not be asked: still running, so a command
# is left to end (or to time out) by itself.
UNKNOWN = ContainerState(running=True)


class ContainerProbe:
    """Inspects one container on the thread bridge."""

    def __init__(self, api: Any, bridge: ThreadBridge, container_id: str) -> None:
        self._api = api  # docker-py's low-level APIClient
        self._bridge = bridge
        self.container_id = container_id

    async def state(self) -> ContainerState:
        """The container's state: ``removed`` when it no longer exists, :data:`UNKNOWN` when
        the engine did not answer. Never raises a SandboxError."""
        return await self._bridge.call(self._state)

    def _state(self) -> ContainerState:
        try:
            with translated("inspecting the run's container", container=self.container_id):
                raw: dict[str, Any] = self._api.inspect_container(self.container_id)
        except SandboxGone:
            return ContainerState(running=False, removed=True)
        except SandboxError:
            return UNKNOWN
        state = raw.get("State") or {}
        return ContainerState(
            running=bool(state.get("Running", False)),
            oom_killed=bool(state.get("OOMKilled")),
            exit_code=state.get("ExitCode"),
        )
