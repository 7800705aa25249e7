"""Sessions: a conversation with the agent's model, whose tools act in the run's container.

``await session.prompt(text)`` runs the agent loop: a model turn; if it asked for tools, run
them (through ``harness.shell`` / ``harness.fs``) and send the results back; repeat until the
model ends its turn. Sequential prompts in one session build on each other. With
``result=SomeModel`` the model must call the ``final_result`` tool with data that validates;
validation errors go back to it, a bounded number of times. Every turn and tool call is a run
event.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, overload

from pydantic import BaseModel, ValidationError

from pyflue.compat import SESSION, SESSION_HELPERS, missing, session_helper, upstream_options
from pyflue.errors import ConfigError, ModelError, ResultValidationError
from pyflue.events import (
    ModelTextDelta,
    ModelTurnEnd,
    ModelTurnStart,
    TokenUsage,
    ToolEnd,
    ToolStart,
)
from pyflue.llm.base import (
    Message,
    ModelClient,
    TextBlock,
    ToolResultBlock,
    ToolUseBlock,
    TurnRequest,
    TurnResponse,
    Usage,
)
from pyflue.models import ErrorInfo
from pyflue.tools import Tool, ToolError, builtin_tools, check_unique, clip, tool_failure

if TYPE_CHECKING:
    from pyflue.harness import Harness
    from pyflue.llm import ModelResolver
    from pyflue.recorder import RunRecorder
    from pyflue.settings import ModelSettings

R = TypeVar("R", bound=BaseModel)

RESULT_TOOL = "final_result"
EVENT_OUTPUT_CAP = 2000


@dataclass(frozen=True)
class PromptResponse:
    """What ``session.prompt(text)`` returns: the final text, usage summed over its turns."""

    text: str
    model: str
    usage: Usage
    stop_reason: str
    turns: int


class Session:
    """One conversation. Get it from ``await harness.session(name)``."""

    def __init__(
        self,
        *,
        name: str,
        harness: Harness,
        models: ModelResolver,
        settings: ModelSettings,
        recorder: RunRecorder,
        tools: list[Tool],
    ) -> None:
        self.name = name
        self._harness = harness
        self._models = models
        self._settings = settings
        self._recorder = recorder
        self._tools = [*builtin_tools(), *tools]
        check_unique(self._tools)
        if any(t.name == RESULT_TOOL for t in self._tools):
            raise ConfigError(f"the tool name {RESULT_TOOL!r} is reserved for structured results")
        self.messages: list[Message] = []
        self.usage = Usage()

    @property
    def session_id(self) -> str:
        """PyFlue 0.2's name for :attr:`name`."""
        return self.name

    if not TYPE_CHECKING:  # for mypy, a missing attribute stays a type error

        def __getattr__(self, name: str) -> Any:
            # PyFlue 0.2's session.read_file, .shell, .fs... are the harness's here
            if name in SESSION_HELPERS:
                return session_helper(self._harness, name)
            raise missing("session", name, {} if name.startswith("_") else SESSION)

    @overload
    async def prompt(self, text: str, *, result: None = None, model: str | None = None
                     ) -> PromptResponse: ...

    @overload
    async def prompt(self, text: str, *, result: type[R], model: str | None = None) -> R: ...

    @upstream_options("session.prompt")
    async def prompt(
        self, text: str, *, result: type[R] | None = None, model: str | None = None
    ) -> PromptResponse | R:
        """Sends ``text``; runs tool calls until the model is done.

        Returns a :class:`PromptResponse`, or with ``result=SomeModel`` a validated instance.
        Raises ModelError subclasses (a bad key, an unknown model, overload after retries,
        ResultValidationError after ``max_result_retries`` invalid results).
        """
        if not isinstance(text, str) or not text.strip():
            raise ConfigError("prompt needs non-empty text")
        if result is not None and not (isinstance(result, type) and issubclass(result, BaseModel)):
            raise ConfigError("result must be a Pydantic model class, e.g. result=Classification")
        model_string = self._model_string(model)
        client, model_id = self._models.resolve(model_string)
        self._append_user([TextBlock(text)])
        tools = list(self._tools)
        if result is not None:
            tools.append(_result_tool(result))
        system = self._system(result is not None)
        usage, invalid = Usage(), 0
        for turn in range(1, self._settings.max_turns + 1):
            response = await self._turn(client, model_id, model_string, system, tools, turn)
            usage = usage + response.usage
            self.usage = self.usage + response.usage
            self.messages.append(response.message)
            uses = response.message.tool_uses
            if uses:
                outcome, invalid = await self._run_tools(uses, result, invalid)
                if outcome is not None:
                    return outcome
                continue
            if result is None:
                return PromptResponse(response.message.text, model_string, usage,
                                      response.stop_reason, turn)
            self._append_user([TextBlock(
                f"Call the {RESULT_TOOL} tool now with your answer as its input; "
                "do not answer in text."
            )])
            invalid = self._count_invalid(invalid, f"it answered without calling {RESULT_TOOL}",
                                          response.message.text)
        raise ModelError(
            f"the model did not finish within {self._settings.max_turns} turns "
            "(PYFLUE_MAX_TURNS); simplify the task or raise the limit"
        )

    def _model_string(self, model: str | None) -> str:
        chosen = self._settings.model or model or self._harness.config.model
        if not chosen:
            raise ConfigError(
                "the agent has no model: set \"model\" in its initializer (e.g. "
                "anthropic/claude-haiku-4-5), pass model= to prompt, or set PYFLUE_MODEL"
            )
        return chosen

    def _system(self, structured: bool) -> str | None:
        parts = [self._harness.config.instructions or ""]
        parts.append(f"You work in a sandboxed Linux container; your working folder is "
                     f"{self._harness.fs.cwd}. Use the tools to act on files there.")
        if structured:
            parts.append(f"When you have the answer, call the {RESULT_TOOL} tool exactly once "
                         "with it as the input.")
        return "\n\n".join(p for p in parts if p)

    def _append_user(self, blocks: list[TextBlock | ToolResultBlock]) -> None:
        # Consecutive user content (a result accepted, then the next prompt) is one message.
        if self.messages and self.messages[-1].role == "user":
            last = self.messages.pop()
            self.messages.append(Message("user", (*last.content, *blocks)))
        else:
            self.messages.append(Message("user", tuple(blocks)))

    async def _turn(self, client: ModelClient, model_id: str, model_string: str, system: str | None,
                    tools: list[Tool], turn: int) -> TurnResponse:
        self._recorder.emit(ModelTurnStart(session=self.name, turn=turn, model=model_string))
        started = time.monotonic()

        def on_text(delta: str) -> None:
            self._recorder.emit(ModelTextDelta(session=self.name, turn=turn, text=delta))

        request = TurnRequest(
            model=model_id, messages=tuple(self.messages), system=system,
            tools=tuple(t.spec for t in tools), max_tokens=self._settings.max_tokens,
        )
        try:
            response = await client.turn(request, on_text)
        except ModelError as exc:
            self._recorder.emit(ModelTurnEnd(
                session=self.name, turn=turn, model=model_string,
                error=ErrorInfo.of(exc),
                duration_ms=int((time.monotonic() - started) * 1000),
            ))
            raise
        self._recorder.emit(ModelTurnEnd(
            session=self.name, turn=turn, model=model_string, api_model=response.model,
            stop_reason=response.stop_reason,
            usage=TokenUsage(**response.usage.to_dict()),
            text=clip(response.message.text, EVENT_OUTPUT_CAP, "see the text deltas"),
            duration_ms=int((time.monotonic() - started) * 1000),
        ))
        return response

    async def _run_tools(self, uses: list[ToolUseBlock], result: type[R] | None, invalid: int
                         ) -> tuple[R | None, int]:
        results: list[TextBlock | ToolResultBlock] = []
        accepted: R | None = None
        problem: tuple[str, str] | None = None
        by_name = {t.name: t for t in self._tools}
        for use in uses:
            if use.name == RESULT_TOOL and result is not None:
                self._recorder.emit(self._tool_start(use))
                try:
                    accepted = result.model_validate(use.input)
                    results.append(ToolResultBlock(use.id, "Result accepted."))
                except ValidationError as exc:
                    problem = (str(exc), json.dumps(use.input))
                    results.append(ToolResultBlock(
                        use.id, f"The result did not validate; fix it and call {RESULT_TOOL} "
                        f"again.\n{exc}", is_error=True))
                last = results[-1]
                assert isinstance(last, ToolResultBlock)
                self._recorder.emit(self._tool_end(
                    use, last.is_error, clip(last.content, EVENT_OUTPUT_CAP, "see the run"), 0))
                continue
            try:
                results.append(await self._call(by_name.get(use.name), use))
            except BaseException:  # cancelled mid-tool: still answer every call, then go
                answered = {r.tool_use_id for r in results if isinstance(r, ToolResultBlock)}
                results += [ToolResultBlock(u.id, "The tool call was cancelled.", is_error=True)
                            for u in uses if u.id not in answered]
                self._append_user(results)
                raise
        # Every tool call is answered before anything else happens (even before giving up),
        # so the conversation stays valid for the next prompt.
        self._append_user(results)
        if accepted is None and problem is not None:
            invalid = self._count_invalid(invalid, *problem)
        return accepted, invalid

    def _tool_start(self, use: ToolUseBlock) -> ToolStart:
        return ToolStart(session=self.name, tool_use_id=use.id, name=use.name, input=use.input)

    def _tool_end(self, use: ToolUseBlock, is_error: bool, output: str, ms: int) -> ToolEnd:
        return ToolEnd(session=self.name, tool_use_id=use.id, name=use.name,
                       is_error=is_error, output=output, duration_ms=ms)

    def _count_invalid(self, invalid: int, problem: str, given: str) -> int:
        invalid += 1
        if invalid > self._settings.max_result_retries:
            raise ResultValidationError(
                f"the model's result was still invalid after {invalid} attempts: "
                f"{problem.splitlines()[0]}",
                details=f"{problem}\n\nlast output: {given[:2000]}",
            )
        return invalid

    async def _call(self, found: Tool | None, use: ToolUseBlock) -> ToolResultBlock:
        self._recorder.emit(self._tool_start(use))
        started = time.monotonic()
        is_error = False
        try:
            if found is None:
                raise ToolError(
                    f"there is no tool named {use.name!r}; available: "
                    f"{', '.join(t.name for t in self._tools)}"
                )
            output = await found.run(dict(use.input), self._harness)
        except Exception as exc:
            output, is_error = tool_failure(exc), True
        output = clip(self._harness.redact(output), self._settings.tool_output_cap,
                      "redirect it to a file and read it with `read` (offset, limit), or narrow "
                      "the request")
        self._recorder.emit(self._tool_end(use, is_error,
                                           clip(output, EVENT_OUTPUT_CAP, "see the tool"),
                                           int((time.monotonic() - started) * 1000)))
        return ToolResultBlock(use.id, output, is_error)


def _result_tool(result: type[BaseModel]) -> Tool:
    schema = result.model_json_schema()

    def never(**_: Any) -> str:  # the session handles final_result itself
        raise ToolError("final_result is handled by the session")

    return Tool(
        RESULT_TOOL,
        f"Return the final result ({result.__name__}). Call exactly once, when done, with the "
        "result as the input.",
        schema,
        never,
    )
