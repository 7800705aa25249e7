"""A canary secret never appears in the store, the event stream, the logs or an error."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pyflue.events import EventType
from pyflue.models import RunStatus
from pyflue.runs import Runner
from pyflue.settings import Settings
from tests.conftest import WriteWorkflow

pytestmark = pytest.mark.docker

CANARY = "pyflue-canary-4b1d0e9a7c"

LEAKY = """
from pyflue import create_agent
agent = create_agent(lambda ctx: {"secrets": ["CANARY_TOKEN"]})
async def run(ctx):
    h = await ctx.init(agent)
    outs = []
    for command in [
        'echo "plain $CANARY_TOKEN"',
        'printf "%s" "${CANARY_TOKEN:0:7}"; sleep 0.3; printf "%s\\\\n" "${CANARY_TOKEN:7}"',
        'echo "$CANARY_TOKEN" >&2; echo "$CANARY_TOKEN" > /workspace/leak.txt',
        'env | grep CANARY',
        'cat /proc/$$/cmdline | tr "\\\\0" " "',
    ]:
        outs.append(await h.shell(command))
    ctx.log.info("the token is " + ctx.env["CANARY_TOKEN"])
    text = await h.fs.read_file("leak.txt")
    raise RuntimeError("giving up; last output " + text)
"""


async def test_a_canary_secret_is_never_stored_or_streamed(
    runner: Runner, settings: Settings, write_workflow: WriteWorkflow, tmp_path: Path
) -> None:
    write_workflow("leaky", LEAKY)
    runner.env = {**runner.env, "CANARY_TOKEN": CANARY}
    run = await runner.run("leaky", {})
    assert run.status is RunStatus.failed
    events = await runner.store.list_events(run.run_id)
    outputs = "".join(e.data.get("text", "") for e in events if e.type.value == "shell_output")
    assert "plain [REDACTED:CANARY_TOKEN]" in outputs
    assert "CANARY_TOKEN=[REDACTED:CANARY_TOKEN]" in outputs
    assert CANARY not in json.dumps([e.model_dump(mode="json") for e in events])
    assert CANARY not in run.model_dump_json()
    assert "[REDACTED:CANARY_TOKEN]" in (run.error.message if run.error else "")
    # the cmdline of a command never holds it: it travels as environment only
    cmdline = [e for e in events if e.type.value == "shell_output" and "pyflue-shell" in
               e.data.get("text", "")]
    assert cmdline and "[REDACTED" not in cmdline[0].data["text"]
    # and the database file itself does not contain it anywhere
    db = Path(settings.resolved_store_url().split("///", 1)[1])
    raw = b"".join(p.read_bytes() for p in db.parent.glob(db.name + "*"))
    assert CANARY.encode() not in raw

    env = {**os.environ, "PYFLUE_STORE_URL": settings.resolved_store_url()}
    for fmt in ("pretty", "json", "ndjson"):
        shown = subprocess.run([sys.executable, "-m", "pyflue.cli", "logs", run.run_id,
                                "--format", fmt], env=env, capture_output=True, text=True,
                               timeout=60)
        assert shown.returncode == 0 and CANARY not in shown.stdout + shown.stderr


async def test_a_secret_in_a_completed_runs_result_is_redacted_in_run_end_too(
    runner: Runner, write_workflow: WriteWorkflow
) -> None:
    write_workflow("returns_it", """
from pyflue import create_agent
agent = create_agent(lambda ctx: {"secrets": ["CANARY_TOKEN"]})
async def run(ctx):
    await ctx.init(agent)
    return {"token": ctx.env["CANARY_TOKEN"]}
""")
    runner.env = {**runner.env, "CANARY_TOKEN": CANARY}
    run = await runner.run("returns_it", {})
    assert run.status is RunStatus.completed
    [end] = await runner.store.list_events(run.run_id, types=[EventType.run_end])
    assert end.data["result"] == run.result == {"token": "[REDACTED:CANARY_TOKEN]"}


async def test_a_secret_printed_encoded_is_redacted_in_events_results_and_the_models_view(
    settings: Settings, write_workflow: WriteWorkflow
) -> None:
    from pyflue.llm import StaticModels
    from pyflue.llm.base import ToolResultBlock
    from pyflue.testing import ScriptedModel, call, say
    from pyflue.wiring import open_runner

    write_workflow("encoded", """
from pyflue import create_agent
agent = create_agent(lambda ctx: {"model": "anthropic/claude-test", "secrets": ["CANARY_TOKEN"]})
ENCODINGS = ('printf %s "$CANARY_TOKEN" | base64; printf %s "$CANARY_TOKEN" | base64 | '
             'tr "+/" "-_"; printf "x:%s" "$CANARY_TOKEN" | base64; '
             'printf %s "$CANARY_TOKEN" | od -An -tx1 | tr -d " \\\\n"; echo; '
             'python3 -c "import os,urllib.parse as u; print(u.quote(os.environ[\\'CANARY_TOKEN\\']))"')
async def run(ctx):
    h = await ctx.init(agent)
    out = await h.shell(ENCODINGS)
    s = await h.session()
    await s.prompt("look")
    return out["stdout"]
""")
    model = ScriptedModel([call("bash", command="printf %s \"$CANARY_TOKEN\" | base64"),
                           say("ok")])
    async with open_runner(settings, models=StaticModels(model)) as runner:
        runner.env = {**runner.env, "CANARY_TOKEN": CANARY}
        run = await runner.run("encoded", {})
        events = await runner.store.list_events(run.run_id)
    assert run.status is RunStatus.completed, run.error
    forms = [base64.b64encode(CANARY.encode()).decode(), CANARY.encode().hex(),
             base64.b64encode(b"x:" + CANARY.encode()).decode()[4:-4]]
    stored = json.dumps([e.model_dump(mode="json") for e in events]) + run.model_dump_json()
    for form in forms:
        assert form not in stored
    assert run.result.count("[REDACTED:CANARY_TOKEN]") == 5, run.result
    [block] = [b for b in model.requests[1].messages[-1].content if isinstance(b, ToolResultBlock)]
    assert "[REDACTED:CANARY_TOKEN]" in str(block.content) and forms[0] not in str(block.content)
