"""The model client on the official ``anthropic`` SDK: streamed turns with tools.

:class:`AnthropicClient` turns a :class:`~pyflue.llm.base.TurnRequest` into one streamed
Messages API call, hands each text delta to ``on_text`` and returns the final content, stop
reason and usage. Retries (429, 529 overloaded, 5xx, connection errors) are the SDK's own,
with its backoff and the server's ``retry-after`` honoured. Every SDK error is translated here
into a :class:`~pyflue.errors.ModelError` subclass; ``anthropic.*`` never escapes this module.
Tests drive it against :mod:`pyflue.llm.fake_anthropic`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import anthropic
from anthropic.types import ContentBlockParam, MessageParam, ToolParam
from anthropic.types import Message as ApiMessage

from pyflue.errors import ModelAuthError, ModelError, ModelNotFound, ModelUnavailable
from pyflue.llm.base import (
    Block,
    Message,
    TextBlock,
    TextHandler,
    ToolResultBlock,
    ToolSpec,
    ToolUseBlock,
    TurnRequest,
    TurnResponse,
    Usage,
)

DEFAULT_BASE_URL = "https://api.anthropic.com"

# Error types the API reports for a busy or failing service (also inside an SSE stream, where
# the HTTP status is already 200).
_UNAVAILABLE_TYPES = {"rate_limit_error", "overloaded_error", "api_error", "timeout_error"}
_UNAVAILABLE_WHAT = {429: "rate-limited the request", 529: "is overloaded"}


class AnthropicClient:
    """A :class:`~pyflue.llm.base.ModelClient` for Anthropic models, always streaming.

    Args:
        api_key: the Anthropic API key. ``None`` or empty is allowed here, so a project that
            never calls a model needs none; :meth:`turn` then raises :class:`ModelAuthError`.
            The key is never read from the environment: the caller passes it in.
        base_url: the API root (default ``https://api.anthropic.com``); point it at
            :func:`pyflue.llm.fake_anthropic.serve_fake_anthropic` in tests.
        max_retries: how many times the SDK retries a 408, 409, 429, 5xx (incl. 529) or
            connection error, with exponential backoff or the server's ``retry-after``.
        timeout: seconds allowed for one attempt.

    Use ``await client.close()`` (or ``async with``) to release the connection pool.
    """

    def __init__(
        self,
        api_key: str | None,
        *,
        base_url: str | None = None,
        max_retries: int = 4,
        timeout: float = 600.0,
    ) -> None:
        self._max_retries = max_retries
        self._sdk: anthropic.AsyncAnthropic | None = None
        if api_key:
            # An explicit base_url keeps the SDK from consulting ANTHROPIC_BASE_URL.
            self._sdk = anthropic.AsyncAnthropic(
                api_key=api_key,
                base_url=base_url or DEFAULT_BASE_URL,
                max_retries=max_retries,
                timeout=timeout,
            )

    async def turn(self, request: TurnRequest, on_text: TextHandler) -> TurnResponse:
        """Run one streamed turn, calling ``on_text`` with each text delta as it arrives.

        Raises :class:`ModelAuthError` (key missing or refused), :class:`ModelNotFound`
        (unknown model id), :class:`ModelUnavailable` (rate-limited, overloaded, server
        errors or unreachable after the retries) or :class:`ModelError` (any other refusal,
        with the server's message). Exceptions raised by ``on_text`` propagate unchanged.
        """
        if self._sdk is None:
            raise ModelAuthError(
                "No Anthropic API key: set ANTHROPIC_API_KEY (or pass api_key=) to use "
                f"model {request.model!r}."
            )
        try:
            async with self._sdk.messages.stream(**_params(request)) as stream:
                async for text in stream.text_stream:
                    on_text(text)
                final = await stream.get_final_message()
        except anthropic.AnthropicError as err:
            raise _translate(err, request.model, self._max_retries) from err
        return _response(final)

    async def close(self) -> None:
        """Close the SDK's connection pool. Safe to call more than once."""
        if self._sdk is not None:
            await self._sdk.close()

    async def __aenter__(self) -> AnthropicClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


# -- requests ------------------------------------------------------------------------------


def _params(request: TurnRequest) -> dict[str, Any]:
    """The keyword arguments of ``messages.stream`` for a turn."""
    params: dict[str, Any] = {
        "model": request.model,
        "max_tokens": request.max_tokens,
        "messages": [_message_param(m) for m in request.messages],
    }
    if request.system:
        params["system"] = request.system
    if request.tools:
        params["tools"] = [_tool_param(t) for t in request.tools]
    # The API accepts only ``user_id`` in metadata; other keys are pyflue's own.
    if isinstance(user_id := request.metadata.get("user_id"), str):
        params["metadata"] = {"user_id": user_id}
    return params


def _message_param(message: Message) -> MessageParam:
    content = [_block_param(b) for b in message.content]
    # Spelled out per role: the SDK types each role's message separately.
    if message.role == "assistant":
        return {"role": "assistant", "content": content}
    return {"role": "user", "content": content}


def _block_param(block: Block) -> ContentBlockParam:
    if isinstance(block, TextBlock):
        return {"type": "text", "text": block.text}
    if isinstance(block, ToolUseBlock):
        return {"type": "tool_use", "id": block.id, "name": block.name, "input": block.input}
    return _tool_result_param(block)


def _tool_result_param(block: ToolResultBlock) -> ContentBlockParam:
    return {
        "type": "tool_result",
        "tool_use_id": block.tool_use_id,
        "content": block.content,
        "is_error": block.is_error,
    }


def _tool_param(tool: ToolSpec) -> ToolParam:
    return {"name": tool.name, "description": tool.description, "input_schema": tool.input_schema}


# -- responses -----------------------------------------------------------------------------


def _response(message: ApiMessage) -> TurnResponse:
    """The turn's result; block types pyflue does not model (thinking, server tools) are
    dropped."""
    content: list[TextBlock | ToolUseBlock] = []
    for block in message.content:
        if block.type == "text":
            content.append(TextBlock(block.text))
        elif block.type == "tool_use":
            content.append(ToolUseBlock(block.id, block.name, _tool_input(block.input)))
    usage = message.usage
    return TurnResponse(
        content=tuple(content),
        stop_reason=message.stop_reason or "end_turn",
        usage=Usage(
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cache_creation_input_tokens=usage.cache_creation_input_tokens or 0,
            cache_read_input_tokens=usage.cache_read_input_tokens or 0,
        ),
        model=message.model,
    )


def _tool_input(value: object) -> dict[str, Any]:
    # The API promises an object; keep anything else rather than lose it.
    return {str(k): v for k, v in value.items()} if isinstance(value, dict) else {"input": value}


# -- errors --------------------------------------------------------------------------------


def _translate(err: anthropic.AnthropicError, model: str, max_retries: int) -> ModelError:
    """The pyflue error for an SDK error, saying what happened and what to do next."""
    if isinstance(err, anthropic.APIConnectionError):
        retries = _retries_taken(err.request.headers, max_retries)
        return ModelUnavailable(
            f"Could not reach the Anthropic API at {err.request.url.host} ({err.message}); "
            f"{_retried(retries)}. Check the network and the base URL, then try again.",
            details=repr(err),
        )
    if not isinstance(err, anthropic.APIStatusError):
        return ModelError(f"The Anthropic SDK failed: {err}", details=repr(err))
    status = err.status_code
    kind, said = _error_body(err.body, err.message)
    # An error event inside a stream arrives on a 200 response: only its type tells.
    where = (f"{status} " if status >= 400 else "") + kind
    details = f"{where}, request-id {err.request_id}: {said}"
    if status in (401, 403) or kind in ("authentication_error", "permission_error"):
        return ModelAuthError(
            f"The Anthropic API refused the API key ({where}: {said}). Check ANTHROPIC_API_KEY: "
            "it must be a valid, active key with access to the Messages API.",
            details=details,
        )
    if status == 404 or kind == "not_found_error":
        return ModelNotFound(
            f"Anthropic model {model!r} was not found ({where}: {said}). Check the model id "
            "against the models your key can use.",
            details=details,
        )
    if status in (429, 529) or status >= 500 or kind in _UNAVAILABLE_TYPES:
        retries = _retries_taken(err.response.request.headers, max_retries)
        what = _UNAVAILABLE_WHAT.get(status, "failed")
        return ModelUnavailable(
            f"The Anthropic API {what} ({where}: {said}); {_retried(retries)}. Try "
            "again later, or allow more retries.",
            details=details,
        )
    return ModelError(f"The Anthropic API rejected the request ({where}): {said}", details=details)


def _error_body(body: object, fallback: str) -> tuple[str, str]:
    """The ``error.type`` and ``error.message`` of an API error body."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return "error", fallback
    return str(error.get("type") or "error"), str(error.get("message") or fallback)


def _retried(retries: int) -> str:
    return f"retried {retries} time" + ("" if retries == 1 else "s")


def _retries_taken(headers: Mapping[str, str], default: int) -> int:
    """How often the SDK retried, from the retry counter it stamps on every attempt."""
    try:
        return int(headers.get("x-stainless-retry-count", default))
    except ValueError:
        return default


__all__ = ["AnthropicClient"]
