"""The agent loop on the library's fakes: scripted model, fake sandbox, memory store."""

from __future__ import annotations

from pathlib import Path

from pyflue.events import EventType
from pyflue.llm.base import ToolResultBlock
from pyflue.models import RunStatus
from pyflue.testing import ScriptedModel, call, fake_runner, say
from tests.conftest import WriteWorkflow

HEAD = """
from pydantic import BaseModel
from pyflue import create_agent
from pyflue.tools import Tool, ToolError, tool
agent = create_agent(lambda ctx: {"model": "anthropic/claude-test", "instructions": "Be brief."})

class Verdict(BaseModel):
    priority: str
    score: int
"""


def _results(model: ScriptedModel, request: int) -> list[ToolResultBlock]:
    last = model.requests[request].messages[-1]
    return [b for b in last.content if isinstance(b, ToolResultBlock)]


async def test_sequential_prompts_build_on_each_other(
    project: Path, write_workflow: WriteWorkflow
) -> None:
    write_workflow("chat", HEAD + """
async def run(ctx):
    s = await (await ctx.init(agent)).session()
    first = await s.prompt("My name is Ada.")
    second = await s.prompt("What is my name?")
    again = await (await ctx.init(agent)).session()
    return [first.text, second.text, second.turns, first.model]
""")
    model = ScriptedModel([say("Hello Ada."), say("You are Ada.")])
    run = await fake_runner(project, models=model).run("chat", {})
    assert run.result == ["Hello Ada.", "You are Ada.", 1, "anthropic/claude-test"]
    second = model.requests[1]
    assert [m.role for m in second.messages] == ["user", "assistant", "user"]
    assert second.messages[0].text == "My name is Ada." and second.messages[1].text == "Hello Ada."
    assert second.model == "claude-test" and "Be brief." in (second.system or "")


async def test_a_valid_structured_result_is_returned_as_the_model(
    project: Path, write_workflow: WriteWorkflow
) -> None:
    write_workflow("judge", HEAD + """
async def run(ctx):
    s = await (await ctx.init(agent)).session()
    verdict = await s.prompt("Judge this.", result=Verdict)
    return {"type": type(verdict).__name__, **verdict.model_dump()}
""")
    model = ScriptedModel([call("final_result", priority="high", score=3)])
    run = await fake_runner(project, models=model).run("judge", {})
    assert run.result == {"type": "Verdict", "priority": "high", "score": 3}
    assert "final_result" in [t.name for t in model.requests[0].tools]


async def test_an_invalid_result_is_fed_back_and_the_model_asked_again(
    project: Path, write_workflow: WriteWorkflow
) -> None:
    write_workflow("judge", HEAD + """
async def run(ctx):
    s = await (await ctx.init(agent)).session()
    return (await s.prompt("Judge this.", result=Verdict)).model_dump()
""")
    model = ScriptedModel([
        call("final_result", priority="high", score="lots"),
        call("final_result", priority="high", score=7),
    ])
    run = await fake_runner(project, models=model).run("judge", {})
    assert run.result == {"priority": "high", "score": 7}
    fed_back = _results(model, 1)
    assert len(fed_back) == 1 and fed_back[0].is_error
    assert "score" in fed_back[0].content and "integer" in fed_back[0].content


async def test_a_result_that_never_validates_fails_clearly_after_the_bound(
    project: Path, write_workflow: WriteWorkflow
) -> None:
    write_workflow("judge", HEAD + """
async def run(ctx):
    s = await (await ctx.init(agent)).session()
    return (await s.prompt("Judge this.", result=Verdict)).model_dump()
""")
    model = ScriptedModel([call("final_result", priority="high")] * 4 + [say("unused")])
    run = await fake_runner(project, models=model).run("judge", {})
    assert run.status is RunStatus.failed and run.error is not None
    assert run.error.type == "result_validation_error"
    assert "still invalid after 4 attempts" in run.error.message
    assert "score" in (run.error.details or "")
    assert len(model.requests) == 4


async def test_a_text_answer_to_a_structured_prompt_is_answered_with_a_reminder(
    project: Path, write_workflow: WriteWorkflow
) -> None:
    write_workflow("judge", HEAD + """
async def run(ctx):
    s = await (await ctx.init(agent)).session()
    return (await s.prompt("Judge this.", result=Verdict)).model_dump()
""")
    model = ScriptedModel([say("It is high."), call("final_result", priority="low", score=1)])
    run = await fake_runner(project, models=model).run("judge", {})
    assert run.result == {"priority": "low", "score": 1}
    assert "final_result" in model.requests[1].messages[-1].text


async def test_tools_act_on_the_workspace_and_errors_go_back_to_the_model(
    project: Path, write_workflow: WriteWorkflow
) -> None:
    write_workflow("edit", HEAD + """
async def run(ctx):
    h = await ctx.init(agent)
    await h.fs.write_file("a.txt", "one two two")
    s = await h.session()
    await s.prompt("Fix a.txt")
    return await h.fs.read_file("a.txt")
""")
    model = ScriptedModel([
        call("edit", path="a.txt", old_text="two", new_text="2"),
        call("edit", path="a.txt", old_text="three", new_text="3"),
        call("edit", path="a.txt", old_text="one", new_text="1"),
        call("nosuchtool"),
        call("read", path="a.txt", offset=1, limit=5),
        say("Fixed."),
    ])
    runner = fake_runner(project, models=model)
    run = await runner.run("edit", {})
    assert run.result == "1 two two"
    assert "occurs 2 times" in _results(model, 1)[0].content and _results(model, 1)[0].is_error
    assert "was not found" in _results(model, 2)[0].content
    assert not _results(model, 3)[0].is_error
    assert "no tool named 'nosuchtool'" in _results(model, 4)[0].content
    assert _results(model, 5)[0].content.startswith("     1\t1 two two")
    ends = await runner.store.list_events(run.run_id, types=[EventType.tool_end])
    assert [e.data["is_error"] for e in ends] == [True, True, False, True, False]


async def test_workflow_tools_from_functions_and_schemas_are_called(
    project: Path, write_workflow: WriteWorkflow
) -> None:
    write_workflow("custom", HEAD + """
@tool
def add(a: int, b: int = 1) -> int:
    '''Add two numbers.'''
    return a + b

async def shout(text):
    if not text:
        raise ToolError("nothing to shout")
    return text.upper()

loud = Tool("shout", "Upper-case text.", {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}, shout)

async def run(ctx):
    s = await (await ctx.init(agent)).session(tools=[add, loud])
    return (await s.prompt("go")).text
""")
    model = ScriptedModel([
        call("add", a=2, b=5), call("add", a="x"), call("shout", text="hi"), call("shout", text=""),
        say("done"),
    ])
    run = await fake_runner(project, models=model).run("custom", {})
    assert run.result == "done"
    specs = {t.name: t for t in model.requests[0].tools}
    assert specs["add"].description == "Add two numbers."
    assert specs["add"].input_schema["required"] == ["a"]
    assert {"bash", "read", "write", "edit", "ls", "glob", "grep"} <= set(specs)
    assert _results(model, 1)[0].content == "7"
    assert "invalid arguments for add" in _results(model, 2)[0].content
    assert _results(model, 3)[0].content == "HI"
    assert _results(model, 4)[0].content == "nothing to shout" and _results(model, 4)[0].is_error


async def test_long_tool_output_is_cut_with_a_marker_saying_how_to_see_more(
    project: Path, write_workflow: WriteWorkflow
) -> None:
    write_workflow("long", HEAD + """
async def run(ctx):
    h = await ctx.init(agent)
    await h.fs.write_file("big.txt", "\\n".join(f"line {i}" for i in range(5000)))
    s = await h.session()
    return (await s.prompt("read it")).text
""")
    model = ScriptedModel([call("read", path="big.txt"), say("ok")])
    await fake_runner(project, models=model).run("long", {})
    content = _results(model, 1)[0].content
    assert content.endswith("to see more]") and "call read with offset=" in content
    assert len(content) < 25_000


async def test_model_turns_and_tool_calls_are_run_events_in_order(
    project: Path, write_workflow: WriteWorkflow
) -> None:
    write_workflow("evt", HEAD + """
async def run(ctx):
    s = await (await ctx.init(agent)).session("named")
    return (await s.prompt("go", model="anthropic/other-model")).text
""")
    model = ScriptedModel([call("ls", "Looking."), say("All done here, thanks.")])
    runner = fake_runner(project, models=model)
    run = await runner.run("evt", {})
    model_types = {EventType.model_turn_start, EventType.model_text_delta,
                   EventType.model_turn_end, EventType.tool_start, EventType.tool_end}
    events = [e for e in await runner.store.list_events(run.run_id) if e.type in model_types]
    kinds = [e.type for e in events]
    assert kinds[0] is EventType.model_turn_start and kinds[-1] is EventType.model_turn_end
    assert kinds.index(EventType.tool_start) > kinds.index(EventType.model_turn_end)
    deltas = "".join(e.data["text"] for e in events
                     if e.type is EventType.model_text_delta and e.data["turn"] == 2)
    assert deltas == "All done here, thanks."
    end = [e for e in events if e.type is EventType.model_turn_end][-1]
    assert end.data["session"] == "named" and end.data["stop_reason"] == "end_turn"
    assert end.data["usage"]["output_tokens"] > 0 and "duration_ms" in end.data
    assert events[0].data["model"] == "anthropic/other-model"
    assert model.requests[0].model == "other-model"


async def test_an_agent_without_a_model_is_a_clear_error(
    project: Path, write_workflow: WriteWorkflow
) -> None:
    write_workflow("nomodel", """
from pyflue import create_agent
agent = create_agent(lambda ctx: {})
async def run(ctx):
    s = await (await ctx.init(agent)).session()
    await s.prompt("hi")
""")
    run = await fake_runner(project, models=ScriptedModel([])).run("nomodel", {})
    assert run.error is not None and 'set "model" in its initializer' in run.error.message


async def test_a_session_stays_usable_after_a_result_that_never_validated(
    project: Path, write_workflow: WriteWorkflow
) -> None:
    write_workflow("retry", HEAD + """
from pyflue.errors import ResultValidationError
async def run(ctx):
    s = await (await ctx.init(agent)).session()
    try:
        await s.prompt("Judge this.", result=Verdict)
    except ResultValidationError:
        pass
    after = await s.prompt("Then just say something.")
    return {"text": after.text, "tokens": s.usage.output_tokens}
""")
    model = ScriptedModel([call("final_result", priority="x")] * 4 + [say("Something.")])
    runner = fake_runner(project, models=model)
    run = await runner.run("retry", {})
    assert run.result["text"] == "Something." and run.result["tokens"] > 0
    history = model.requests[-1].messages
    asked = {b.id for m in history for b in m.content if getattr(b, "type", "") == "tool_use"}
    answered = {b.tool_use_id for m in history for b in m.content if isinstance(b, ToolResultBlock)}
    assert asked == answered and len(asked) == 4
    ends = await runner.store.list_events(run.run_id, types=[EventType.tool_end])
    assert [e.data["name"] for e in ends] == ["final_result"] * 4
    assert all(e.data["is_error"] for e in ends)


async def test_a_structured_prompt_counts_in_session_usage_and_records_its_result_call(
    project: Path, write_workflow: WriteWorkflow
) -> None:
    """What docs/structured-results.md says: usage in model_turn_end and session.usage, the
    final_result call as tool_start/tool_end, no event type of its own."""
    write_workflow("judge", HEAD + """
async def run(ctx):
    s = await (await ctx.init(agent)).session()
    await s.prompt("Judge this.", result=Verdict)
    return s.usage.to_dict()
""")
    model = ScriptedModel([call("final_result", priority="high"),
                           call("final_result", priority="high", score=2)])
    runner = fake_runner(project, models=model)
    run = await runner.run("judge", {})
    turns = await runner.store.list_events(run.run_id, types=[EventType.model_turn_end])
    assert run.result["output_tokens"] == sum(e.data["usage"]["output_tokens"] for e in turns) > 0
    events = await runner.store.list_events(run.run_id)
    calls = [(e.type, e.data.get("is_error")) for e in events
             if e.type in (EventType.tool_start, EventType.tool_end)]
    assert calls == [(EventType.tool_start, None), (EventType.tool_end, True),
                     (EventType.tool_start, None), (EventType.tool_end, False)]
    ends = [e for e in events if e.type == EventType.tool_end]
    assert ends[1].data["output"] == "Result accepted." and ends[1].data["duration_ms"] == 0
    assert "final_result" not in {e.type.value for e in events}
