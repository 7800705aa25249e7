"""pyflue: Python workflows for agent and CI work; every run gets a fresh Docker container.

The public API is small and pinned by tests/unit/test_public_api.py. Each name loads on first
use (``from pyflue import FlueContext, create_agent`` loads only what a workflow module needs), so
neither a workflow file nor a CLI command pays for the parts it does not touch.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pyflue.agent_config import AgentConfig
    from pyflue.agents import Agent, create_agent
    from pyflue.client import PyFlueClient
    from pyflue.context import FlueContext
    from pyflue.embedded import WorkflowRunner, run_workflow, run_workflow_sync
    from pyflue.errors import PyflueError
    from pyflue.events import Event, EventType
    from pyflue.harness import Harness, ShellResult
    from pyflue.models import Run
    from pyflue.settings import Settings
    from pyflue.status import RunStatus

__version__ = "0.1.0"

# Loaded on first use: name -> the module that defines it.
_LAZY = {
    "Agent": "pyflue.agents",
    "AgentConfig": "pyflue.agent_config",
    "FlueContext": "pyflue.context",
    "PyflueError": "pyflue.errors",
    "create_agent": "pyflue.agents",
    "Event": "pyflue.events",
    "EventType": "pyflue.events",
    "Harness": "pyflue.harness",
    "PyFlueClient": "pyflue.client",
    "Run": "pyflue.models",
    "RunStatus": "pyflue.status",
    "Settings": "pyflue.settings",
    "ShellResult": "pyflue.harness",
    "WorkflowRunner": "pyflue.embedded",
    "run_workflow": "pyflue.embedded",
    "run_workflow_sync": "pyflue.embedded",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
    else:  # a submodule, as `import pyflue; pyflue.errors` always gave
        try:
            value = import_module(f"pyflue.{name}")
        except ModuleNotFoundError:
            from pyflue.compat import missing_import

            upstream = missing_import(name)  # PyFlue 0.2's names say what to use instead
            if upstream is not None:
                raise upstream from None
            raise AttributeError(f"module 'pyflue' has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "Agent",
    "AgentConfig",
    "Event",
    "EventType",
    "FlueContext",
    "Harness",
    "PyFlueClient",
    "PyflueError",
    "Run",
    "RunStatus",
    "Settings",
    "ShellResult",
    "WorkflowRunner",
    "__version__",
    "create_agent",
    "run_workflow",
    "run_workflow_sync",
]
