from __future__ import annotations

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
        "__version__",
        "create_agent",
    ]
    assert pyflue.__all__ == sorted(pyflue.__all__)
    for name in pyflue.__all__:
        assert hasattr(pyflue, name)
