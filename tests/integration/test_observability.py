"""Metrics, traces and per-run resource use after real runs on the real engine: /metrics read
with prometheus_client's own parser, traces exported over OTLP/HTTP to a real receiver that
decodes the protobuf, resources sampled from a container that allocates memory."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pyflue.api.app import create_app
from pyflue.describe import RunDetails
from pyflue.llm import StaticModels
from pyflue.models import Run
from pyflue.render import run_details
from pyflue.settings import ObservabilitySettings, PoolSettings, SandboxDefaults, Settings
from pyflue.testing import ScriptedModel, call, say
from tests.conftest import WriteWorkflow
from tests.integration.otlp import OtlpReceiver

pytestmark = pytest.mark.docker

SECRET = "obs-s3cret-value-7781"

OBS = """
    from pyflue import create_agent
    agent = create_agent(lambda ctx: {"model": "scripted/obs", "secrets": ["OBS_TEST_SECRET"]})
    async def run(ctx):
        h = await ctx.init(agent)
        await h.fs.write_file("note.txt", "x" * 1000)
        data = await h.fs.read_file("note.txt")
        secret = ctx.env["OBS_TEST_SECRET"]  # in the command itself: its span's attribute
        out = await h.shell('echo "token=$OBS_TEST_SECRET" # ' + secret)
        ctx.log.info("said " + out["stdout"].strip())
        if ctx.payload.get("fail"):
            raise ValueError("asked to fail " + secret)
        if ctx.payload.get("agent"):
            session = await h.session()
            await session.prompt("go")
        return {"n": len(data)}
    """

HOG = """
    from pyflue import create_agent
    agent = create_agent(lambda ctx: {})
    async def run(ctx):
        h = await ctx.init(agent)
        out = await h.shell("head -c 200000000 /dev/zero | tail -n 1 | wc -c; "
                            "head -c 5000000 /dev/urandom > /workspace/blob; sleep 2.5")
        return out["exit_code"]
    """


def _model() -> StaticModels:
    return StaticModels(ScriptedModel([call("bash", command='echo "$OBS_TEST_SECRET" | wc -c'),
                                       say("done")]))


@pytest.fixture
def obs_settings(project: Path, tmp_path: Path, write_workflow: WriteWorkflow,
                 monkeypatch: pytest.MonkeyPatch) -> Settings:
    write_workflow("obs", OBS)
    write_workflow("hog", HOG)
    monkeypatch.setenv("OBS_TEST_SECRET", SECRET)
    return Settings(project_dir=project,
                    store_url=f"sqlite+aiosqlite:///{tmp_path / 'store' / 'pyflue.db'}",
                    sandbox=SandboxDefaults(kill_grace=2.0), pool=PoolSettings(size=0),
                    observability=ObservabilitySettings(worker_name="test-worker"))


@contextlib.asynccontextmanager
async def serve(settings: Settings, models: StaticModels | None = None
                ) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, models=models or _model())
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://pyflue",
                                     timeout=60) as client:
            yield client


async def invoke(client: httpx.AsyncClient, name: str, payload: dict[str, Any],
                 headers: dict[str, str] | None = None) -> Run:
    answer = await client.post(f"/workflows/{name}?wait=result", json=payload,
                               headers=headers or {})
    run_id = answer.headers["X-Flue-Run-Id"]
    return Run.model_validate((await client.get(f"/runs/{run_id}")).json())


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of the exposition by (name, labels), parsed by prometheus_client."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def total(values: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str,
          **labels: str) -> float:
    wanted = set(labels.items())
    return sum(v for (n, ls), v in values.items() if n == name and wanted <= ls)


async def test_metrics_count_what_real_runs_did(obs_settings: Settings) -> None:
    settings = obs_settings.model_copy(update={"pool": PoolSettings(size=1)})
    async with serve(settings) as client:
        for _ in range(100):  # the pool's container is ready: the first run starts warm
            if (await client.get("/health")).json()["pool"][0]["ready"] == 1:
                break
            await asyncio.sleep(0.1)
        runs = [await invoke(client, "obs", payload)
                for payload in ({}, {}, {"fail": True}, {"agent": True})]
        assert [r.status.value for r in runs] == ["completed"] * 2 + ["failed", "completed"]
        events = [e for r in runs for e in
                  (await client.get(f"/runs/{r.run_id}/events")).json()["events"]]
        answer = await client.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    values = samples(answer.text)
    w = {"worker": "test-worker"}
    assert total(values, "pyflue_runs_started_total", workflow="obs", **w) == 4
    assert total(values, "pyflue_runs_ended_total", workflow="obs", status="completed") == 3
    assert total(values, "pyflue_runs_ended_total", workflow="obs", status="failed") == 1
    assert total(values, "pyflue_runs_running", **w) == 0
    assert total(values, "pyflue_run_queue_wait_seconds_count", workflow="obs") == 4
    durations = sum(r.duration_ms or 0 for r in runs) / 1000
    assert total(values, "pyflue_run_duration_seconds_sum") == pytest.approx(durations, abs=0.01)
    shells = [e for e in events if e["type"] == "shell_end"]
    assert len(shells) == 5  # one per run, and the agent's bash tool call
    assert total(values, "pyflue_exec_duration_seconds_count") == 5
    assert total(values, "pyflue_exec_duration_seconds_sum") == pytest.approx(
        sum(e["data"]["duration_ms"] for e in shells) / 1000, abs=0.001)
    assert total(values, "pyflue_file_copy_bytes_total", direction="in") == 4000
    assert total(values, "pyflue_file_copy_bytes_total", direction="out") == 4000
    started = [e["data"] for e in events if e["type"] == "container_started"]
    assert len(started) == 4 and started[0]["launch"] == "warm"
    for launch in ("warm", "cold"):
        starts = [d["start_ms"] for d in started if d["launch"] == launch]
        assert total(values, "pyflue_container_start_seconds_count", launch=launch) == \
            len(starts)
        assert total(values, "pyflue_container_start_seconds_sum", launch=launch) == \
            pytest.approx(sum(starts) / 1000, abs=0.001)
    assert total(values, "pyflue_pool_containers", state="size") == 1
    used = [e["data"]["usage"] for e in events if e["type"] == "model_turn_end"]
    assert len(used) == 2
    for kind in ("input", "output"):
        assert total(values, "pyflue_model_tokens_total", model="scripted/obs", kind=kind) == \
            sum(u[f"{kind}_tokens"] for u in used) > 0
    assert total(values, "pyflue_store_write_seconds_count", op="update_run") == 4
    assert total(values, "pyflue_store_write_seconds_count", op="append_events") >= 4
    assert total(values, "pyflue_scheduler_slots", state="total") == \
        settings.server.max_concurrency
    assert total(values, "pyflue_scheduler_slots", state="busy") == 0
    assert total(values, "pyflue_runs_queued") == 0
    for (_name, labels) in values:  # low cardinality: no run id in any label
        assert not any("workflow:" in value for _key, value in labels)


async def test_a_run_is_one_trace_exported_over_otlp(
        obs_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    caller_trace, caller_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    with OtlpReceiver() as receiver:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
        monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
        async with serve(obs_settings) as client:
            continued = await invoke(client, "obs", {"agent": True}, headers={
                "traceparent": f"00-{caller_trace}-{caller_span}-01"})
            fresh = await invoke(client, "obs", {"fail": True})
        # The app's end flushed the exporter: every span is in.
    assert continued.trace_id == caller_trace
    assert fresh.trace_id is not None and fresh.trace_id != caller_trace
    spans = [s for s in receiver.spans if s.trace_id == caller_trace]
    root = next(s for s in spans if s.name == "invoke_workflow obs")
    assert root.parent_span_id == caller_span
    assert root.attributes["pyflue.run_id"] == continued.run_id
    names = sorted(s.name for s in spans if s is not root)
    assert names == sorted([
        "queue_wait", "create_container", "start_container", "file file_write",
        "file file_read", "execute_tool shell", "chat scripted/obs", "execute_tool bash",
        "execute_tool shell", "chat scripted/obs", "remove_container"])
    by_id = {s.span_id: s for s in spans}
    tool = next(s for s in spans if s.name == "execute_tool bash")
    in_tool = [s for s in spans if s.name == "execute_tool shell"
               and s.parent_span_id == tool.span_id]
    assert len(in_tool) == 1 and tool.start_ns <= in_tool[0].start_ns <= in_tool[0].end_ns \
        <= tool.end_ns
    assert all(by_id[s.parent_span_id] is root for s in spans
               if s is not root and s not in in_tool)
    chat = [s for s in spans if s.name == "chat scripted/obs"]
    assert all(s.attributes["gen_ai.operation.name"] == "chat"
               and s.attributes["gen_ai.usage.input_tokens"] > 0 for s in chat)
    assert tool.attributes["gen_ai.tool.name"] == "bash"
    assert all(root.start_ns <= s.start_ns <= s.end_ns <= root.end_ns for s in spans)
    failed = next(s for s in receiver.spans if s.trace_id == fresh.trace_id
                  and s.name == "invoke_workflow obs")
    assert failed.parent_span_id == "" and failed.status_code == 2  # STATUS_CODE_ERROR
    assert failed.attributes["error.type"] == "ValueError"
    assert failed.status_message.startswith("asked to fail [REDACTED")
    # The secret was granted to the run and printed by it: it reaches no attribute.
    said = [e["log.message"] for s in receiver.spans for e in s.events]
    assert said and all("REDACTED" in m for m in said)
    for span in receiver.spans:
        for value in [*span.attributes.values(), *(v for e in span.events for v in e.values())]:
            assert SECRET not in str(value), (span.name, value)
    commands = [s.attributes["process.command_line"] for s in receiver.spans
                if s.name == "execute_tool shell"]
    assert any("# [REDACTED" in c for c in commands)


async def test_resources_of_a_run_that_allocates_memory(obs_settings: Settings) -> None:
    async with serve(obs_settings) as client:
        started = await client.post("/workflows/hog", json={})
        run_id = started.json()["run_id"]
        live: list[dict[str, Any]] = []
        for _ in range(100):  # the samples of a live run, served from memory
            body = (await client.get(f"/runs/{run_id}/metrics")).json()
            if body["status"] == "running" and body["metrics"]:
                live = body["metrics"]
                break
            await asyncio.sleep(0.1)
        assert live and set(live[0]) == {"timestamp", "cpuCount", "cpuUsedPct", "memUsed",
                                         "memTotal", "diskUsed", "diskTotal"}
        while (run := Run.model_validate((await client.get(f"/runs/{run_id}")).json())
               ).status.value == "running":
            await asyncio.sleep(0.2)
        ended = (await client.get(f"/runs/{run_id}/metrics")).json()
    assert run.status.value == "completed" and run.result == 0
    res = run.resources
    assert res is not None and ended["resources"] == res.model_dump(mode="json")
    assert res.peak_memory_bytes is not None and res.peak_memory_bytes > 200_000_000
    assert res.memory_limit_bytes == 2 * 1024**3  # the sandbox's default limit
    assert res.cpu_seconds is not None and res.cpu_seconds > 0
    assert res.disk_used_bytes is not None and res.disk_used_bytes >= 5_000_000
    assert res.disk_total_bytes == 1024**3  # the workspace's default size cap
    assert res.samples == len(ended["metrics"]) >= 3  # 2.5 s of sleep, one a second, and the last
    points = ended["metrics"]
    assert all(p["memTotal"] == res.memory_limit_bytes and 0 <= p["cpuUsedPct"] <= 100
               for p in points)
    assert points[-1]["diskUsed"] >= 5_000_000
    shown = run_details(RunDetails(run=run))
    assert "peak memory" in shown and "of 2.0 GiB" in shown
