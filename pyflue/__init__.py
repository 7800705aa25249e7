"""pyflue: Python workflows for agent and CI work; every run gets a fresh Docker container.

The public API is small and pinned by tests/unit/test_public_api.py.
"""

from __future__ import annotations

from pyflue.agents import Agent, AgentConfig, create_agent
from pyflue.client import PyFlueClient
from pyflue.context import FlueContext
from pyflue.errors import PyflueError
from pyflue.events import Event, EventType
from pyflue.harness import Harness, ShellResult
from pyflue.models import Run, RunStatus
from pyflue.settings import Settings

__version__ = "0.1.0"

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
    "__version__",
    "create_agent",
]
