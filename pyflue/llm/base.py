"""The model client port: one model turn with tools, streamed.

A turn takes the conversation so far (provider-neutral content blocks close to the Messages
API's) and returns the assistant's content, stop reason and token usage, calling ``on_text``
with each text delta while it streams. Adapters: :mod:`pyflue.llm.anthropic` (the official SDK)
and :mod:`pyflue.llm.scripted` (deterministic, for tests and offline demos). Adapters translate
their SDK's errors into :class:`pyflue.errors.ModelError` subclasses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

Role = Literal["user", "assistant"]


@dataclass(frozen=True)
class TextBlock:
    text: str
    type: Literal["text"] = "text"


@dataclass(frozen=True)
class ToolUseBlock:
    id: str
    name: str
    input: dict[str, Any]
    type: Literal["tool_use"] = "tool_use"


@dataclass(frozen=True)
class ToolResultBlock:
    tool_use_id: str
    content: str
    is_error: bool = False
    type: Literal["tool_result"] = "tool_result"


Block = TextBlock | ToolUseBlock | ToolResultBlock


@dataclass(frozen=True)
class Message:
    role: Role
    content: tuple[Block, ...]

    @property
    def text(self) -> str:
        return "".join(b.text for b in self.content if isinstance(b, TextBlock))

    @property
    def tool_uses(self) -> list[ToolUseBlock]:
        return [b for b in self.content if isinstance(b, ToolUseBlock)]


@dataclass(frozen=True)
class ToolSpec:
    """A tool as the model sees it: a name, what it does, a JSON schema for its input."""

    name: str
    description: str
    input_schema: dict[str, Any]


@dataclass(frozen=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cache_creation_input_tokens + other.cache_creation_input_tokens,
            self.cache_read_input_tokens + other.cache_read_input_tokens,
        )

    def to_dict(self) -> dict[str, int]:
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_creation_input_tokens": self.cache_creation_input_tokens,
            "cache_read_input_tokens": self.cache_read_input_tokens,
        }


@dataclass(frozen=True)
class TurnRequest:
    model: str  # the provider's model id, without the "anthropic/" prefix
    messages: tuple[Message, ...]
    system: str | None = None
    tools: tuple[ToolSpec, ...] = ()
    max_tokens: int = 8192
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TurnResponse:
    content: tuple[TextBlock | ToolUseBlock, ...]
    stop_reason: str  # end_turn, tool_use, max_tokens, stop_sequence, ...
    usage: Usage
    model: str

    @property
    def message(self) -> Message:
        return Message("assistant", self.content)


TextHandler = Callable[[str], None]


class ModelClient(Protocol):
    async def turn(self, request: TurnRequest, on_text: TextHandler) -> TurnResponse:
        """One model turn. Raises :class:`pyflue.errors.ModelError` subclasses."""
        ...

    async def close(self) -> None: ...
