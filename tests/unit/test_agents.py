from __future__ import annotations

from typing import Any

import pytest

from pyflue import create_agent
from pyflue.agent_config import AgentConfig
from pyflue.errors import ConfigError


async def test_an_initializer_receives_the_context() -> None:
    agent = create_agent(lambda ctx: {"model": "anthropic/x", "env": {"RUN": ctx}})
    config = await agent.configure("ctx-1")  # type: ignore[arg-type]
    assert config.model == "anthropic/x" and config.env == {"RUN": "ctx-1"}


async def test_async_and_argument_free_initializers_work() -> None:
    async def init() -> dict[str, Any]:
        return {"image": "python:3.12-slim", "network": "bridge"}

    config = await create_agent(init).configure(None)  # type: ignore[arg-type]
    assert config.image == "python:3.12-slim" and config.network == "bridge"


async def test_unknown_keys_name_the_key_and_the_allowed_ones() -> None:
    agent = create_agent(lambda ctx: {"modle": "x"})
    with pytest.raises(ConfigError) as info:
        await agent.configure(None)  # type: ignore[arg-type]
    assert "'modle'" in info.value.message
    assert "allowed keys: " + ", ".join(sorted(AgentConfig.model_fields)) in info.value.message


async def test_invalid_values_say_which_key_is_wrong() -> None:
    with pytest.raises(ConfigError, match="network"):
        await create_agent({"network": "host"}).configure(None)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="cwd"):
        await create_agent({"cwd": "/etc"}).configure(None)  # type: ignore[arg-type]


async def test_an_initializer_must_return_a_dict() -> None:
    with pytest.raises(ConfigError, match="must return a dict"):
        await create_agent(lambda: ["x"]).configure(None)  # type: ignore[arg-type, return-value]


def test_create_agent_refuses_non_callables() -> None:
    with pytest.raises(ConfigError, match="create_agent needs a function"):
        create_agent(42)  # type: ignore[arg-type]


async def test_an_agent_cwd_is_normalized_and_confined() -> None:
    config = await create_agent({"cwd": "/workspace/a/../b"}).configure(None)  # type: ignore[arg-type]
    assert config.cwd == "/workspace/b"
    relative = await create_agent({"cwd": "src"}).configure(None)  # type: ignore[arg-type]
    assert relative.cwd == "/workspace/src"
    for bad in ("/workspace/../etc", "/workspacefoo", "../x"):
        with pytest.raises(ConfigError, match="cwd"):
            await create_agent({"cwd": bad}).configure(None)  # type: ignore[arg-type]
