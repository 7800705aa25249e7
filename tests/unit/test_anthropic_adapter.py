"""The Anthropic adapter, through the real SDK, against the fake Messages API on a real socket."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator

import anthropic
import pytest

from pyflue.errors import ModelAuthError, ModelError, ModelNotFound, ModelUnavailable
from pyflue.llm.anthropic import AnthropicClient
from pyflue.llm.base import (
    Message,
    TextBlock,
    ToolResultBlock,
    ToolSpec,
    ToolUseBlock,
    TurnRequest,
    Usage,
)
from pyflue.llm.fake_anthropic import FakeAnthropic, serve_fake_anthropic

MODEL = "claude-test-1"
WEATHER = ToolSpec(
    "get_weather",
    "The current weather in a city.",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)


@pytest.fixture
def fake() -> FakeAnthropic:
    return FakeAnthropic()


@pytest.fixture
def base_url(fake: FakeAnthropic) -> Iterator[str]:
    with serve_fake_anthropic(fake) as url:
        yield url


@pytest.fixture
async def client(base_url: str) -> AsyncIterator[AnthropicClient]:
    async with AnthropicClient("sk-test", base_url=base_url, max_retries=2) as c:
        yield c


def _ask(
    text: str, *, system: str | None = None, tools: tuple[ToolSpec, ...] = (), max_tokens: int = 100
) -> TurnRequest:
    user = Message("user", (TextBlock(text),))
    return TurnRequest(MODEL, (user,), system=system, tools=tools, max_tokens=max_tokens)


def _ignore(_: str) -> None:
    pass


async def test_a_text_reply_comes_back_as_one_text_block(
    fake: FakeAnthropic, client: AnthropicClient
) -> None:
    fake.reply_text("Hello there, world.")
    response = await client.turn(_ask("hi"), _ignore)
    assert response.content == (TextBlock("Hello there, world."),)
    assert response.stop_reason == "end_turn" and response.model == MODEL


async def test_text_deltas_reach_on_text_in_order(
    fake: FakeAnthropic, client: AnthropicClient
) -> None:
    fake.reply_text(["One, ", "two, ", "three."])
    seen: list[str] = []
    await client.turn(_ask("count"), seen.append)
    assert seen == ["One, ", "two, ", "three."]


async def test_an_error_raised_by_on_text_propagates_unchanged(
    fake: FakeAnthropic, client: AnthropicClient
) -> None:
    fake.reply_text("a b c")

    def stop(_: str) -> None:
        raise LookupError("stop here")

    with pytest.raises(LookupError, match="stop here"):
        await client.turn(_ask("hi"), stop)


async def test_the_request_carries_model_system_max_tokens_and_messages(
    fake: FakeAnthropic, client: AnthropicClient
) -> None:
    fake.reply_text("ok")
    await client.turn(_ask("hi", system="Be brief.", max_tokens=321), _ignore)
    body = fake.requests[0].body
    assert body["model"] == MODEL and body["system"] == "Be brief." and body["max_tokens"] == 321
    assert body["messages"] == [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    assert body["stream"] is True


async def test_the_fake_answers_the_sdks_non_streaming_create_with_json(
    fake: FakeAnthropic, base_url: str
) -> None:
    fake.reply_text("plain JSON")
    async with anthropic.AsyncAnthropic(api_key="sk-test", base_url=base_url) as sdk:
        message = await sdk.messages.create(
            model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )
    assert message.content[0].type == "text" and message.content[0].text == "plain JSON"
    assert message.stop_reason == "end_turn" and "stream" not in fake.requests[0].body


async def test_tools_are_sent_as_the_apis_tool_definitions(
    fake: FakeAnthropic, client: AnthropicClient
) -> None:
    fake.reply_text("ok")
    await client.turn(_ask("weather?", tools=(WEATHER,)), _ignore)
    assert fake.requests[0].body["tools"] == [{
        "name": "get_weather",
        "description": "The current weather in a city.",
        "input_schema": WEATHER.input_schema,
    }]


async def test_a_tool_call_comes_back_as_a_tool_use_block(
    fake: FakeAnthropic, client: AnthropicClient
) -> None:
    fake.reply_tool_use("get_weather", {"city": "Lyon", "days": [1, 2]}, text="Let me check.",
                        id="toolu_1")
    response = await client.turn(_ask("weather?", tools=(WEATHER,)), _ignore)
    assert response.stop_reason == "tool_use"
    assert response.content == (
        TextBlock("Let me check."),
        ToolUseBlock("toolu_1", "get_weather", {"city": "Lyon", "days": [1, 2]}),
    )


async def test_the_next_turn_sends_the_tool_use_and_its_tool_result_back(
    fake: FakeAnthropic, client: AnthropicClient
) -> None:
    fake.reply_tool_use("get_weather", {"city": "Lyon"}, id="toolu_1").reply_text("Sunny.")
    first = await client.turn(_ask("weather?", tools=(WEATHER,)), _ignore)
    result = Message("user", (ToolResultBlock("toolu_1", "no network", is_error=True),))
    history = (*_ask("weather?").messages, first.message, result)
    second = await client.turn(TurnRequest(MODEL, history, tools=(WEATHER,)), _ignore)
    assert second.message.text == "Sunny."
    assert fake.requests[1].body["messages"][1:] == [
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Lyon"}},
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "no network",
             "is_error": True},
        ]},
    ]


async def test_usage_reports_input_output_and_cache_tokens(
    fake: FakeAnthropic, client: AnthropicClient
) -> None:
    fake.reply_text("ok", usage={"input_tokens": 12, "output_tokens": 3,
                                 "cache_creation_input_tokens": 5, "cache_read_input_tokens": 7})
    response = await client.turn(_ask("hi"), _ignore)
    assert response.usage == Usage(12, 3, 5, 7)


async def test_the_api_key_reaches_the_server(fake: FakeAnthropic, client: AnthropicClient) -> None:
    fake.reply_text("ok")
    await client.turn(_ask("hi"), _ignore)
    assert fake.requests[0].api_key == "sk-test"


async def test_an_overloaded_529_is_retried_and_the_turn_succeeds(
    fake: FakeAnthropic, client: AnthropicClient
) -> None:
    fake.fail(529, "overloaded_error", "Overloaded").reply_text("made it")
    response = await client.turn(_ask("hi"), _ignore)
    assert response.message.text == "made it" and len(fake.requests) == 2


@pytest.mark.parametrize(("status", "said"), [
    (429, "rate-limited"), (529, "overloaded"), (500, "failed"), (503, "failed"),
])
async def test_busy_or_failing_servers_are_model_unavailable_after_the_retries(
    fake: FakeAnthropic, client: AnthropicClient, status: int, said: str
) -> None:
    for _ in range(3):
        fake.fail(status, message="Try later", headers={"retry-after-ms": "10"})
    with pytest.raises(ModelUnavailable, match=rf"{said}.*Try later.*retried 2 times"):
        await client.turn(_ask("hi"), _ignore)
    assert len(fake.requests) == 3


async def test_an_error_event_inside_the_stream_is_model_unavailable(
    fake: FakeAnthropic, client: AnthropicClient
) -> None:
    fake.fail_mid_stream("overloaded_error", "Overloaded")
    with pytest.raises(ModelUnavailable, match=r"overloaded_error: Overloaded\); retried 0 times"):
        await client.turn(_ask("hi"), _ignore)
    assert len(fake.requests) == 1


async def test_a_refused_key_is_model_auth_error_without_a_retry(
    fake: FakeAnthropic, client: AnthropicClient
) -> None:
    fake.fail(401, "authentication_error", "invalid x-api-key")
    with pytest.raises(ModelAuthError, match=r"refused the API key.*invalid x-api-key"):
        await client.turn(_ask("hi"), _ignore)
    assert len(fake.requests) == 1


async def test_a_forbidden_key_is_model_auth_error(
    fake: FakeAnthropic, client: AnthropicClient
) -> None:
    fake.fail(403, "permission_error", "no access")
    with pytest.raises(ModelAuthError, match="refused the API key"):
        await client.turn(_ask("hi"), _ignore)


async def test_an_unknown_model_is_model_not_found_naming_it(
    fake: FakeAnthropic, client: AnthropicClient
) -> None:
    fake.fail(404, "not_found_error", f"model: {MODEL}")
    with pytest.raises(ModelNotFound, match=f"'{MODEL}' was not found"):
        await client.turn(_ask("hi"), _ignore)
    assert len(fake.requests) == 1


async def test_another_client_error_is_a_model_error_with_the_servers_message(
    fake: FakeAnthropic, client: AnthropicClient
) -> None:
    fake.fail(400, "invalid_request_error", "max_tokens: 999999 > 64000")
    with pytest.raises(ModelError, match="max_tokens: 999999 > 64000") as caught:
        await client.turn(_ask("hi"), _ignore)
    assert type(caught.value) is ModelError


async def test_a_missing_key_says_to_set_anthropic_api_key(fake: FakeAnthropic, base_url: str) -> None:
    async with AnthropicClient(None, base_url=base_url) as client:
        with pytest.raises(ModelAuthError, match="set ANTHROPIC_API_KEY"):
            await client.turn(_ask("hi"), _ignore)
    assert fake.requests == []


async def test_an_unreachable_server_is_model_unavailable_after_the_retries() -> None:
    with socket.socket() as sock:  # a port nobody listens on once this closes
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with AnthropicClient("sk-test", base_url=f"http://127.0.0.1:{port}",
                               max_retries=1) as client:
        with pytest.raises(ModelUnavailable, match=r"Could not reach.*retried 1 time\b"):
            await client.turn(_ask("hi"), _ignore)
