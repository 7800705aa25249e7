from __future__ import annotations

import pytest

import pyflue


def test_the_public_api_is_pinned() -> None:
    assert pyflue.__all__ == [
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
    assert pyflue.__all__ == sorted(pyflue.__all__)
    for name in pyflue.__all__:
        assert hasattr(pyflue, name)


def test_submodules_are_reachable_from_the_package_as_before() -> None:
    assert pyflue.errors.PyflueError is pyflue.PyflueError
    assert {"Settings", "create_agent"} <= set(dir(pyflue))


def test_names_that_moved_still_import_from_where_they_were_with_a_warning() -> None:
    import importlib

    from pyflue.events import EventType

    with pytest.warns(DeprecationWarning, match=r"pyflue\.events"):
        from pyflue.models import EventType as old
    assert old is EventType
    for module in ("pyflue.local", "pyflue.wsclient"):
        with pytest.warns(DeprecationWarning, match="moved to"):
            importlib.reload(importlib.import_module(module))
    from pyflue.agents import AgentConfig

    assert AgentConfig.__module__ == "pyflue.agent_config"
