"""A deterministic model that drives the real agent loop from a script: for tests and offline runs.

A script is a list of :class:`Reply` steps, one per model turn: text, tool calls, or both. A step
may also be a function of the :class:`TurnRequest`, to answer from what the model was sent.
``scripted/demo`` is a built-in script that makes the seed workflows run without an API key.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from pyflue.errors import ModelError, ModelNotFound
from pyflue.llm.base import (
    TextBlock,
    TextHandler,
    ToolResultBlock,
    ToolUseBlock,
    TurnRequest,
    TurnResponse,
    Usage,
)


@dataclass(frozen=True)
class Reply:
    """One scripted turn: optional text, then tool calls (``(name, input)`` pairs)."""

    text: str = ""
    tool_calls: tuple[tuple[str, dict[str, Any]], ...] = ()
    stop_reason: str | None = None


Step = Reply | Callable[[TurnRequest], Reply]


def say(text: str) -> Reply:
    """A turn that answers with ``text`` and ends."""
    return Reply(text=text)


def call(name: str, text: str = "", /, **arguments: Any) -> Reply:
    """A turn that calls tool ``name`` with ``arguments`` (after optional ``text``)."""
    return Reply(text=text, tool_calls=((name, arguments),))


class ScriptedModel:
    """Plays its steps in order, one per turn; records every request it was sent."""

    def __init__(self, steps: Iterable[Step], *, chunk: int = 16) -> None:
        self._steps = list(steps)
        self._chunk = chunk
        self.requests: list[TurnRequest] = []

    async def turn(self, request: TurnRequest, on_text: TextHandler) -> TurnResponse:
        self.requests.append(request)
        if len(self.requests) > len(self._steps):
            raise ModelError(
                f"the scripted model has {len(self._steps)} replies and was asked for turn "
                f"{len(self.requests)}; add replies to its script"
            )
        step = self._steps[len(self.requests) - 1]
        reply = step(request) if callable(step) else step
        for i in range(0, len(reply.text), self._chunk):
            on_text(reply.text[i : i + self._chunk])
        content: list[TextBlock | ToolUseBlock] = [TextBlock(reply.text)] if reply.text else []
        turn = len(self.requests)
        content += [
            ToolUseBlock(id=f"toolu_scripted_{turn}_{i}", name=name, input=dict(args))
            for i, (name, args) in enumerate(reply.tool_calls)
        ]
        stop = reply.stop_reason or ("tool_use" if reply.tool_calls else "end_turn")
        tokens_in = sum(len(json.dumps(m.text)) for m in request.messages) // 4 + 1
        return TurnResponse(
            content=tuple(content),
            stop_reason=stop,
            usage=Usage(input_tokens=tokens_in, output_tokens=len(reply.text) // 4 + 1),
            model=f"scripted/{request.model}",
        )

    async def close(self) -> None:
        return None


# -- the built-in demo script ----------------------------------------------------------------

_WRITE_TO = re.compile(r"\bwrite\b.*?\bto\s+`?([\w./-]+\.\w+)`?", re.I | re.S)


def _last_user_text(request: TurnRequest) -> str:
    for message in reversed(request.messages):
        if message.role == "user" and message.text:
            return message.text
    return ""


def _has_tool_results(request: TurnRequest) -> bool:
    last = request.messages[-1] if request.messages else None
    return bool(last and any(isinstance(b, ToolResultBlock) for b in last.content))


def _example(schema: dict[str, Any], defs: dict[str, Any], hint: str) -> Any:
    if "$ref" in schema:
        return _example(defs[schema["$ref"].rsplit("/", 1)[-1]], defs, hint)
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            return _example(schema[key][0], defs, hint)
    if "enum" in schema:
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    kind = schema.get("type")
    if kind == "object":
        props = schema.get("properties", {})
        return {name: _example(sub, defs, name) for name, sub in props.items()}
    if kind == "array":
        return [_example(schema.get("items", {}), defs, hint)]
    if kind == "integer":
        return int(schema.get("minimum", 1))
    if kind == "number":
        return float(schema.get("minimum", 1))
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return f"{hint} (scripted demo)"


def demo_reply(request: TurnRequest) -> Reply:
    """Answers any prompt plausibly without a model: good enough to run the examples offline."""
    prompt = _last_user_text(request)
    tools = {t.name: t for t in request.tools}
    if _has_tool_results(request):
        return say("Done. (scripted demo model)")
    result_tool = next((t for t in request.tools if t.name == "final_result"), None)
    if result_tool is not None:
        schema = result_tool.input_schema
        return call(result_tool.name, **_example(schema, schema.get("$defs", {}), "value"))
    target = _WRITE_TO.search(prompt)
    if target and "write" in tools:
        body = f"# Notes\n\nThe scripted demo model read the task:\n\n> {prompt[:300]}\n"
        return call("write", "Writing the file.", path=target.group(1), content=body)
    first = re.split(r"(?<=[.!?])\s", prompt.strip().split("\n\n")[-1].strip(), maxsplit=1)[0]
    return say(f"(scripted demo) {first[:400]}")


class DemoModel(ScriptedModel):
    """``scripted/demo``: :func:`demo_reply` for every turn, without end."""

    def __init__(self) -> None:
        super().__init__([])

    async def turn(self, request: TurnRequest, on_text: TextHandler) -> TurnResponse:
        self._steps.append(demo_reply)
        return await super().turn(request, on_text)


_BUILTIN: dict[str, Callable[[], ScriptedModel]] = {"demo": DemoModel}


def builtin(name: str) -> ScriptedModel:
    try:
        return _BUILTIN[name]()
    except KeyError:
        raise ModelNotFound(
            f"no scripted model {name!r}; built in: {', '.join(sorted(_BUILTIN))} "
            "(tests inject their own ScriptedModel)"
        ) from None


__all__ = ["DemoModel", "Reply", "ScriptedModel", "builtin", "call", "demo_reply", "say"]
