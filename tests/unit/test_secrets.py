"""Secrets: granted by name, passed as environment, redacted from everything stored."""

from __future__ import annotations

import base64
import json
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from pyflue.errors import ConfigError
from pyflue.events import EventType
from pyflue.models import RunStatus
from pyflue.runs import Runner
from pyflue.secrets import Redactor, StreamRedactor
from pyflue.testing import FakeCommand, FakeSandbox, FakeSandboxProvider, fake_runner
from tests.conftest import WriteWorkflow

CANARY = "canary-7f3a9e1c55d0"


def test_a_value_split_across_chunks_is_still_redacted() -> None:
    redactor = Redactor()
    redactor.add("TOKEN", CANARY)
    stream = StreamRedactor(redactor)
    text = "".join(stream.feed(chunk) for chunk in ["abc canary-7f", "3a9e1c55", "d0 xyz"])
    text += stream.flush()
    assert text == "abc [REDACTED:TOKEN] xyz"


SPECIAL = "p@ss w/rd&c4nary+9f"


@pytest.mark.parametrize("encode", [
    lambda v: base64.b64encode(v.encode()).decode(),
    lambda v: base64.urlsafe_b64encode(v.encode()).decode(),
    lambda v: base64.b64encode(v.encode()).decode().rstrip("="),
    lambda v: base64.b64encode(b"prefix:" + v.encode() + b"\n").decode(),  # inside a longer text
    lambda v: base64.b64encode(b"xy" + v.encode()).decode(),
    lambda v: v.encode().hex(),
    lambda v: v.encode().hex().upper(),
    lambda v: urllib.parse.quote(v, safe=""),
    lambda v: urllib.parse.quote_plus(v),
], ids=["base64", "base64url", "unpadded", "base64-in-text", "base64-shifted", "hex", "HEX",
        "url", "url-plus"])
def test_a_secret_is_redacted_in_its_common_encodings_even_split_across_chunks(
    encode: Any,
) -> None:
    redactor = Redactor()
    redactor.add("TOKEN", SPECIAL)
    encoded = encode(SPECIAL)
    assert "[REDACTED:TOKEN]" in redactor.text(f"x {encoded} y")
    stream = StreamRedactor(redactor)
    half = len(encoded) // 2
    text = "".join(stream.feed(c) for c in ["x " + encoded[:half], encoded[half:] + " y"])
    text += stream.flush()
    assert "[REDACTED:TOKEN]" in text and encoded not in text


def test_a_marker_is_never_cut_in_two_between_output_chunks() -> None:
    redactor = Redactor()
    redactor.add("TOKEN", CANARY)
    stream = StreamRedactor(redactor)
    chunks = [stream.feed(chunk) for chunk in [f"{CANARY}\n", f"x {CANARY}\n", "tail"]]
    chunks.append(stream.flush())
    assert chunks == ["[REDACTED:TOKEN]\n", "x [REDACTED:TOKEN]\n", "tail", ""]
    for piece in chunks:  # each piece holds whole markers only
        assert piece.count("[REDACTED:") == piece.count("[REDACTED:TOKEN]"), chunks
        assert piece.count("]") == piece.count("[REDACTED:TOKEN]"), chunks


def test_redaction_reaches_into_nested_data() -> None:
    redactor = Redactor()
    redactor.add("TOKEN", CANARY)
    data = {"a": [f"x{CANARY}", {"b": (CANARY,)}], CANARY: 1}
    assert redactor.data(data) == {"a": ["x[REDACTED:TOKEN]", {"b": ("[REDACTED:TOKEN]",)}],
                                   "[REDACTED:TOKEN]": 1}


def test_very_short_secrets_are_refused() -> None:
    with pytest.raises(ConfigError, match="too short"):
        Redactor().add("PIN", "123")


def _runner(project: Path, echo_env: str) -> Runner:
    def handler(command: str, box: FakeSandbox) -> FakeCommand:
        value = box.envs[-1].get(echo_env, "")
        return FakeCommand(stdout=[f"token is {value[:9]}", f"{value[9:]} ok\n"],
                           stderr=[f"err {value}"])

    runner = fake_runner(project, handler=handler)
    runner.env = {"DEPLOY_TOKEN": CANARY}
    return runner


async def test_granted_secrets_reach_commands_as_env_and_nothing_stored_holds_them(
    project: Path, write_workflow: WriteWorkflow
) -> None:
    write_workflow("deploy", f"""
from pyflue import create_agent
agent = create_agent(lambda ctx: {{"secrets": ["DEPLOY_TOKEN"]}})
async def run(ctx):
    h = await ctx.init(agent)
    out = await h.shell("deploy --quiet")
    ctx.log.info("deployed with " + "{CANARY}", token="{CANARY}")
    return {{"out": out["stdout"], "err": out["stderr"], "echo": "{CANARY}"}}
""")
    runner = _runner(project, "DEPLOY_TOKEN")
    run = await runner.run("deploy", {})
    assert run.status is RunStatus.completed
    provider = runner.provider
    assert isinstance(provider, FakeSandboxProvider)
    box = provider.opened[0]
    assert box.envs[0]["DEPLOY_TOKEN"] == CANARY and CANARY not in box.commands[0]
    assert run.result == {"out": "token is [REDACTED:DEPLOY_TOKEN] ok\n",
                          "err": "err [REDACTED:DEPLOY_TOKEN]", "echo": "[REDACTED:DEPLOY_TOKEN]"}
    stored = [e.model_dump_json() for e in await runner.store.list_events(run.run_id)]
    assert not any(CANARY in line for line in stored)
    assert any("[REDACTED:DEPLOY_TOKEN]" in line for line in stored)


async def test_a_secret_granted_to_one_call_is_redacted_from_errors_too(
    project: Path, write_workflow: WriteWorkflow
) -> None:
    write_workflow("leak", f"""
from pyflue import create_agent
agent = create_agent(lambda ctx: {{}})
async def run(ctx):
    h = await ctx.init(agent)
    first = await h.shell("use it", secrets=["DEPLOY_TOKEN"])
    second = await h.shell("no grant")
    raise RuntimeError("failed with {CANARY}")
""")
    runner = _runner(project, "DEPLOY_TOKEN")
    run = await runner.run("leak", {})
    provider = runner.provider
    assert isinstance(provider, FakeSandboxProvider)
    envs = provider.opened[0].envs
    assert envs[0].get("DEPLOY_TOKEN") == CANARY and "DEPLOY_TOKEN" not in envs[1]
    assert run.error is not None and CANARY not in run.error.model_dump_json()
    assert "[REDACTED:DEPLOY_TOKEN]" in run.error.message


async def test_a_secret_missing_from_the_environment_is_a_clear_error(
    project: Path, write_workflow: WriteWorkflow
) -> None:
    write_workflow("nosecret", """
from pyflue import create_agent
agent = create_agent(lambda ctx: {"secrets": ["NOT_SET_ANYWHERE"]})
async def run(ctx):
    await ctx.init(agent)
""")
    run = await _runner(project, "X").run("nosecret", {})
    assert run.error is not None and "export NOT_SET_ANYWHERE=" in run.error.message


@pytest.mark.parametrize("value", ["status", "path", "error", "stdout", "info", "type"])
async def test_a_secret_that_spells_an_event_key_or_word_loses_nothing(
    project: Path, write_workflow: WriteWorkflow, value: str
) -> None:
    write_workflow("wordy", """
    from pyflue import create_agent
    agent = create_agent(lambda ctx: {"secrets": ["WORD"]})

    async def run(ctx):
        h = await ctx.init(agent)  # the secret is granted (and redacted) from here on
        ctx.log.info("path and status and stdout", detail="type: info")
        await h.fs.write_file("a/path.txt", "error status")
        out = await h.shell("echo status; echo path >&2")
        if ctx.payload.get("fail"):
            raise RuntimeError("error: the status of the path")
        return {"status": out["stdout"], "path": "ok"}
    """)
    for fail in (False, True):
        runner = fake_runner(project)
        runner.env = {"WORD": value}
        run = await runner.run("wordy", {"fail": fail})
        assert run.status is (RunStatus.failed if fail else RunStatus.completed)
        events = await runner.store.list_events(run.run_id)
        assert events[-1].type is EventType.run_end and len(events) == run.event_count
        assert all(type(e).__name__ != "UnknownEvent" for e in events)
        [log] = [e for e in events if e.type is EventType.log]
        assert value not in log.data["message"] + json.dumps(log.data["fields"])
